"""One run's lifecycle, below the training loop and above nothing but the config.

- ``identity``: the configuration hash that names a run directory; config comparisons.
- ``plan``: before anything is written, what a launch does with its run directory (start,
  resume, refuse) and the lock that keeps two processes out of one run.
- ``lockfile``: that lock's flock, naming its holder (compare.py locks its setting with it too).
- ``record``: ``run.json`` and ``metrics.jsonl``, the contract ``adarem.results`` reads.
- ``checkpoint``: atomic checkpoints and the checks a resume makes against them.
- ``signals``: preemption (SIGTERM/SIGUSR1 → checkpoint, exit 75) and the collective stop flag.

``adarem/run_setup.py`` composes these with the data, model and optimizer into a ``Run``;
``adarem/trainer.py`` runs its epochs.
"""
