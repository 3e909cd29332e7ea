"""run.json's git record: the commit of the code that runs, never of a checkout around a copy."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from importlib import metadata

import pytest

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


# what the Dockerfile's build-info stage describes (the final stage copies these, installs the first four)
BUILD_PATHS = ["pyproject.toml", "README.md", "adarem", "configs"]


def _suite_repository(path):
    """A fresh repository holding this working tree's package files, committed: its HEAD."""
    path.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, path / name)
    for name in ("adarem", "configs"):
        shutil.copytree(REPO / name, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "_build.json"))
    _git(path, "init", "-q")
    return _commit_all(path)


def _build_info_cli(*args, pythonpath=None, cwd=None):
    """adarem/run/build_info.py as the Dockerfile runs it: describe as a script of the build
    context, seal as the installed module (python -P: the working directory is not on sys.path)."""
    if args[0] == "describe":
        cmd = [sys.executable, "-P", str(REPO / "adarem" / "run" / "build_info.py"), *map(str, args)]
    else:
        cmd = [sys.executable, "-P", "-m", "adarem.run.build_info", *map(str, args)]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_an_installed_copy_records_the_commit_its_image_was_built_from(tmp_path):
    """A non-editable install (pip install --target) sealed with its build's description records
    that commit with "source": "image build" while its files are the ones built; edited afterwards
    (the installed configs included), the commit with dirty true; without the file, null as before."""
    src = tmp_path / "src"
    head = _suite_repository(src)
    description = json.loads(_build_info_cli("describe", src, *BUILD_PATHS))
    assert (description["commit"], description["dirty"]) == (head, False) and "error" not in description
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    (tmp_path / "build-info.json").write_text(json.dumps(description))
    _build_info_cli("seal", tmp_path / "build-info.json", pythonpath=site, cwd=tmp_path)
    sealed = json.loads((site / "adarem" / "_build.json").read_text())
    assert sealed["commit"] == head and len(sealed["files_sha256"]) == 64
    assert "adarem/_build.json," in next(site.glob("adarem-*.dist-info/RECORD")).read_text()  # pip removes it
    image = {"commit": head, "dirty": False, "source": "image build", "built_at": description["built_at"]}
    assert _git_info_of(site, tmp_path) == image
    # a config edited inside the container: the commit it was built from, dirty, flagged
    config = site / "adarem" / "configs" / "config.yaml"
    original = config.read_text()
    config.write_text(original + "# edited\n")
    edited = _git_info_of(site, tmp_path)
    assert edited.pop("diff_sha1") and edited == {**image, "dirty": True, "changed_since_build": True}
    config.write_text(original)  # the built files again (and the bytecode the runs left is not code)
    assert _git_info_of(site, tmp_path) == image
    (site / "adarem" / "optim" / "extra.py").write_text("x = 1\n")  # a file added
    assert _git_info_of(site, tmp_path)["dirty"] is True
    # a checkout never reads the file: its own git, as before
    shutil.copy(site / "adarem" / "_build.json", src / "adarem" / "_build.json")
    assert _git_info_of(src, tmp_path) == {"commit": head, "dirty": False}
    (site / "adarem" / "_build.json").unlink()
    assert _git_info_of(site, tmp_path) == {"commit": None, "dirty": None}


