"""No Docker engine runs here: check that the Dockerfile installs exactly this project and its
pyproject.toml requirements, as a non-root user, with the configs in place, and that its
build-info and seal steps, run as written, make an installed copy record its commit."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

from tests.conftest import REPO


def _instructions():
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [re.sub(r"\s+", " ", line.strip()) for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _stages():
    """{stage name or "final": its instructions, FROM included}"""
    stages, current = {}, None
    for line in _instructions():
        if line.startswith("FROM"):
            words = line.split()
            current = words[3] if len(words) == 4 and words[2].upper() == "AS" else "final"
            stages[current] = []
        stages[current].append(line)
    return stages


def _copied(stage):
    """The build-context sources a stage's COPY instructions name (not those of COPY --from)."""
    return [p for l in stage if l.startswith("COPY ") and "--from" not in l for p in l.split()[1:-1]]


def _dockerignore():
    return [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
            if l.strip() and not l.strip().startswith("#")]


def test_dockerfile_installs_the_project_from_pyproject():
    lines = _instructions()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert lines[0].startswith("FROM python:3.11")
    assert pyproject["project"]["requires-python"] == ">=3.11"
    pip = [l for l in lines if l.startswith("RUN") and "pip install" in l]
    # the project with its extras, plus the one pinned torch pair that scripts/setup.sh also pins
    assert pip == ['RUN pip install torch==2.14.1 torchvision==0.29.1 ".[all,dali]"'], pip
    extras = pyproject["project"]["optional-dependencies"]
    assert {"train", "results", "slurm", "dali", "all"} <= set(extras)
    assert pyproject["project"]["dependencies"] == ["torch>=2.4"]  # the optimizer installs alone
    assert "torch==2.14.1 torchvision==0.29.1" in (REPO / "scripts" / "setup.sh").read_text()
    copied = set(_copied(_stages()["final"]))
    for needed in ("pyproject.toml", "adarem", "train.py", "configs"):
        assert needed in copied
    # pyproject comes in before the install, and the install does not pin anything of its own
    assert lines.index("COPY pyproject.toml README.md ./") < lines.index(pip[0])


def test_dockerfile_runs_as_non_root_with_a_workdir():
    lines = _instructions()
    users = [l for l in lines if l.startswith("USER")]
    assert users and users[-1] != "USER root"
    assert any(l.startswith("WORKDIR") for l in lines)
    assert ".venv" in _dockerignore()


def test_only_the_build_info_stage_sees_git_and_it_describes_what_the_image_copies():
    """.git is in the context for the build-info stage, which copies the context; the image copies
    named paths (never the context, never .git), all of them described, and seals the installed
    package after the install, with the sources it was installed from removed."""
    stages = _stages()
    assert list(stages) == ["base", "build-info", "final"], list(stages)
    assert stages["base"][0].startswith("FROM python:3.11")
    assert stages["build-info"][0] == "FROM base AS build-info" and stages["final"][0] == "FROM base"
    assert not any(p in (".git", "*") or p.rstrip("/") == "." or p.startswith(".git")
                   for p in _copied(stages["final"])), _copied(stages["final"])
    assert not any(".git" in p for p in _dockerignore())  # the build-info stage needs it
    # ...through a read-only bind mount of the context for its one RUN (BuildKit), never a COPY: no
    # layer, cached or exported (--cache-to mode=max), holds the context, its .git or untracked files
    assert not any(l.startswith(("COPY", "ADD")) for l in stages["build-info"]), stages["build-info"]
    assert "WORKDIR /src" in stages["build-info"]
    describe = [l for l in stages["build-info"] if l.startswith("RUN")]
    assert len(describe) == 1 and describe[0].startswith("RUN --mount=type=bind,target=/src python ")
    assert " describe . " in describe[0]
    assert "BuildKit" in (REPO / "Dockerfile").read_text() and "BuildKit" in (REPO / "slurm" / "README.md").read_text()
    # what the image copies, and the Dockerfile and .dockerignore (an uncommitted edit of either can
    # change what is sealed)
    assert sorted(_described(stages)) == sorted(_copied(stages["final"]) + ["Dockerfile", ".dockerignore"])
    final = stages["final"]
    fetch = "COPY --from=build-info /build-info.json /tmp/build-info.json"
    seal = [l for l in final if l.startswith("RUN") and " seal " in l]
    pip = [l for l in final if "pip install" in l]
    assert len(seal) == 1 and final.index(pip[0]) < final.index(fetch) < final.index(seal[0]) < final.index("USER adarem")
    assert seal[0].startswith("RUN rm -rf adarem configs ")


def _described(stages):
    """The paths the build-info stage's describe RUN names."""
    describe = next(l for l in stages["build-info"] if l.startswith("RUN"))
    return shlex.split(describe.split(" describe . ", 1)[1].split(">")[0])


