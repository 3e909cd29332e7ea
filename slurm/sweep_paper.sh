#!/bin/bash
# Submit the complete paper grid: 4 models x 6 optimizer variants x 3 seeds, one job array per
# model, through hydra-submitit-launcher (configs/hydra/launcher/slurm.yaml).
#   SLURM_PARTITION=gpu SLURM_ACCOUNT=me bash slurm/sweep_paper.sh [extra overrides]
# Afterwards: python scripts/make_tables.py multirun/imagenet --out results/imagenet
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${ADAREM_PYTHON:-.venv/bin/python}
OPTIMIZERS=${OPTIMIZERS:-sgd,adam,adamw,adarem,adarem_m,adarem_nodecay}
SEEDS=${SEEDS:-0,1,2}
for experiment in paper_resnet18 paper_resnet50 paper_mobilenetv2 paper_shufflenetv2; do
  "$PYTHON" train.py -m hydra/launcher=slurm "experiment=$experiment" "optimizer=$OPTIMIZERS" "seed=$SEEDS" "$@"
done
