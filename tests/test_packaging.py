"""The package as users install it: the optimizer alone, the wheel's contents, and the installed
entry point training from a directory outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

CONSOLE_SCRIPTS = {"adarem-train": "adarem.cli:train_command", "adarem-tables": "adarem.cli.tables:run",
                   "adarem-compare": "adarem.protocol.cli:run"}


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, **kwargs)


def test_the_optimizer_imports_without_the_harness():
    # pip install adarem (torch only): no timm, Hydra, OmegaConf or wandb
    res = _python("import sys\n"
                  "for name in ('timm', 'hydra', 'omegaconf', 'wandb'):\n"
                  "    sys.modules[name] = None  # import name -> ImportError\n"
                  "import torch, adarem\n"
                  "p = torch.nn.Parameter(torch.ones(3))\n"
                  "opt = adarem.AdaRem([p], lr=0.1)\n"
                  "p.grad = torch.ones(3)\n"
                  "opt.step()\n"
                  "assert p.detach().lt(1).all()\n"
                  "from adarem import AdaRem\n"
                  "assert AdaRem is adarem.AdaRem\n", cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]


def test_the_entry_points_package_imports_only_the_standard_library():
    # what lets train.py / adarem-train install their signal handlers before the seconds-long imports
    res = _python("import sys, adarem.cli, adarem.cli.early\n"
                  "heavy = [m for m in ('torch', 'hydra', 'omegaconf', 'timm') if m in sys.modules]\n"
                  "assert not heavy, heavy\n", cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (an in-tree build would leave build/ behind, and
    a stale build/lib would leak removed modules into later wheels)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    for name in ("adarem", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp / "dist")], cwd=src, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert seconds < 120, f"building the wheel took {seconds:.0f} s"
    (path,) = (tmp / "dist").glob("adarem-*.whl")
    return path


def test_the_wheel_carries_the_configs_every_package_and_the_console_scripts(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_text = zf.read(entry_points).decode()
    configs = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))
    assert "config.yaml" in configs and "optimizer/adarem.yaml" in configs and "hydra/launcher/local.yaml" in configs
    missing = [c for c in configs if f"adarem/configs/{c}" not in names]
    assert not missing, missing
    assert "adarem/results/claims.yaml" in names  # adarem-tables' default claims
    assert "adarem/optim/adarem_fused_cpu.cpp" in names  # the fused CPU kernel, built at first use
    packages = sorted(p.parent.relative_to(REPO).as_posix() for p in (REPO / "adarem").rglob("__init__.py"))
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"packages missing from pyproject.toml's [tool.setuptools] packages: {missing}"
    assert not any(n.startswith(("configs/", "tests/", "scripts/")) or n == "train.py" for n in names)
    entries = {line.split("=")[0].strip(): line.split("=")[1].strip()
               for line in entry_text.split("[console_scripts]")[1].strip().splitlines() if "=" in line}
    assert {k: entries.get(k) for k in CONSOLE_SCRIPTS} == CONSOLE_SCRIPTS


def test_the_installed_package_trains_from_any_directory(wheel, tmp_path, env):
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert (site / "bin" / "adarem-train").is_file()
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])))
    # the installed copy, not the checkout (which the test environment has installed in editable mode)
    res = _python("import adarem, adarem.cli; print(adarem.__file__); print(adarem.cli.CONFIG_DIR)", cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [Path(line) for line in res.stdout.split()] == [site / "adarem" / "__init__.py", site / "adarem" / "configs"]
    res = subprocess.run([sys.executable, "-m", "adarem.cli.train", "trainer.epochs=1", "logging.wandb=disabled",
                          "logging.progress=none"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (record,) = (cwd / "runs").rglob("run.json")  # Hydra's run directory, relative to the current directory
    run = json.loads(record.read_text())
    assert run["status"] == "finished" and run["config"]["run_dir"] == str(record.parent)
    assert record.parent.name.endswith(run["run_id"])