def test_dockerignore_keeps_out_what_the_image_does_not_copy():
    """Local caches, build output and results stay out of the context; nothing the image copies
    (or the build-info stage describes) is excluded. Patterns are anchored at the context root."""
    ignored = _dockerignore()
    assert {".cache", ".gpu_deps", "build", "results"} <= set(ignored), ignored
    for path in _described(_stages()):
        assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), path


def test_the_readmes_check_before_a_build_lists_ignored_files_of_the_described_paths():
    """describe counts git-ignored files under the copied paths as dirty: `git status --short`
    alone does not show them."""
    readme = (REPO / "slurm" / "README.md").read_text()
    checks = [l.strip() for l in readme.splitlines() if l.strip().startswith("git status")]
    assert checks, "slurm/README.md: no git status before the build"
    for check in checks:
        words = shlex.split(check)
        assert "--ignored" in words and "--" in words, check
        assert sorted(words[words.index("--") + 1:]) == sorted(_described(_stages())), check


def _run_as_the_dockerfile(line, cwd, env, tmp_path):
    """A RUN instruction of the Dockerfile with python this interpreter and / paths under tmp_path
    (cwd: the WORKDIR, where a --mount=type=bind puts the build context)."""
    cmd = re.sub(r"^RUN (--\S+ )*", "", line).replace("/tmp/build-info.json", f"{tmp_path}/tmp/build-info.json")
    cmd = re.sub(r"(?<![\w/])/build-info\.json", f"{tmp_path}/build-info.json", cmd)
    cmd = re.sub(r"(^|&& )python ", lambda m: f"{m.group(1)}{shlex.quote(sys.executable)} ", cmd)
    out = subprocess.run(["sh", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (cmd, out.stderr[-2000:])


def test_the_dockerfiles_build_info_and_seal_steps_record_the_commit(tmp_path):
    """The build-info RUN and the seal RUN as written, on a context that is a repository holding
    this working tree's copied files (committed) and an install like the image's (pip, non-editable):
    the installed copy records that commit from the image build; /opt/adarem keeps no sources."""
    stages = _stages()
    paths = sorted(set(_copied(stages["final"])) | {"Dockerfile", ".dockerignore"})
    context = tmp_path / "context"
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "_build.json")
    for name in paths:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, context / name, **(
            {"ignore": ignore} if (REPO / name).is_dir() else {}))
    git = lambda *a: subprocess.run(["git", *a], cwd=context, check=True, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    head = git("rev-parse", "HEAD")
    env = {"PATH": "/usr/bin:/bin"}
    (tmp_path / "tmp").mkdir()
    _run_as_the_dockerfile(next(l for l in stages["build-info"] if l.startswith("RUN")), context, env, tmp_path)
    described = json.loads((tmp_path / "build-info.json").read_text())
    assert (described["commit"], described["dirty"]) == (head, False), described
    # an uncommitted Dockerfile edit (one that could patch the code before seal): dirty
    dockerfile = (context / "Dockerfile").read_text()
    (context / "Dockerfile").write_text(dockerfile + "RUN sed -i 's/0.1/0.2/' adarem/__init__.py\n")
    _run_as_the_dockerfile(next(l for l in stages["build-info"] if l.startswith("RUN")), context, env, tmp_path)
    edited = json.loads((tmp_path / "build-info.json").read_text())
    assert (edited["dirty"], edited.get("changed_files")) == (True, ["Dockerfile"]), edited
    (context / "Dockerfile").write_text(dockerfile)
    _run_as_the_dockerfile(next(l for l in stages["build-info"] if l.startswith("RUN")), context, env, tmp_path)
    restored = json.loads((tmp_path / "build-info.json").read_text())  # the description seal installs
    assert restored["dirty"] is False
    # the final stage: /opt/adarem with the copied paths, installed (no dependencies here) to site
    opt, site = tmp_path / "opt", tmp_path / "site"
    shutil.copytree(context, opt, ignore=lambda d, names: [n for n in names if d == str(context)
                                                            and n not in _copied(stages["final"])])
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), "."], cwd=opt, capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    shutil.copy(tmp_path / "build-info.json", tmp_path / "tmp" / "build-info.json")
    seal = next(l for l in stages["final"] if l.startswith("RUN") and " seal " in l)
    _run_as_the_dockerfile(seal, opt, {**env, "PYTHONPATH": str(site)}, tmp_path)
    assert not (opt / "adarem").exists() and not (opt / "configs").exists()
    assert not (tmp_path / "tmp" / "build-info.json").exists()
    code = "import json; from adarem.run.record import git_info; print(json.dumps(git_info()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "commit": head, "dirty": False, "source": "image build", "built_at": restored["built_at"]}
