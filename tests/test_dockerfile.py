"""No Docker engine runs here: check that the Dockerfile installs exactly this project and its
pyproject.toml requirements, as a non-root user, with the configs in place."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO


def _instructions():
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


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
    copies = [l.split()[1:-1] for l in lines if l.startswith("COPY")]
    copied = {p for c in copies for p in c}
    for needed in ("pyproject.toml", "adarem", "train.py", "configs"):
        assert needed in copied
    # pyproject comes in before the install, and the install does not pin anything of its own
    assert lines.index("COPY pyproject.toml README.md ./") < lines.index(pip[0])


def test_dockerfile_runs_as_non_root_with_a_workdir():
    lines = _instructions()
    users = [l for l in lines if l.startswith("USER")]
    assert users and users[-1] != "USER root"
    assert any(l.startswith("WORKDIR") for l in lines)
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore
