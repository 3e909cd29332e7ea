#!/usr/bin/env bash
# One command for every GPU check of the suite (see scripts/gpu_check.py for the list).
#
#   bash scripts/gpu_check.sh --build-deps   # here: hydra-core/omegaconf/antlr4 into .gpu_deps/ (2 MB, git-ignored)
#   bash scripts/gpu_check.sh                # on a GPU machine: figures to $OUT (or results/bench/gpu/)
#   bash scripts/gpu_check.sh --dry-run      # the same steps on the CPU at tiny sizes (the tests run this)
#
# With the device tool of this workplace: run `ADAREM_COMMIT=<the commit> bash scripts/gpu_check.sh`
# with carry=[".gpu_deps"] (the copy there has no .git: the commit names the code in the figures);
# the checks run in order of value within --budget (540 s) and the call names those left for a
# next one; it writes to $OUT, and the files come back; copy them into results/bench/gpu/ and commit.
# The GPU machine has its own python3 and torch (no venv, no network): the small pure-Python
# packages that it lacks travel in .gpu_deps/, and wandb is never imported (logging.wandb=disabled).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--build-deps" ]; then
  rm -rf .gpu_deps
  python3 -m pip install -q --no-deps --no-compile --target .gpu_deps \
    hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 || exit $?
  # scikit-learn's two sample photos (the photo trees of the loader and decode checks), 0.2 MB
  py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
  photos=$("$py" -c "import sklearn, pathlib; print(pathlib.Path(sklearn.__file__).parent / 'datasets' / 'images')") \
    || { echo "gpu_check --build-deps: scikit-learn is needed here to copy its sample photos (bash scripts/setup.sh)" >&2; exit 1; }
  mkdir -p .gpu_deps/sample_photos && cp "$photos/china.jpg" "$photos/flower.jpg" .gpu_deps/sample_photos/ || exit $?
  du -sh .gpu_deps
  exit 0
fi

if [ -x .venv/bin/python ] && .venv/bin/python -c "import hydra" 2>/dev/null; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# .gpu_deps goes last: a machine that has these packages keeps its own
[ -d .gpu_deps ] && export PYTHONPATH="$PYTHONPATH:$PWD/.gpu_deps"
[ -d .gpu_deps/sample_photos ] && export ADAREM_SAMPLE_PHOTOS="$PWD/.gpu_deps/sample_photos"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done
pack=()
if [ -n "${OUT:-}" ] && [ $dry = 0 ]; then
  # the device tool returns at most 8 files of $OUT: the figures are written aside and packed into
  # $OUT after every check (the summary, and one tar.gz of everything), beside the console's copy
  out=$(mktemp -d -t gpu_check.XXXXXX)
  pack=(--pack "$OUT")
elif [ -n "${OUT:-}" ]; then
  out=$OUT
elif [ $dry = 1 ]; then
  out=$(mktemp -d -t gpu_check_dry.XXXXXX)
else
  out=results/bench/gpu
fi
ulimit -c 0  # a check cut at its limit gets SIGABRT (its stacks to the log): no core files of GPU processes
exec "$PY" scripts/gpu_check.py --out "$out" ${pack[@]+"${pack[@]}"} "$@"