def test_a_build_is_dirty_when_the_copied_files_are_not_the_commits(tmp_path):
    """describe compares the files the image copies with the commit's, byte for byte: a change, a
    staged change, an untracked or git-ignored file, a missing file make it dirty; files outside
    the copied paths and bytecode do not. No repository at the context's root: commit null."""
    from adarem.run.build_info import describe, read, seal

    src = tmp_path / "src"
    src.mkdir()
    (src / ".gitignore").write_text("*.log\n")
    (src / "notes.txt").write_text("x\n")
    (src / "pkg").mkdir()
    (src / "pkg" / "a.py").write_text("a = 1\n")
    (src / "pkg" / "b.yaml").write_text("b: 1\n")
    _git(src, "init", "-q")
    head = _commit_all(src)
    paths = ["pkg"]
    assert describe(src, paths) | {"built_at": None} == {"format": 1, "commit": head, "dirty": False,
                                                         "paths": paths, "built_at": None}
    (src / "notes.txt").write_text("changed\n")  # not copied into the image
    (src / "pkg" / "__pycache__").mkdir()
    (src / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert describe(src, paths)["dirty"] is False
    seen = set()
    for change, undo in [
            (lambda: (src / "pkg" / "a.py").write_text("a = 2\n"), lambda: _git(src, "checkout", "--", "pkg/a.py")),
            (lambda: ((src / "pkg" / "a.py").write_text("a = 3\n"), _git(src, "add", "pkg/a.py")),
             lambda: _git(src, "checkout", "HEAD", "--", "pkg/a.py")),
            (lambda: (src / "pkg" / "new.py").write_text(""), lambda: (src / "pkg" / "new.py").unlink()),
            (lambda: (src / "pkg" / "x.log").write_text("log\n"), lambda: (src / "pkg" / "x.log").unlink()),
            # a compiled module with no source, outside __pycache__: importable, so code
            (lambda: (src / "pkg" / "stray.pyc").write_bytes(b"\0"), lambda: (src / "pkg" / "stray.pyc").unlink()),
            (lambda: (src / "pkg" / "b.yaml").unlink(), lambda: _git(src, "checkout", "--", "pkg/b.yaml"))]:
        change()
        info = describe(src, paths)
        assert info["commit"] == head and info["dirty"] is True and info["changed_files_count"] == 1, info
        seen.add(info["diff_sha1"])
        undo()
        assert describe(src, paths)["dirty"] is False
    assert len(seen) == 6  # each change hashes differently
    # a dirty build, sealed: dirty with the build's diff_sha1 while its files are the built ones
    (src / "pkg" / "a.py").write_text("a = 2\n")
    dirty = describe(src, paths)
    package = tmp_path / "installed" / "pkg"
    shutil.copytree(src / "pkg", package)
    seal(dirty, package)
    assert read(package) == {"commit": head, "dirty": True, "diff_sha1": dirty["diff_sha1"],
                             "source": "image build", "built_at": dirty["built_at"]}
    # a stray compiled module added to the installed package since: changed (bytecode in
    # __pycache__ is not)
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert read(package)["diff_sha1"] == dirty["diff_sha1"]
    (package / "stray.pyc").write_bytes(b"\0")
    assert read(package)["changed_since_build"] is True
    (package / "stray.pyc").unlink()
    # a context without .git, or inside another repository: null, and why
    bare = tmp_path / "bare"
    shutil.copytree(src / "pkg", bare / "pkg")
    for context in (bare, src / "pkg"):
        info = describe(context, ["."] if context.name == "pkg" else paths)
        assert (info["commit"], info["dirty"]) == (None, None) and info["error"], info
    seal(describe(bare, paths), package)
    got = read(package)
    assert (got["commit"], got["dirty"], got["source"]) == (None, None, "image build") and got["error"]


def test_a_build_file_that_cannot_vouch_for_its_commit_records_none(tmp_path):
    """A commit is never recorded with a dirty that is not true or false (the tables would count it
    clean), nor from a file that is not a build description."""
    from adarem.run.build_info import files_sha256, read, seal

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    commit = "a" * 40
    with pytest.raises(ValueError):
        seal({"commit": commit, "dirty": None}, package)
    with pytest.raises(ValueError, match="dist-info"):  # the command line's seal: no RECORD, no file pip leaves
        seal({"commit": commit, "dirty": False}, package, require_record=True)
    assert not (package / "_build.json").exists()
    files = files_sha256(package)
    for bad in ({"commit": commit, "dirty": None, "files_sha256": files}, {"commit": commit, "files_sha256": files},
                {"commit": commit, "dirty": "no", "files_sha256": files},
                {"commit": "HEAD", "dirty": False, "files_sha256": files},
                {"commit": None, "dirty": False, "files_sha256": files},
                {"commit": commit, "dirty": False}, ["not", "an", "object"]):
        (package / "_build.json").write_text(json.dumps(bad))
        got = read(package)
        assert (got["commit"], got["dirty"], got["source"]) == (None, None, "image build") and got["error"], (bad, got)
    (package / "_build.json").write_text("{truncated")
    assert read(package)["commit"] is None and "unreadable" in read(package)["error"]


def test_a_checkout_with_autocrlf_is_described_as_git_status_sees_it(tmp_path):
    """A clone made with core.autocrlf=true (Git for Windows' default) has CRLF in its text files
    and `git status` calls it clean: so does describe (git's own filters), a file committed with
    CRLF and a binary file included; a real change is still dirty."""
    from adarem.run.build_info import describe

    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("a = 1\nb = 2\n")
    (src / "pkg" / "crlf.txt").write_bytes(b"committed\r\nwith crlf\r\n")
    (src / "pkg" / "blob.bin").write_bytes(b"\0\1\n\2")
    _git(src, "init", "-q")
    head = _commit_all(src)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "-c", "core.autocrlf=true", str(src), str(clone)], check=True,
                   capture_output=True)
    assert (clone / "pkg" / "a.py").read_bytes() == b"a = 1\r\nb = 2\r\n"  # what the image would copy
    assert _git(clone, "status", "--porcelain") == ""
    info = describe(clone, ["pkg"])
    assert (info["commit"], info["dirty"]) == (head, False), info
    (clone / "pkg" / "a.py").write_bytes(b"a = 1\r\nb = 3\r\n")
    info = describe(clone, ["pkg"])
    assert info["dirty"] is True and info["changed_files"] == ["pkg/a.py"], info
    (clone / "pkg" / "a.py").write_bytes(b"a = 1\nb = 2\n")  # the committed bytes themselves: clean
    assert describe(clone, ["pkg"])["dirty"] is False


