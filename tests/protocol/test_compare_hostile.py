"""compare.py and make_tables.py against a hostile researcher: arguments that used to be accepted
and then ignored or silently changed (Hydra's own settings, one checkpoint for every trial) are
refused in one ``error:`` line naming the argument and what to do, exit 2, before anything is
launched or written. Fast: nothing here trains."""

from __future__ import annotations

import pytest

from adarem.protocol import cli


def parse_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.parse(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (args, err)
    return err.strip()


# --- Hydra's own settings: every trial's run_dir is set by the protocol, so they had no effect --------

@pytest.mark.parametrize("arg, hint", [
    ("hydra.run.dir=/tmp/mine", "choose the trials' folder with runs= and the report's with out="),
    ("hydra.sweep.dir=/tmp/mine", "choose the trials' folder with runs="),
    ("hydra.job.chdir=true", "choose the trials' folder with runs="),
    ("hydra/launcher=slurm", "choose where the trials run with launcher=local|slurm"),
    ("hydra.verbose=true", "drop it"),
    ("+hydra.foo=1", "drop it"),
    ("++hydra.run.dir=/tmp/mine", "runs="),
])
def test_hydra_settings_are_refused_not_ignored(arg, hint, capsys):
    err = parse_error(["optimizers=sgd", arg], capsys)
    assert err.startswith(f"error: {arg} is a setting of Hydra's, which compare.py does not use"), err
    assert "would be ignored" in err and hint in err


def test_keys_that_only_look_like_hydra_are_train_overrides():
    _, passthrough = cli.parse(["optimizers=sgd", "trainer.epochs=1"])
    assert passthrough == ["trainer.epochs=1"]


def test_a_checkpoint_for_every_trial_is_refused(capsys):
    err = parse_error(["optimizers=sgd", "resume=/tmp/ckpt.pt"], capsys)
    assert "resume=/tmp/ckpt.pt would start every trial of every optimizer from that one checkpoint" in err
    for ok in ("resume=auto", "resume=never"):
        cli.parse(["optimizers=sgd", ok])
