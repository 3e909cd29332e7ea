"""train.py with one slow rank (for tests/harness/test_metrics.py): on rank $SLOW_RANK every batch
of a loader pass arrives $SLOW_RANK_DELAY seconds late, as from a slow disk or a busy node."""

import contextlib
import os
import runpy
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

if os.environ.get("RANK") == os.environ.get("SLOW_RANK"):
    import adarem.engine as engine

    delay = float(os.environ["SLOW_RANK_DELAY"])
    fast = engine.device_batches

    def slow_batches(*args, **kwargs):
        with contextlib.closing(fast(*args, **kwargs)) as batches:
            for batch in batches:
                time.sleep(delay)
                yield batch

    engine.device_batches = slow_batches

sys.path.insert(0, str(REPO))
if sys.argv[1:] and sys.argv[1].endswith("train.py"):  # tests.conftest.run_train names it after the launcher
    del sys.argv[1]
sys.argv[0] = str(REPO / "train.py")
runpy.run_path(str(REPO / "train.py"), run_name="__main__")