def test_pip_removes_the_build_file_with_the_package(tmp_path):
    """seal lists _build.json in the installed distribution's RECORD: a wheel of commit B
    force-reinstalled by pip over a sealed install of commit A leaves no description of A (which
    would record A, dirty, for code that is exactly B), and pip uninstall leaves no adarem/."""
    from adarem.run.build_info import read, seal

    src = tmp_path / "src"
    commit_a = _suite_repository(src)
    description = json.loads(_build_info_cli("describe", src, *BUILD_PATHS))
    assert (description["commit"], description["dirty"]) == (commit_a, False)

    def wheel(name):
        out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                              "-w", str(tmp_path / name), str(src)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        shutil.rmtree(src / "build", ignore_errors=True)
        return next((tmp_path / name).glob("adarem-*.whl"))

    def pip(*args):
        out = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                              "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]

    wheel_a = wheel("a")
    config = src / "configs" / "config.yaml"  # installed as adarem/configs
    config.write_text(config.read_text() + "# commit B\n")
    commit_b = _commit_all(src, "B")
    wheel_b = wheel("b")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    pip("install", "-q", "--no-deps", "--no-index", str(wheel_a))
    seal(description, site / "adarem")
    assert read(site / "adarem")["commit"] == commit_a
    # the row as pip writes them, read back as installers read RECORD
    dist_info = next(site.glob("adarem-*.dist-info"))
    rows = {str(f): f for f in metadata.Distribution.at(dist_info).files}
    row, data = rows["adarem/_build.json"], (site / "adarem" / "_build.json").read_bytes()
    assert (row.hash.mode, row.hash.value, row.size) == (
        "sha256", base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode(), len(data))
    assert "adarem/__init__.py" in rows
    seal(description, site / "adarem")  # sealed again: one row still
    assert [str(f) for f in metadata.Distribution.at(dist_info).files].count("adarem/_build.json") == 1
    pip("install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel_b))
    assert "# commit B" in (site / "adarem" / "configs" / "config.yaml").read_text()
    assert not (site / "adarem" / "_build.json").exists() and read(site / "adarem") is None
    seal({**description, "commit": commit_b}, site / "adarem")
    assert read(site / "adarem")["commit"] == commit_b
    pip("uninstall", "-q", "-y", "adarem")
    assert not (site / "adarem").exists(), sorted(p.name for p in (site / "adarem").rglob("*"))
