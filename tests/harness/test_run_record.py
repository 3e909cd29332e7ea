"""run.json's git record: the commit of the code that runs, never of a checkout around a copy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.conftest import REPO


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _git_info_of(site, cwd):
    code = "import json; from adarem.run.record import git_info; print(json.dumps(git_info()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_git_commit_only_for_the_checkouts_own_package(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    _git(checkout, "init", "-q")
    (checkout / "README").write_text("x\n")
    _git(checkout, "add", "README")
    _git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    head = _git(checkout, "rev-parse", "HEAD")
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    # a non-editable install inside the checkout (pip install --target <checkout>/.venv/site)
    site = checkout / ".venv" / "site"
    shutil.copytree(REPO / "adarem", site / "adarem", ignore=ignore)
    assert _git_info_of(site, tmp_path) == {"commit": None, "dirty": None}
    # the checkout's own adarem/ (committed): its commit, clean
    shutil.copytree(REPO / "adarem", checkout / "adarem", ignore=ignore)
    _git(checkout, "add", "adarem")
    _git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "code")
    head = _git(checkout, "rev-parse", "HEAD")
    assert _git_info_of(checkout, tmp_path) == {"commit": head, "dirty": False}
    # changed and not committed: dirty, with a hash of the change
    with open(checkout / "adarem" / "__init__.py", "a") as f:
        f.write("# changed\n")
    info = _git_info_of(checkout, tmp_path)
    assert info["commit"] == head and info["dirty"] is True and len(info["diff_sha1"]) == 40


def _commit_all(checkout, message="code"):
    _git(checkout, "add", "-A")
    _git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return _git(checkout, "rev-parse", "HEAD")


def test_git_commit_of_the_suite_inside_a_larger_monorepo(tmp_path):
    """The package's files tracked by a repository whose toplevel is not the package's parent
    (the suite in <monorepo>/ml/suite/adarem): that repository's commit, not none."""
    mono = tmp_path / "mono"
    shutil.copytree(REPO / "adarem", mono / "ml" / "suite" / "adarem", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (mono / "README").write_text("x\n")
    _git(mono, "init", "-q")
    head = _commit_all(mono)
    assert _git_info_of(mono / "ml" / "suite", tmp_path) == {"commit": head, "dirty": False}


def test_a_failing_diff_keeps_the_commit_and_dirty(tmp_path):
    """`git diff HEAD --binary` failing (a timeout, an error) on a dirty tree: the commit and
    dirty=True are kept, diff_sha1 is null (was: no commit and dirty unknown)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "adarem", checkout / "adarem", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    _git(checkout, "init", "-q")
    head = _commit_all(checkout)
    with open(checkout / "adarem" / "__init__.py", "a") as f:
        f.write("# changed\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which("git")
    (bin_dir / "git").write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = diff ] && exit 128; done\nexec {real} "$@"\n')
    (bin_dir / "git").chmod(0o755)
    code = "import json; from adarem.run.record import git_info; print(json.dumps(git_info()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(checkout), "PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"commit": head, "dirty": True, "diff_sha1": None}


def test_only_versions_that_can_change_numbers_make_a_run_mixed():
    """Every version is recorded; wandb, hydra-core, omegaconf and submitit changing between
    segments does not make a run mixed, torch (or numpy, python, adarem, DALI...) does; numpy and
    pillow, recorded from this version on, count only when both segments record them."""
    from adarem.run.record import _provenance_differences

    base = {"git": {"commit": "a"}, "versions": {"python": "3.11", "torch": "2.1", "wandb": "0.1", "hydra-core": "1.3",
                                                 "omegaconf": "2.3", "submitit": "1.5", "nvidia-dali-cuda130": "2.0"}}
    harmless = {**base, "versions": {**base["versions"], "wandb": "0.2", "hydra-core": "1.4", "omegaconf": "2.4",
                                     "submitit": "1.6", "numpy": "2.0", "pillow": "11"}}
    assert _provenance_differences(base, harmless) == []
    numeric = {**harmless, "versions": {**harmless["versions"], "torch": "2.2", "nvidia-dali-cuda130": "2.1"}}
    assert _provenance_differences(base, numeric) == ["versions.nvidia-dali-cuda130", "versions.torch"]
    numpy = {**harmless, "versions": {**harmless["versions"], "numpy": "2.1"}}
    assert _provenance_differences(harmless, numpy) == ["versions.numpy"]
