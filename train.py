"""Train a timm/torchvision model with SGD, Adam, AdamW or AdaRem; leave a run record behind.

    python train.py                                     # small CNN on the embedded digits, AdaRem
    python train.py optimizer=sgd data=fashion_mnist trainer.epochs=5
    torchrun --nproc-per-node=8 train.py experiment=paper_resnet50 optimizer=adarem seed=1

Configs live in configs/ (validated by adarem/config.py). The run directory gets run.json,
metrics.jsonl and checkpoints (format: README.md). resume=auto (the default) continues an
interrupted run; SIGTERM/SIGUSR1 checkpoint and exit with code 75 ("requeue me"); trainer.max_steps=N
checkpoints after step N and exits 0 (status stopped).

The same as ``adarem-train`` / ``python -m adarem.cli.train`` (adarem/cli/train.py), kept here for
``python train.py`` and ``torchrun train.py`` from the repository root.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports (seconds): see adarem/cli/early.py
    from adarem.cli import check_command_line, early

    early.install()
    check_command_line()  # a bad override or value: one line, exit 2, before torch is imported

from adarem.cli.train import main, run, train  # noqa: E402

__all__ = ["main", "run", "train"]

if __name__ == "__main__":
    run()
