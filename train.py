"""Train a timm/torchvision model with SGD, Adam, AdamW or AdaRem; leave a run record behind.

    python train.py                                     # small CNN on the embedded digits, AdaRem
    python train.py optimizer=sgd data=fashion_mnist trainer.epochs=5
    torchrun --nproc-per-node=8 train.py experiment=paper_resnet50 optimizer=adarem seed=1

Configs live in configs/ (validated by adarem/config.py). The run directory gets run.json,
metrics.jsonl and checkpoints (format: README.md). resume=auto (the default) continues an
interrupted run; SIGTERM/SIGUSR1 checkpoint and exit with code 75 ("requeue me").
"""

from __future__ import annotations

import os
import signal
import sys

# Before the heavy imports (seconds): a preemption signal that arrives while Python is still
# starting must end in "requeue me" (exit 75), not in the default death by signal (143/138), and
# Ctrl-C in one line and exit 130, not in an import traceback (until main() takes over).
_EARLY_SIGNALS: list[str] = []


def _ctrl_c_while_starting(signum, frame):
    print("interrupted (Ctrl-C) while starting, before any training step; nothing to resume", file=sys.stderr)
    os._exit(130)  # nothing is written yet; no half-imported module may catch an exception here


if __name__ == "__main__":
    for _sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(_sig, lambda signum, frame: _EARLY_SIGNALS.append(signal.Signals(signum).name))
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # left alone where it is ignored
        signal.signal(signal.SIGINT, _ctrl_c_while_starting)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from adarem import distributed as dist_utils  # noqa: E402
from adarem.checkpoint import CheckpointError  # noqa: E402
from adarem.cli import one_line, preflight  # noqa: E402
from adarem.config import ConfigError, register_configs  # noqa: E402
from adarem.data import DataError  # noqa: E402
from adarem.run_setup import create, prepare  # noqa: E402
from adarem.signals import StopFlag  # noqa: E402
from adarem.trainer import Trainer  # noqa: E402

USER_ERRORS = (ConfigError, DataError, CheckpointError, OSError)  # one line, exit 2


def train(cfg: DictConfig) -> int:
    """Run (or continue) one training run and return its exit code. run.json records how it ended,
    exceptions included; the run-directory lock is released however it ends."""
    stop = StopFlag()
    stop.install()  # first: a preemption during start-up must still end in "requeue me"
    if _EARLY_SIGNALS:
        stop.signal_name = _EARLY_SIGNALS[0]
    run = None
    try:
        run = create(cfg, stop)
        code = prepare(run, stop)
        if code is None:
            code = Trainer(run, stop).run()
    except BaseException as exc:
        if run is not None:
            run.mark_failed(exc, one_line(exc))
        raise
    finally:
        stop.uninstall()
        if run is not None:
            run.close()
    stop.hand_over()  # inside a submitit job stopped by its signal: submitit requeues it (and exits)
    return code


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if signal.getsignal(signal.SIGINT) is _ctrl_c_while_starting:  # from here on Ctrl-C marks the run interrupted
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = train(cfg)
    except USER_ERRORS as exc:  # OSError: an unwritable run directory, a full disk, a vanished file
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        hint = " (free space or choose a writable hydra.run.dir)" if isinstance(exc, OSError) else ""
        print(f"error: {one_line(exc)}{hint}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); rerun the same command to resume from the last checkpoint, if one was "
              "written (run.json, if any, says interrupted)", file=sys.stderr)
        code = 130
    finally:
        dist_utils.cleanup()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    register_configs()
    preflight(sys.argv[1:])
    main()
