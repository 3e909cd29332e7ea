"""Train a timm/torchvision model with SGD, Adam, AdamW or AdaRem; leave a run record behind.

    adarem-train                                        # small CNN on the embedded digits, AdaRem
    adarem-train optimizer=sgd data=fashion_mnist trainer.epochs=5
    python -m adarem.cli.train experiment=paper_resnet50 optimizer=adarem seed=1
    python train.py ...                                 # the same, from the repository root

Configs: adarem.cli.CONFIG_DIR (the repository's configs/, installed with the package), validated by
adarem/config.py. The run directory (under the current directory) gets run.json, metrics.jsonl and
checkpoints (format: README.md). resume=auto (the default) continues an interrupted run;
SIGTERM/SIGUSR1 checkpoint and exit with code 75 ("requeue me"); trainer.max_steps=N checkpoints after
step N and exits 0 (status stopped).
"""

from __future__ import annotations

import logging
import os
import sys

from adarem.cli import CONFIG_DIR, check_command_line, early, one_line, stdout_gone

if __name__ == "__main__":  # python -m adarem.cli.train: before the heavy imports (adarem.cli.early)
    early.install()
    check_command_line()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from adarem import distributed as dist_utils  # noqa: E402
from adarem.run.checkpoint import CheckpointError  # noqa: E402
from adarem.config import ConfigError  # noqa: E402
from adarem.run_setup import create, prepare  # noqa: E402
from adarem.run.signals import REQUEUE_EXIT_CODE, StopFlag  # noqa: E402

# The data, model, optimizer and training-loop modules (torchvision, timm, torch._dynamo: ~4.5 s of
# a launch's ~7 s of imports) are imported where a run is built (run_setup.prepare) and trained
# (train below), so that a launch refused before then answers sooner.


def user_errors() -> tuple:
    """The errors reported in one line, exit 2: ConfigError, CheckpointError, OSError (an
    unwritable run directory, a full disk, a vanished file), PeerLost (another rank of the job
    ended: its reason is its own), and DataError once adarem.data is
    imported (no data error can be raised before)."""
    data = sys.modules.get("adarem.data")
    return (ConfigError, CheckpointError, OSError, dist_utils.PeerLost) + ((data.DataError,) if data is not None else ())


def train(cfg: DictConfig) -> int:
    """Run (or continue) one training run and return its exit code. run.json records how it ended,
    exceptions included; the run-directory lock is released however it ends."""
    stop = StopFlag()
    stop.install()  # first: a preemption during start-up must still end in "requeue me"
    if early.SIGNALS:
        stop.signal_name = early.SIGNALS[0]
    run = None
    try:
        run = create(cfg, stop)
        code = prepare(run, stop)
        if code is None:
            from adarem.trainer import Trainer

            code = Trainer(run, stop).run()
    except dist_utils.StartStopped as exc:  # preempted while the ranks met: no run yet, requeue the launch
        print(f"note: {exc}; nothing trained: exit {REQUEUE_EXIT_CODE} (requeue)", file=sys.stderr, flush=True)
        code = REQUEUE_EXIT_CODE
    except BaseException as exc:
        loader = sys.modules.get("adarem.data.loader")  # a DataLoader worker's death, said in one line
        lost = loader.lost_worker_error(exc) if loader is not None else None
        if lost is None and run is not None:  # another rank ended: say which and why, in one line
            lost = run.lost_peer(exc)
        if run is not None:
            run.mark_failed(lost or exc, one_line(lost or exc))
        if lost is not None:
            raise lost from exc
        raise
    finally:
        stop.uninstall()
        if run is not None:
            run.close()
    if code == REQUEUE_EXIT_CODE:  # only a preempted run is requeued (not one stopped at max_steps, or finished)
        stop.hand_over()  # inside a submitit job stopped by its signal: submitit requeues it (and exits)
    return code


def os_error_hint(exc: OSError, run_dir: str) -> str:
    """What to do about an OSError: the run directory's (a full disk, an unwritable folder) is the
    usual one; a path elsewhere (ADAREM_CACHE's data cache, a data root) is not fixed by choosing
    another hydra.run.dir."""
    path = getattr(exc, "filename", None)
    if path and run_dir:
        try:
            inside = os.path.commonpath([os.path.abspath(path), os.path.abspath(run_dir)]) == os.path.abspath(run_dir)
        except ValueError:
            inside = False
        if not inside:
            return f" (free space, or make {path} writable or set the option or variable that chose it: it is not in " \
                   f"the run directory)"
    return " (free space or choose a writable hydra.run.dir)"


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    early.release_ctrl_c()  # from here on Ctrl-C marks the run interrupted
    try:
        code = train(cfg)
    except Exception as exc:
        if not isinstance(exc, user_errors()) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        hint = os_error_hint(exc, str(cfg.get("run_dir", ""))) if isinstance(exc, OSError) else ""
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


def run() -> None:
    """The command line: Hydra's overrides in sys.argv, checked (preflight) before Hydra takes over.
    The process then ends with os._exit once its output is flushed: run.json, metrics.jsonl and
    checkpoints are complete and closed by then, the loaders' workers ended (Run.close), and the
    interpreter's teardown of torch's modules cost 2-2.5 s per launch (a fifth of a short run on 2
    cores). Where wandb was started, its atexit hooks (the service process) run as usual: until
    this checked adarem.tracking.STARTED rather than "wandb" in sys.modules, which timm's import
    makes true, every run that got as far as its model paid the teardown."""
    early.install()  # no-op where the entry point already did, before the imports
    check_command_line()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BrokenPipeError:  # stdout's reader went away (train.py --help | head)
        code = stdout_gone()
    tracking = sys.modules.get("adarem.tracking")
    if tracking is not None and tracking.STARTED:
        sys.exit(code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or stdout_gone()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    run()
