#!/bin/bash
# The comparison protocol of scripts/compare.py on the paper's ImageNet experiments: for each model,
# an lr search scored on a holdout carved from ImageNet's training split (data.eval_on=holdout; the
# val split, ImageNet's test set, never chooses anything), then the chosen lr of every optimizer
# trained with the final seeds and scored on val. Each stage is one SLURM job array submitted
# through submitit (launcher=slurm); compare.py waits for it, reads the run records, and goes on.
#   SLURM_PARTITION=gpu SLURM_ACCOUNT=me bash slurm/sweep_paper.sh [compare.py keys / train.py overrides]
#   (dry_run=true: check every configuration, submit nothing; trainer.epochs=1: a smoke run, each recipe's
#   schedule cut after its first epoch, with a note saying so)
# Run it where sbatch works (a login node), inside tmux or screen: it waits for days. Launched again
# with the same arguments, it submits only the trials that have not finished (failed ones run again
# and resume from their checkpoints). One compare.py per experiment, in parallel; their logs go to
# $LOGS/compare_<experiment>.log, reports to results/<experiment>/ (out=DIR: DIR/<experiment>/), runs to
# runs/compare/<experiment>/.
# Environment: OPTIMIZERS, SEEDS (final seeds), SELECT_SEEDS, HOLDOUT_FRACTION, EXPERIMENTS, LOGS,
# ADAREM_PYTHON, and the cluster variables of compare.py --help (SLURM_PARTITION, SLURM_ACCOUNT,
# ADAREM_GPUS_PER_NODE, ADAREM_NODES, ADAREM_CPUS_PER_TASK, ADAREM_TIMEOUT_MIN, ADAREM_MEM_GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${ADAREM_PYTHON:-.venv/bin/python}
OPTIMIZERS=${OPTIMIZERS:-sgd,sgd_plain,adam,adamw,adarem,adarem_m,adarem_nodecay}
SEEDS=${SEEDS:-3}
SELECT_SEEDS=${SELECT_SEEDS:-2}
# 1 % of ImageNet's 1,281,167 training images: a fixed holdout of about 12,800 (one image = 0.008 points);
# the selection runs train on the other 99 %, the final runs on all of it (adarem/data: holdout_split)
HOLDOUT_FRACTION=${HOLDOUT_FRACTION:-0.01}
EXPERIMENTS=${EXPERIMENTS:-paper_resnet18 paper_resnet50 paper_mobilenetv2 paper_shufflenetv2}
LOGS=${LOGS:-runs/compare/logs}
mkdir -p "$LOGS"
pids=()
for experiment in $EXPERIMENTS; do
  # out=DIR: the folder of the reports, one per experiment (DIR/<experiment>): one report folder for
  # all four would hold the report of one of them (compare.py refuses another setting's report)
  args=()
  for arg in "$@"; do
    case "$arg" in
      out=*) args+=("${arg%/}/$experiment") ;;
      *) args+=("$arg") ;;
    esac
  done
  "$PYTHON" scripts/compare.py "experiment=$experiment" launcher=slurm "optimizers=$OPTIMIZERS" "seeds=$SEEDS" \
    "select_seeds=$SELECT_SEEDS" "data.holdout_fraction=$HOLDOUT_FRACTION" ${args[@]+"${args[@]}"} \
    >"$LOGS/compare_$experiment.log" 2>&1 &
  pids+=("$!")
  echo "compare.py experiment=$experiment: pid $!, log $LOGS/compare_$experiment.log"
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
