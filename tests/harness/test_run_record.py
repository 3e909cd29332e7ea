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
