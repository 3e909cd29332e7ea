"""wandb logging of the same metrics as metrics.jsonl: offline by default, no account needed.

When a run ends (finished, diverged or stopped for a requeue), its record files, run.json and
metrics.jsonl, are attached to the wandb run (uploaded online, or by ``wandb sync`` of an offline
run), so that ``adarem-tables --wandb`` tabulates the very files a run directory holds
(adarem/results/wandb_runs.py) rather than wandb's history, which merges the lines logged at one
step and has no run status, final error or data identity.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from adarem.run.record import METRICS, RUN_JSON

log = logging.getLogger(__name__)

# whether this process called wandb.init: its atexit hooks (the service process, an offline run's
# files) must then run, and train.py ends through sys.exit rather than os._exit (adarem/cli/train.py).
# "wandb" in sys.modules says nothing: timm imports wandb whenever it is installed.
STARTED = False


class Tracker:
    def __init__(self, mode: str, enabled: bool):
        self.mode = mode if enabled else "disabled"
        self.run = None
        self.run_dir: Path | None = None

    def start(self, run_dir: Path, run_id: str, project: str, entity: str | None, group: str, name: str,
              config: dict) -> None:
        if self.mode == "disabled":
            return
        self.run_dir = Path(run_dir)
        os.environ.setdefault("WANDB_SILENT", "true")
        global STARTED
        try:
            import wandb

            STARTED = True  # before init: a failed init may have started wandb's service already

            # the same id on every restart of a requeued run continues the same wandb run
            self.run = wandb.init(project=project, entity=entity, group=group, name=name, id=run_id,
                                  resume="allow", mode=self.mode, dir=str(run_dir), config=config)
        except Exception as exc:  # tracking is a mirror of metrics.jsonl, never a reason to stop
            if self.mode == "online":  # ...unless the user asked for it explicitly
                from adarem.config import ConfigError

                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"logging.wandb=online but wandb could not start ({first}); run `wandb login` "
                                  f"(or set WANDB_API_KEY), or use logging.wandb=offline and `wandb sync` later") from None
            log.warning("wandb (%s) unavailable: %s; metrics still go to metrics.jsonl", self.mode,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self.run = None

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, exit_code: int = 0) -> None:
        """Attach the run record as it stands (call after run.json's last update), end the wandb run."""
        if self.run is not None:
            for name in (RUN_JSON, METRICS):
                if (self.run_dir / name).is_file():
                    # a copy in the wandb run's own folder, not wandb's default symlink: an offline run
                    # synced later (its folder copied off the cluster, or the run directory removed)
                    # uploads the record as the run left it
                    copy = Path(self.run.dir) / name
                    shutil.copyfile(self.run_dir / name, copy)
                    self.run.save(str(copy), base_path=self.run.dir, policy="now", glob=False)
            self.run.finish(exit_code=exit_code)
            self.run = None
