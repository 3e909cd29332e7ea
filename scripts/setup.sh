#!/usr/bin/env bash
# Set up this project on a fresh machine: a virtual environment in .venv with the package and
# its test dependencies, and (when run as root on Debian) the Fashion-MNIST data package.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's dataset-fashion-mnist" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    echo "setup: Fashion-MNIST not found; run 'sudo apt-get install dataset-fashion-mnist' to use data=fashion_mnist" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import adarem, torch, hydra, timm, wandb, nvidia.dali, pytest, xdist" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip
  # the tested torch pair is pinned here (and in the Dockerfile); the package itself asks only torch>=2.4
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 -e ".[test]"
  touch .venv/.installed
fi
