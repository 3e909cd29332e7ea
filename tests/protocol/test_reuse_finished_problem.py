"""compare.py's reuse of a finished trial without train.py (the SLURM dispatcher reads the record and
submits nothing) applies train.py's relaunch check: a finished run.json that is no result
(run/record.py finished_record_problem) is refused, never scored."""

import json
from types import SimpleNamespace

from adarem.protocol import dispatch

CFG = SimpleNamespace(trainer=SimpleNamespace(batch_size=32, sync_bn=False))


def write(run_dir, final):
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "final": final, "world_size": 8,
                                                  "bn_batch": None}))  # the launches' 8 ranks below


def test_finished_record_with_nonfinite_loss_is_refused_not_reused(tmp_path):
    # a record of a version before 26b6a62: weights blown up after the last training loss, recorded
    # finished; its top-1 error is an argmax over NaN logits. train.py refuses to relaunch it
    # (run/plan.py); the SLURM dispatcher reused it as a finished trial with that error
    run_dir = tmp_path / "lr0.1_wd0_s0"
    write(run_dir, {"val_top1_err": 12.5, "val_loss": float("nan")})
    why = dispatch.reuse_refusal(run_dir, CFG, 8, "launcher=slurm")
    assert why is not None and "final validation loss is nan" in why and str(run_dir) in why
    assert dispatch.refused(run_dir, why)["refused"] is True


def test_finished_record_that_is_a_result_is_still_reused(tmp_path):
    run_dir = tmp_path / "ok"
    write(run_dir, {"val_top1_err": 12.5, "val_loss": 0.4, "val_top5_err": None})
    assert dispatch.reuse_refusal(run_dir, CFG, 8, "launcher=slurm") is None
    missing = tmp_path / "none"
    assert dispatch.reuse_refusal(missing, CFG, 8, "launcher=slurm") is None
