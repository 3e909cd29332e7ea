"""Compare optimizers with one protocol for all, then build the tables, plots and claims verdicts.

    python scripts/compare.py                                   # digits, small_cnn: ~4 min on 2 cores
    python scripts/compare.py experiment=fashion_mnist_small
    python scripts/compare.py search=lr_wd seeds=5 select_seeds=2 data=fashion_mnist
    python scripts/compare.py experiment=paper_resnet50 launcher=slurm partition=gpu data.holdout_fraction=0.01

Protocol, identical for every optimizer (AlgoPerf's and DeepOBS's tuning rules as the anchor):
  1. search, on the training split minus a fixed holdout (data.eval_on=holdout; the test split
     never chooses anything): learning rates on a log grid around the optimizer's default lr
     (configs/optimizer/), 10^-lr_span .. 10^+lr_span times it in steps of 10^lr_step (default
     two decades in half-decade steps: 5 points); with search=lr_wd, jointly with weight decay
     (the optimizer's own kind, coupled or decoupled) at 0.1x, 1x, 10x its default (1e-4 where the
     default is 0). Every trial is trained with each of ``select_seeds`` selection seeds
     (1000, 1001, ...), disjoint from the final seeds (seeds <= 1000; seed= is refused); its score
     is the mean holdout error, ties (the same mistakes, up to float rounding) broken by the mean
     holdout loss. A failed, diverged or non-finite trial scores worst.
  2. when the best lr sits on the edge of what was tried, the grid is extended by one step beyond
     that edge, up to ``max_extend`` times; a result still on the edge is flagged in the report, as
     is a weight decay on the edge of its grid (never extended).
     Every optimizer gets the same trials before extension; the report states the counts.
  3. the chosen configuration is trained with ``seeds`` final seeds (0, 1, ...) on the full
     training split and scored on the test/val split, evaluated ``evals_per_epoch`` times per epoch
     (evenly spaced in steps: the resolution of steps-to-target); scripts/make_tables.py's report,
     with the selection table, a plot of holdout error against lr and the provenance of the
     comparison, is written to ``out``.

Keys of this script (key=value): optimizers=a,b,c  seeds=N  select_seeds=N  search=lr|lr_wd
lr_span=D  lr_step=D  lr_grid=f1,f2,...  (explicit factors instead of span/step; no extension)
max_extend=N  evals_per_epoch=N (finals; default 4)  workers=N  out=DIR  runs=DIR  dry_run=true (check the
arguments and every optimizer's configuration as a trial's train.py would, print the plan, launch
nothing). A key given twice takes its last value (slurm/sweep_paper.sh's arguments override its
own). Refused, as they would be ignored: an optimizer named twice, a key of the other launcher
(partition= without launcher=slurm, workers= with it), lr_span=/lr_step=/max_extend=N beside
lr_grid=, evals_per_epoch= beside trainer.evals_per_epoch=.
Every other key=value is a train.py override; trainer.max_steps is refused (a trial stopped early
would score worst: use trainer.epochs for a shorter study), as are seed=, optimizer=, data.eval_on=,
run_dir= (set by the protocol for every trial), resume=<checkpoint> (one checkpoint for
every trial) and Hydra's own settings (hydra.run.dir, hydra.job.chdir, hydra/launcher=...: unused).
out defaults to results/<data>_<model> (results/<experiment> with experiment=), with the train.py
overrides that change the final runs appended (results/digits_small_cnn-trainer.epochs=2): a
comparison of another configuration never replaces the main job's or an experiment's report unless
out= names that folder. runs defaults to runs/compare/<data>_<model> (or <experiment>), shared: its
run directories are told apart by their configuration's hash.
Checked before the first trial (and by dry_run=true): every trial kind's configuration, the
selection's and the finals' (with their trainer.evals_per_epoch), as train.py's first check would;
evaluations per epoch against the steps of an epoch where the training split's size is known
without reading the data (Fashion-MNIST's file header, an ImageFolder tree that exists; data=synthetic,
one random batch replayed, has no training split to hold out from and is refused);
out and runs can be created and written (out not a file).
A cosine's schedule.min_lr (and a warm-up's schedule.warmup_lr) must not exceed the grid's lowest lr;
an extension that would go below it is not made, and that edge is flagged in the report. A run
shorter than its recipe (trainer.epochs=1 of a 90-epoch step schedule) is the recipe's schedule cut
at trainer.epochs: accepted, with a note saying which part is never reached.
Where the trials run: launcher=local (default: ``workers`` spawned processes on this machine, each
with cpus/workers torch threads) or launcher=slurm (each stage's trials as one submitit job array,
one task per GPU; the comparison waits for the stage, then reads each trial's run.json; submitit's
files go to <runs>/submitit/). SLURM keys, defaulting to the environment variables of
configs/hydra/launcher/slurm.yaml: partition= (SLURM_PARTITION)  account= (SLURM_ACCOUNT)
nodes=N (ADAREM_NODES, 1)  gpus_per_node=N (ADAREM_GPUS_PER_NODE, 8)  cpus_per_task=N
(ADAREM_CPUS_PER_TASK, 10)  timeout_min=N (ADAREM_TIMEOUT_MIN, 4320)  mem_gb=N (ADAREM_MEM_GB,
unset)  array_parallelism=N (64). Preempted or timed-out trials are requeued by submitit and
resume from their checkpoints.
Defaults given to every trial unless overridden: trainer.bn_recalibrate=8 (BN statistics recomputed
before each evaluation; 2 on the default digits data), trainer.oscillation_every=10, logging.wandb=disabled.
Default optimizers: the six that adarem/results/claims.yaml compares (sgd, sgd_plain, adam, adamw, adarem,
adarem_m); the lambda ablations adarem_horizon and adarem_nodecay are added with optimizers=...

Outputs: <out>/tables.md (+ CSV/LaTeX/plots, see make_tables.py), <out>/selection.csv (one row per
trial and seed: optimizer, lr, weight_decay, seed, stage, status, score, chosen, holdout_loss,
run_dir, commit, dirty); <runs>/comparisons/<time>.json (the command, options, chosen configurations
and final runs: make_tables on the runs folder tabulates each optimizer from the newest comparison
that ran it), written only once the report is. The report reads exactly this invocation's finals
and states the commits the selection trials and the finals were trained at.
Run directories end in the configuration's hash (adarem/run/identity.py): launched again
with the same arguments, a comparison skips its finished trials and resumes the others, and any
other setting never reuses them. A stage in which nothing finished stops with exit code 2.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import shlex
import sys
from pathlib import Path

from adarem.config import ConfigError
from adarem.protocol.dispatch import HOME, LocalDispatcher, SlurmDispatcher, compose, slurm_parameters
from adarem.protocol.report import (TRAINED_WITH, code_section, edge_summary, provenance, runner_up, seed_choices,
                                    selection_table)
from adarem.protocol.search import SELECT_SEED0, Search, lowest_lr, lr_factors, lr_floor, score, weight_decays

USAGE = __doc__
DEFAULTS = {
    # the optimizers adarem/results/claims.yaml compares: sgd_plain (no momentum) is plain AdaRem's
    # like-for-like baseline, sgd (momentum) adarem_m's. The other two readings of lambda
    # (adarem_horizon, adarem_nodecay) are ablations, not claims: add them with optimizers=...
    "optimizers": "sgd,sgd_plain,adam,adamw,adarem,adarem_m",
    "seeds": "5",
    "select_seeds": "2",
    "search": "lr",
    "lr_span": "1",
    "lr_step": "0.5",
    "lr_grid": "",
    "max_extend": "3",
    "workers": "2",
    "out": "",
    "runs": "",
    "evals_per_epoch": "4",
    "launcher": "local",
    "dry_run": "false",
}
# launcher=slurm: key -> (environment variable, default), as configs/hydra/launcher/slurm.yaml
SLURM_KEYS = {
    "partition": ("SLURM_PARTITION", ""),
    "account": ("SLURM_ACCOUNT", ""),
    "nodes": ("ADAREM_NODES", "1"),
    "gpus_per_node": ("ADAREM_GPUS_PER_NODE", "8"),
    "cpus_per_task": ("ADAREM_CPUS_PER_TASK", "10"),
    "timeout_min": ("ADAREM_TIMEOUT_MIN", "4320"),
    "mem_gb": ("ADAREM_MEM_GB", ""),
    "array_parallelism": ("ADAREM_ARRAY_PARALLELISM", "64"),
}
# digits: 1,438 training images, so the holdout is a quarter of them (360 images, 0.28 points per
# image); the selection runs train on the other 1,078, the finals on all 1,438.
# A loss line every 5 of the 66 steps: "train loss at x % of the steps" is read from those lines.
# BN statistics from 2 training batches (256 images x 256 positions per channel) before each
# evaluation: 8 batches would re-forward the whole selection split every time (measured: a trial's
# CPU time 7.2 s -> 5.2 s). channels_last: 7.2 s -> 5.1 s on one thread; both together 3.8 s.
DIGITS_DEFAULTS = ["data=digits", "trainer.epochs=6", "data.holdout_fraction=0.25", "trainer.log_every=5",
                   "trainer.channels_last=true", "trainer.bn_recalibrate=2"]
# given to every trial unless overridden. BN statistics recomputed before every evaluation (8
# training batches): evaluated with the lagging running averages, an early curve measures the
# averages rather than the weights
TRIAL_DEFAULTS = (("logging.wandb", "disabled"), ("logging.progress", "none"), ("trainer.oscillation_every", "10"),
                  ("trainer.bn_recalibrate", "8"))


_HELD: list[int] = []  # this compare's lock on its setting in the runs folder (release_runs_folder)


def setting_key(probe) -> str:
    """10 hex digits naming a comparison's setting: the run identity (adarem/run/identity.py: what
    names a trial's directory, so one spelling per configuration, whatever the order or form of the
    overrides, and nothing of logging or loader workers) of its trials' shared configuration, less
    what differs between its trials (the optimizer and its settings, the seed, the split evaluated,
    the evaluations per epoch that compare adds to the finals)."""
    import hashlib
    import json

    from adarem.run.identity import flatten, identity_items, resolved_identity

    varies = ("optimizer.", "seed", "data.eval_on", "trainer.evals_per_epoch")
    items = {k: v for k, v in identity_items(flatten(resolved_identity(probe))).items()
             if not k.startswith(varies)}
    return hashlib.sha1(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:10]


def hold_runs_folder(runs_root: Path, key: str) -> None:
    """An exclusive flock on ``<runs>/.compare-<key>.lock`` (``setting_key``) while this compare runs
    (the kernel drops it on any exit), or exit 2 naming its holder: two comparisons of one setting in
    one runs folder (the same command twice, spelled alike or not, or other optimizers of it; the
    latter are refused even where their optimizers do not overlap) would train and lock each other's
    trials, and the refused one's queued trials stopped the first. Other settings (slurm/
    sweep_paper.sh's experiments, in parallel into one runs=) share no trial and each take their own
    lock. Where the folder's file system has no locks (Lustre mounted noflock, NFS without lockd), a
    note says that a second compare is not detected, and it goes on."""
    from adarem.run.lockfile import lock_or_holder

    path = runs_root / f".compare-{key}.lock"
    try:
        runs_root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        fail(f"cannot create runs={runs_root} or its lock file {path} ({exc.strerror}); choose a writable runs=")
    try:
        holder = lock_or_holder(fd)
    except OSError as exc:
        os.close(fd)
        print(f"note: runs={runs_root} does not support file locks ({exc.strerror}): a second compare.py of this "
              f"setting on it would not be detected; launch one at a time", file=sys.stderr, flush=True)
        return
    if holder is not None:
        fail(f"another compare.py of this setting is running on runs={runs_root} ({holder}); wait for it to end, "
             f"or give this comparison its own runs=: two would train and lock each other's trials")
    _HELD.append(fd)


def release_runs_folder() -> None:
    """Drop this process's compare locks (compare() called again in one process, a notebook)."""
    while _HELD:
        os.close(_HELD.pop())


def fail(message: str) -> None:
    """Bad input or an empty stage: one line, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    """(this script's keys, the train.py overrides); one ``error:`` line and exit 2 on bad input."""
    own, passthrough = dict(DEFAULTS), []
    own.update({k: os.environ.get(env, default) for k, (env, default) in SLURM_KEYS.items()})
    own_given: dict[str, list[str]] = {}  # this script's keys as given, in order
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and (key in DEFAULTS or key in SLURM_KEYS):
            own[key] = value
            own_given.setdefault(key, []).append(arg)
        elif arg in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        elif arg.startswith("-"):
            fail(f"unknown option {arg!r}; compare.py takes key=value arguments (see --help)")
        else:
            passthrough.append(arg)
    try:
        for key in ("seeds", "select_seeds", "workers", "max_extend", "evals_per_epoch"):
            own[key] = int(own[key])
        own["lr_span"], own["lr_step"] = float(own["lr_span"]), float(own["lr_step"])
        own["lr_grid"] = [float(x) for x in own["lr_grid"].split(",") if x]
    except ValueError as exc:
        fail(f"bad compare.py argument ({exc}); seeds, select_seeds, workers and max_extend are integers, "
             f"lr_span/lr_step numbers, lr_grid comma-separated numbers")
    if own["dry_run"] not in ("true", "false"):
        fail(f"dry_run={own['dry_run']!r} must be true or false")
    own["dry_run"] = own["dry_run"] == "true"
    names = own["optimizers"]
    own["optimizers"] = [o for o in names.split(",") if o]
    for key, least in (("seeds", 1), ("select_seeds", 1), ("workers", 1), ("evals_per_epoch", 1), ("max_extend", 0)):
        if own[key] < least:
            fail(f"{key}={own[key]} must be an integer >= {least}")
    if not own["optimizers"]:
        fail(f"optimizers={names} names no optimizer; give a comma-separated list, e.g. optimizers=sgd,adamw,adarem")
    repeated = sorted({o for o in own["optimizers"] if own["optimizers"].count(o) > 1})
    if repeated:  # one search and one set of finals per name: the repeat was dropped without a word
        fail(f"optimizers={names} names {', '.join(repeated)} more than once; give each optimizer once")
    if own["search"] not in ("lr", "lr_wd"):
        fail(f"search={own['search']!r} must be lr or lr_wd")
    bad = [m for m in own["lr_grid"] if not (0 < m < math.inf)]
    if bad:
        fail(f"lr_grid={','.join(map(str, own['lr_grid']))}: every factor must be a finite number > 0 (bad: {bad})")
    repeated = sorted({m for m in own["lr_grid"] if own["lr_grid"].count(m) > 1})
    if repeated:  # two trials of one lr would share one run directory, and each would find the other's lock
        fail(f"lr_grid={','.join(f'{m:g}' for m in own['lr_grid'])} repeats a factor "
             f"({','.join(f'{m:g}' for m in repeated)}); give each factor once")
    if not own["lr_grid"] and not (0 < own["lr_step"] < math.inf and 0 <= own["lr_span"] < math.inf):
        fail(f"lr_span={own['lr_span']} must be a finite number >= 0 and lr_step={own['lr_step']} a finite number > 0")
    steps = own["lr_span"] / own["lr_step"] if not own["lr_grid"] and own["lr_step"] > 0 else 0
    if not own["lr_grid"] and (abs(steps - round(steps)) > 1e-6 or (own["lr_span"] > 0 and round(steps) == 0)):
        # the grid is whole steps of lr_step: any other span would be rounded to one silently
        fail(f"lr_span={own['lr_span']:g} is not a whole number of lr_step={own['lr_step']:g} steps "
             f"({steps:.3g}); give a multiple of lr_step, or lr_span=0 to train the default lr only")
    if own["seeds"] > SELECT_SEED0:  # the final seeds 0.. and the selection seeds 1000.. are disjoint
        fail(f"seeds={own['seeds']}: the final seeds 0..{own['seeds'] - 1} would overlap the selection seeds "
             f"{SELECT_SEED0}..; at most {SELECT_SEED0} final seeds")
    given = [a for a in passthrough if a.split("=", 1)[0].lstrip("+~") == "seed"]
    if given:  # every trial sets its own seed: a seed= would be overridden silently
        fail(f"{given[0]} is set by the protocol for every trial (selection seeds {SELECT_SEED0}.., final seeds "
             f"0..); choose how many with select_seeds= and seeds=")
    # the other keys every trial sets after the user's overrides (trial_overrides): given, they were
    # ignored without a word (optimizer=adam still compared the six default optimizers)
    protocol_keys = {"optimizer": "choose the optimizers with optimizers=a,b,c",
                     "data.eval_on": "the selection trials are scored on the holdout and the finals on the val/test "
                                     "split, always",
                     "run_dir": "each trial's directory is <runs>/<stage>/<optimizer>/...: choose the folder with runs="}
    for arg in passthrough:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in protocol_keys:
            fail(f"{arg} is set by the protocol for every trial and would be ignored; {protocol_keys[key]}")
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            # compare.py composes each trial's configuration itself and sets its run_dir: Hydra's own
            # settings (hydra.run.dir, hydra.sweep.dir, hydra.job.chdir, hydra/launcher=...) were
            # accepted and had no effect at all, while the user believed them applied
            where = ("choose the trials' folder with runs= and the report's with out=" if "dir" in key or "chdir" in key
                     else "choose where the trials run with launcher=local|slurm" if "launcher" in key
                     else "drop it")
            fail(f"{arg} is a setting of Hydra's, which compare.py does not use (each trial's directory is "
                 f"<runs>/<stage>/<optimizer>/..., set by the protocol) and would be ignored; {where}")
        if key == "resume" and "=" in arg and arg.split("=", 1)[1] not in ("auto", "never"):
            fail(f"{arg} would start every trial of every optimizer from that one checkpoint; compare.py resumes each "
                 f"trial from its own run directory (resume=auto): drop it")
    if own["lr_span"] > 6 or (own["lr_step"] > 0 and own["lr_span"] / own["lr_step"] > 100):
        fail(f"lr_span={own['lr_span']} (decades each side) must be <= 6, with at most 100 steps of lr_step="
             f"{own['lr_step']} each side")
    if own["launcher"] not in ("local", "slurm"):
        fail(f"launcher={own['launcher']!r} must be local or slurm")
    # keys of the other launcher were ignored without a word: partition=gpu without launcher=slurm ran
    # every trial on this machine
    unused = [args[-1] for key, args in own_given.items() if key in SLURM_KEYS] if own["launcher"] == "local" else \
        own_given.get("workers", [])[-1:]
    if unused:
        fail(f"{unused[0]} is a key of launcher={'slurm' if own['launcher'] == 'local' else 'local'} and would be "
             f"ignored with launcher={own['launcher']}; "
             + ("add launcher=slurm to run the trials on SLURM, or drop it" if own["launcher"] == "local" else
                "each trial is a SLURM job (array_parallelism= caps how many run at once): drop it"))
    if own["lr_grid"]:  # the factors are the grid, and it is never extended
        ignored = [args[-1] for key, args in own_given.items() if key in ("lr_span", "lr_step")] + \
            own_given.get("max_extend", [])[-1:] * (own["max_extend"] > 0)
        if ignored:
            fail(f"{ignored[0]} would be ignored with lr_grid= (its factors are the whole grid, never extended); give "
                 f"lr_grid= or lr_span=/lr_step=/max_extend=, not both")
    if own_given.get("evals_per_epoch") and any(a.split("=", 1)[0].lstrip("+") == "trainer.evals_per_epoch"
                                            for a in passthrough):
        fail(f"{own_given['evals_per_epoch'][-1]} would be ignored: trainer.evals_per_epoch= is given too, and sets the "
             f"evaluations of every trial, the selection's and the finals'; give one of them (evals_per_epoch= sets "
             f"the finals' only)")
    for key in SLURM_KEYS if own["launcher"] == "slurm" else ():
        value = own[key]
        if key in ("partition", "account") or (key == "mem_gb" and value == ""):
            continue
        least = 0 if key == "gpus_per_node" else 1
        try:
            ok = float(value) > 0 if key == "mem_gb" else int(value) >= least
        except ValueError:
            ok = False
        if not ok:
            fail(f"{key}={value!r} (from {key}= or ${SLURM_KEYS[key][0]}) must be "
                 f"{'a number > 0' if key == 'mem_gb' else f'an integer >= {least}'}")
    # a cosine's schedule.min_lr and a warm-up's schedule.warmup_lr are absolute values, the same for every
    # trial, and train.py refuses a run whose lr is below them: refused here, before any training, if the
    # grid holds such an lr, rather than as failed trials that the selection would score as worst.
    # Extensions stop above them instead (Search.extend), and the report flags that edge.
    try:
        cfg = compose(trial_base(passthrough))
    except Exception:  # noqa: BLE001 - a bad override: compare() reports it in one line
        return own, passthrough
    if cfg.data.name == "synthetic":  # its "holdout" would be its val batch: nothing to select an lr on
        fail("data=synthetic has no training split to hold out from (one random batch replayed, a throughput "
             "stand-in): the lr search needs real data; use data=digits, fashion_mnist, folder or imagenet")
    floor, key = lr_floor(cfg.schedule)
    for opt in own["optimizers"] if floor > 0 else ():
        try:
            lr0 = float(compose([*trial_base(passthrough), f"optimizer={opt}"]).optimizer.lr)
        except Exception:  # noqa: BLE001 - reported by compare() with the optimizer's name
            continue
        if lowest_lr(lr0, own) < floor:
            how = f"lr_grid={','.join(f'{m:g}' for m in own['lr_grid'])}" if own["lr_grid"] else \
                f"lr_span={own['lr_span']:g}, lr_step={own['lr_step']:g}"
            fail(f"{key} is above the lowest lr of the grid for {opt}, {lowest_lr(lr0, own):.6g} ({how}): that trial "
                 f"would be refused; lower {key.split('=')[0]} or narrow the grid (lr_span, lr_grid)")
    from adarem.schedule import truncation  # imports torch and timm (~4 s): not before the arguments are checked

    note = truncation(cfg.schedule, int(cfg.trainer.epochs))
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    return own, passthrough


def check_values(overrides: list[str]):
    """train()'s first check (adarem.config.validate: unknown keys, ranges) on a configuration,
    composed as train.py's @hydra.main composes it (${hydra:...} values resolve). Returns it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from adarem.cli import check_config
    from adarem.protocol.dispatch import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    check_config(cfg)
    return cfg


def trial_base(passthrough: list[str]) -> list[str]:
    """The overrides every trial starts with: the user's, after the digits defaults when no data or
    experiment was chosen, and TRIAL_DEFAULTS unless the user set them."""
    base = list(passthrough)
    if not any(a.startswith(("data=", "experiment=")) for a in base):
        base = [*DIGITS_DEFAULTS, *base]  # the digits defaults stay under other overrides
    for key, value in TRIAL_DEFAULTS:  # ++key= too: the default, given after it, overrode it silently
        if not any(a.lstrip("+").startswith(key + "=") for a in base):
            base.append(f"{key}={value}")
    return base


@functools.lru_cache(maxsize=None)
def preset_reads(opt: str) -> frozenset | None:
    """The optimizer-specific settings (adarem.config.OPTIMIZER_SPECIFIC) the optimizer of preset
    ``opt`` reads, from the preset as composed (a preset that inherits another's ``name`` through its
    defaults list, a search path of its own): AdaRem with a decay_horizon > 0 does not read decay.
    None where the preset does not compose (composing it with the trials then says why)."""
    from adarem.config import optimizer_reads

    try:
        ocfg = compose([f"optimizer={opt}"]).optimizer
    except Exception:  # noqa: BLE001 - said, in one line, where the trials are composed
        return None
    return frozenset(optimizer_reads(str(ocfg.name), float(ocfg.decay_horizon)))


def _unread_by(opt: str, arg: str) -> bool:
    """Whether ``arg`` (an override) sets an optimizer setting that ``opt``'s optimizer does not read
    (``optimizer.betas.0=`` is a setting of betas)."""
    from adarem.config import OPTIMIZER_SPECIFIC

    key = arg.lstrip("+").split("=", 1)[0]
    if not key.startswith("optimizer."):
        return False
    setting = key.split(".")[1]
    reads = preset_reads(opt)
    return setting in OPTIMIZER_SPECIFIC and reads is not None and setting not in reads


def for_optimizer(base: list[str], opt: str) -> list[str]:
    """The trials' base overrides for one optimizer: an optimizer setting passed to compare applies to
    the optimizers that read it (optimizer.eps=1e-6 to Adam, AdamW and AdaRem, not to SGD, which
    train.py would refuse it for); the rest unchanged, so that a trial's text, and its run
    directory, are what they were."""
    return [a for a in base if not _unread_by(opt, a)]


def unread_notes(passthrough: list[str], optimizers: list[str]) -> list[str]:
    """One note per optimizer setting given to compare that some of the optimizers do not read."""
    notes = []
    for arg in passthrough:
        skip = [o for o in optimizers if _unread_by(o, arg)]
        if skip and len(skip) == len(optimizers):  # it changes nothing, yet would name the report folder
            fail(f"{arg} is read by none of optimizers={','.join(optimizers)}; drop it, or add an optimizer that "
                 f"reads it")
        if skip:
            takes = [o for o in optimizers if o not in skip]
            notes.append(f"{arg} applies to {', '.join(takes)}; {', '.join(skip)} do{'es' if len(skip) == 1 else ''} "
                         f"not read it")
    return notes


def argument_notes(passthrough: list[str]) -> list[str]:
    """What a train.py override changes about the protocol, beyond its own value: data= replaces the
    main job's digits defaults (DIGITS_DEFAULTS), optimizer.lr= / optimizer.weight_decay= the default
    of every optimizer, which its grid is centred on."""
    notes = []
    if any(a.startswith("data=") for a in passthrough) and not any(a.startswith("experiment=") for a in passthrough):
        notes.append(f"{next(a for a in passthrough if a.startswith('data='))} replaces the main job's defaults "
                     f"({' '.join(DIGITS_DEFAULTS)}): its runs are another configuration than the main job's")
    for key in ("optimizer.lr", "optimizer.weight_decay"):
        given = [a for a in passthrough if a.lstrip("+").startswith(key + "=")]
        if given:
            notes.append(f"{given[0]} replaces every optimizer's default {key.split('.')[1]} "
                         f"(configs/optimizer/), so each grid is centred on it")
    return notes


# overrides that do not change what the final runs train: where output goes and how often to log
# (adarem.run.identity.NOT_IDENTITY), and the selection's holdout, a part of the protocol as select_seeds is
NOT_IN_OUT_NAME = ("data.holdout_fraction", "data.eval_on")


def out_suffix(passthrough: list[str], name: str, main_name: str, named_by_experiment: bool) -> list[str]:
    """The train.py overrides that make this comparison's finals another configuration than the one
    its report folder is named after (results/<name>): the main job's (digits defaults) or an
    experiment's. data= and model= are in a <data>_<model> name already, unless that name is the main
    job's (data=digits drops the main job's defaults: another configuration under the same name)."""
    from adarem.run.identity import is_identity_key

    changed = []
    for arg in passthrough:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key == "experiment" or not is_identity_key(key) or key in NOT_IN_OUT_NAME:
            continue
        if key in ("data", "model") and not named_by_experiment and name != main_name:
            continue
        changed.append(arg)
    return changed


def default_out(name: str, changed: list[str]) -> Path:
    """results/<name>, or results/<name>-<the overrides in changed>, in sorted order (one folder
    whatever order they were given in); characters other than letters, digits and ._=+,- as _, and
    where that lost anything (data.root=/d/my_data/x and /d/my/data/x) or the list is long, a hash
    of the exact overrides makes the name unique."""
    import hashlib
    import re

    if not changed:
        return HOME / "results" / name
    changed = sorted(changed)
    clean = [re.sub(r"[^A-Za-z0-9._=+,-]", "_", a) for a in changed]
    suffix = "-".join(clean)
    digest = hashlib.sha1("\0".join(changed).encode()).hexdigest()[:10]
    if len(suffix) > 80:
        suffix = suffix[:60].rstrip("-") + "-" + digest
    elif clean != changed:
        suffix += "-" + digest
    return HOME / "results" / f"{name}-{suffix}"


def _override_value(override: str):
    """The value Hydra's override grammar reads from ``key=value`` (a list for a sweep), or the
    exception it raises."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
    except Exception as exc:  # noqa: BLE001 - hydra's OverrideParseException, several lines
        return exc
    return ["sweep"] if parsed.is_sweep_override() else parsed.value()


def run_dir_override(prefix: Path) -> str:
    """A trial's ``run_dir=<prefix>_${run_id:}`` override. Written plain where Hydra's override
    grammar reads it back as written (every path of earlier versions: their trials keep their
    override text), else quoted: the grammar refuses non-ASCII letters and ( ) [ ] { } # & ! and
    more unquoted, and reads a comma as a list of values, so a checkout or runs= folder under
    /home/josé or a folder with a comma could not hold trials. ${run_id:} is resolved either way."""
    text = f"{prefix}_${{run_id:}}"
    plain = f"run_dir={text}"
    return plain if _override_value(plain) == text else f"run_dir='{text}'"


def run_dir_problem(runs_root: Path) -> str | None:
    """Why a trial's ``run_dir=`` override (run_dir_override) would not name a folder under
    ``runs_root`` (None if it does): a quote or backslash, which even the quoted form would read
    otherwise, and ${...}, which the configuration would resolve as an interpolation."""
    text = str(runs_root)
    if "${" in text:
        return "holds '${', which every trial's configuration would resolve as an interpolation"
    if "'" in text or "\\" in text:
        return "holds a quote or a backslash, which train.py's overrides read as an escape"
    prefix = runs_root / "select" / "trial"
    got = _override_value(run_dir_override(prefix))
    if got != f"{prefix}_${{run_id:}}":
        read = str(got).strip().splitlines()[0] if isinstance(got, Exception) else repr(got)
        return f"cannot be named by a train.py override ({read})"
    return None


def _writable(folder: Path) -> bool:
    """Whether a folder can be made in ``folder``: os.access, then an empty temporary folder made and
    removed at once (as root os.access passes everything but a read-only file system)."""
    import tempfile

    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".adarem-writable-", dir=folder))
    except OSError:
        return False
    return True


def folder_problem(path: Path, staged: bool = False) -> str | None:
    """Why ``path`` cannot be created or written as a folder (None if it can), found before any trial
    and leaving nothing behind. ``staged``: the report is written in a hidden sibling first
    (adarem.fsync.staging_folder), so the folder above an existing ``path`` must be writable too."""
    path = Path(os.path.abspath(path))
    if os.path.lexists(path) and not path.is_dir():
        return f"is {'a file' if path.exists() else 'a broken symbolic link'}, not a folder"
    have = path
    while not os.path.lexists(have):
        have = have.parent
    if not have.is_dir():
        return f"cannot be created: {have} is {'a file' if have.exists() else 'a broken symbolic link'}, not a folder"
    if not _writable(have):
        return "is not writable" if have == path else f"cannot be created: {have} is not writable"
    if staged and have == path and not _writable(path.parent):
        return f"cannot be replaced: {path.parent} is not writable (the report is written beside {path.name}, then moved in)"
    return None


def train_images(data, limit: int) -> int | None:
    """The training split's image count before any holdout (the ``n`` of adarem.data.build_data),
    where it is known without reading the data: None where not; counting stops at ``limit`` (the
    count returned is then >= limit). Synthetic data is not counted (compare.py refuses it)."""
    import gzip
    import struct

    if data.name == "fashion_mnist":
        from adarem.data.fashion_mnist import FILES

        try:  # the IDX header: magic 0x00000803, then the number of images
            with gzip.open(Path(data.root) / FILES["train"][0], "rb") as f:
                zero, code, ndim, n = struct.unpack(">HBBI", f.read(8))
        except (OSError, EOFError, struct.error):
            return None  # a missing or broken file: the trial says what is wrong with it
        return n if (zero, code, ndim) == (0, 8, 3) else None
    if data.name not in ("digits", "imagenet", "folder"):
        return None
    from adarem.data.datasets import IMG_EXTENSIONS, find_classes

    if data.name == "digits" and not data.root:  # written by the first trial when missing: not counted
        from adarem.data.digits import DIGITS_VERSION, default_cache_dir

        root = default_cache_dir() / f"digits_{DIGITS_VERSION}"
    else:
        root = Path(data.root)
    split = root / "train"
    if not data.root and data.name != "digits" or not split.is_dir():
        return None
    try:
        classes, _ = find_classes(str(split))
    except OSError:
        return None
    n = 0  # what adarem.data.datasets.list_image_folder lists, counted
    for cls in classes:
        for _, _, files in os.walk(split / cls, followlinks=True):
            n += sum(f.lower().endswith(IMG_EXTENSIONS) for f in files)
            if n >= limit:
                return n
    return n


SMALL_HOLDOUT = 100  # images: below it, one image is more than a point of holdout error


def small_holdout(data) -> str | None:
    """A note when the selection trials' holdout (adarem.data.datasets.holdout_indices: max(1,
    round(holdout_fraction x n)) of the training split's n images) has fewer than SMALL_HOLDOUT
    images, where n is known cheaply; else None. Such a holdout scores an lr in steps of 100 / size
    points: lrs closer than that tie, and ties go to the holdout loss."""
    frac = float(data.holdout_fraction)
    n = train_images(data, math.ceil(SMALL_HOLDOUT / frac) + 1)
    if n is None:
        return None
    size = max(1, int(round(frac * n)))
    if size >= SMALL_HOLDOUT:
        return None
    return (f"the selection trials' holdout holds {size} image(s) (data.holdout_fraction={frac:g} of {n}): one image "
            f"is {100 / size:.3g} points of holdout error, so lrs whose errors differ by less tie (broken by the "
            f"holdout loss); raise data.holdout_fraction for a finer selection")


def epoch_steps(cfg) -> tuple[int, int] | None:
    """(steps of an epoch, training images) of a trial's configuration as adarem.data.build_data makes
    them (its training split // trainer.batch_size), where known without reading the data; None where
    not. Large data is counted only as far as the checks need (the images returned are then a lower
    bound, and the steps at least trainer.evals_per_epoch and 1)."""
    data, batch, k = cfg.data, int(cfg.trainer.batch_size), int(cfg.trainer.evals_per_epoch)
    holdout = data.eval_on == "holdout"
    frac = float(data.holdout_fraction) if holdout else 0.0
    # enough images for k steps after the holdout (adarem.data.datasets.holdout_indices holds out
    # max(1, round(frac * n)) <= frac * n + 1 of them)
    limit = math.ceil((max(k, 1) * batch + 1) / (1 - frac)) + 1
    if limit > 10_000_000:
        return None
    n = train_images(data, limit)
    if n is None:
        return None
    kept = n - max(1, int(round(frac * n))) if holdout else n
    return kept // batch, kept


def check_trial(overrides: list[str], stage: str, opt: str, evals_added: bool, grid_hint: str = ""):
    """What train.py checks before training (the configuration's values; the evaluations per epoch
    and batch size against the training split's size where known cheaply), on one trial's overrides:
    one ``error:`` line and exit 2. Returns the composed configuration."""
    where = "the selection trials" if stage == "select" else "the final runs"
    ours = stage == "final" and evals_added  # the finals' trainer.evals_per_epoch is compare.py's evals_per_epoch=
    try:
        cfg = check_values(overrides)
    except ConfigError as exc:
        given = next((a for a in overrides if a.startswith("trainer.evals_per_epoch=")), "")
        hint = (f", to which compare.py gives {given} (its key evals_per_epoch=, default 4): evals_per_epoch=1 "
                f"evaluates them at epoch ends only") if ours and "evals_per_epoch" in str(exc) else ""
        fail(f"{exc} (in {where} of optimizer={opt}{hint}){grid_hint}")
    known = epoch_steps(cfg)
    if known is None:
        return cfg
    steps, images = known
    batch, k = int(cfg.trainer.batch_size), int(cfg.trainer.evals_per_epoch)
    if images <= 0:  # an empty tree, or one image that the holdout takes
        n = train_images(cfg.data, 2)
        held = (f", all of which the holdout takes (data.holdout_fraction={float(cfg.data.holdout_fraction):g})"
                if n else "")
        fail(f"the training split of {where} holds {n} image(s){held}: data={cfg.data.name} "
             f"data.root={cfg.data.root!r}; point data.root at a split with training images")
    if images < batch:
        fail(f"trainer.batch_size={batch} exceeds the {images} training images of {where} "
             f"(data={cfg.data.name}); lower it")
    if k > steps:
        how = f"give compare.py evals_per_epoch={steps} or less" if ours else \
            f"use trainer.evals_per_epoch={steps} or less"
        fail(f"trainer.evals_per_epoch={k} exceeds the {steps} steps of an epoch of {where} ({images} training "
             f"images // trainer.batch_size={batch}); {how}, or a smaller trainer.batch_size")
    return cfg


def trial_overrides(base: list[str], evals: list[str], runs_root: Path, opt: str, lr: float, wd: float, seed: int,
                    stage: str) -> list[str]:
    """train.py's overrides for one trial. Their order and text, and so the run directory, must not
    change: a comparison relaunched by another version finds its finished trials by them."""
    eval_on = "val" if stage == "final" else "holdout"
    return [*base, *(evals if stage == "final" else []), f"optimizer={opt}", f"optimizer.lr={lr:.6g}",
            f"optimizer.weight_decay={wd:.6g}", f"seed={seed}", f"data.eval_on={eval_on}",
            # ${run_id:} is the hash of the whole configuration: another setting, another dir
            run_dir_override(runs_root / stage / opt / f"lr{lr:.6g}_wd{wd:.6g}_s{seed}")]


def load_own_runs(run_dirs: list[str]):
    """adarem.results.load_runs on exactly these run directories and nothing else of their folder:
    on the whole tree, load_runs keeps the first started of two runs it cannot tell apart (its
    config_id ignores keys the run-directory hash includes, trainer.oscillation_every say), which
    could be another comparison's. The RunSet names them as given; one that does not exist is a
    problem ("no run directory: excluded")."""
    from adarem.results import load_runs

    return load_runs(run_dirs=list(run_dirs), newest_comparison=False)


def compare_command(argv: list[str]) -> str:
    """The command as the report's provenance and comparison.json write it."""
    return "python scripts/compare.py " + " ".join(shlex.quote(a) for a in argv)


def report_conflict(out: Path, mine: dict) -> str | None:
    """What of the report in ``out`` this comparison's (``mine``: its setting_key, command and
    optimizers, as comparison.json records them) would lose, or None: no report, one that names no
    comparison (an older compare.py's, make_tables.py's), the same command's (a relaunch, also after
    a preset default changed its setting), or one of this setting whose optimizers this comparison
    compares too (a comparison extended by optimizers)."""
    from adarem.results.owner import read_owner

    theirs = read_owner(out)
    if theirs is None or theirs.get("setting_key") is None or theirs.get("command") == mine["command"]:
        return None
    command = str(theirs.get("command") or "unrecorded")
    if theirs["setting_key"] != mine["setting_key"]:
        return f"the report of another comparison ({command})"
    left = sorted(set(theirs.get("optimizers") or []) - set(mine["optimizers"]))
    if left:  # the report is made of this comparison's own finals: theirs would be gone from it
        return (f"the report of a comparison of this setting with optimizer(s) {', '.join(left)}, which this one does "
                f"not compare ({command})")
    return None


def refuse_other_report(out: Path, mine: dict, given: str, meanwhile: bool = False) -> None:
    """Exit 2 where this comparison's report would replace one it does not contain: replacing it
    lost that report without a word (slurm/sweep_paper.sh out=X: four experiments, one report
    left; optimizers=adam into the folder of optimizers=sgd: sgd's tables gone)."""
    conflict = report_conflict(out, mine)
    if conflict is None:
        return
    if meanwhile:
        fail(f"out={given} received {conflict} while this one ran; this report is not written, its runs are kept: "
             f"launch the same command with an out= of its own, which reuses every finished run and writes the report")
    fail(f"out={given} holds {conflict}; pass out= a folder of its own (or move that report away), or compare its "
         f"optimizers too")


def write_comparison_report(out: Path, rs, selection, command: str, preamble: str, record=None,
                            mine: dict | None = None, given: str = "", trials=None) -> str:
    """The comparison's report (the selection plot, the tables, claims and plots of its finals, and
    selection.csv) written aside in one staging folder and moved into ``out`` only once complete: a
    report that fails midway (a full disk, a plot that raises) leaves out as it was, never half this
    comparison's (adarem.results.report.staged_output). ``record()`` (the comparison's manifest for
    make_tables; returns its path) is called once every file is staged, before they are moved in: a
    manifest that cannot be written leaves out as it was too, and one written for a report whose move
    into out then fails is removed: a comparison that exits with an error is never recorded as the
    newest. Returns tables.md's text."""
    import json

    from adarem.results import CLAIMS_FILE
    from adarem.results.owner import REPORT_OWNER
    from adarem.results.plots import plot_selection
    from adarem.results.report import staged_output, write_report_into

    manifest = None
    check = (lambda folder: refuse_other_report(folder, mine, given or str(out), meanwhile=True)) if mine else None
    try:
        with staged_output(out, before_move=check) as staging:
            plot_selection(selection, staging / "plots" / "selection_lr.png")
            text = write_report_into(rs, staging, CLAIMS_FILE, command, preamble=preamble, trials=trials)
            selection.to_csv(staging / "selection.csv", index=False, float_format="%.6g")
            if mine:
                (staging / REPORT_OWNER).write_text(json.dumps(mine, indent=1) + "\n")
            if record is not None:
                manifest = record()
    except BaseException:
        if manifest is not None:
            Path(manifest).unlink(missing_ok=True)
        raise
    return text


def compare(argv: list[str]) -> int:
    """The whole comparison: search (with extension), finals, selection.csv and the report; the
    lock on its setting in the runs folder is released however it ends."""
    try:
        return _compare(argv)
    finally:
        release_runs_folder()


def _compare(argv: list[str]) -> int:
    own, passthrough = parse(argv)
    base = trial_base(passthrough)
    try:
        probe = compose(base)  # fails here, with one line, on a bad override
    except Exception as exc:  # noqa: BLE001 - Hydra's errors carry several lines: one, as train.py's
        from adarem.cli import composition_error

        fail(f"bad override in {' '.join(base)}: {composition_error(exc, base)}")
    if int(probe.trainer.max_steps):  # every trial would stop early, score worst, and the grid be blamed
        given = next((a for a in reversed(passthrough) if a.split("=", 1)[0].lstrip("+~") == "trainer.max_steps"),
                     f"trainer.max_steps={probe.trainer.max_steps} (from the configuration)")
        fail(f"{given}: compare.py needs trials that finish (a trial stopped at trainer.max_steps scores as the "
             f"worst); use trainer.epochs=N for a shorter study")
    name = probe.experiment_name or f"{probe.data.name}_{probe.model.name}"
    # ~ expanded: out=~/x made a folder named ~ in the current directory, and runs=~/x a traceback
    runs_root = Path(os.path.expanduser(own["runs"]) if own["runs"] else HOME / "runs" / "compare" / name)
    problem = run_dir_problem(runs_root)
    if problem:  # every trial's run_dir= override names a folder under it
        fail(f"runs={own['runs'] or runs_root} {problem}; choose a folder whose path has no ' \\ or ${{ (a symbolic "
             f"link to the folder will do)")
    main_probe = compose(trial_base([]))
    main_name = main_probe.experiment_name or f"{main_probe.data.name}_{main_probe.model.name}"
    changed = out_suffix(passthrough, name, main_name, bool(probe.experiment_name))
    out = Path(os.path.expanduser(own["out"]) if own["out"] else default_out(name, changed))
    # before any trial: a report folder that cannot be written used to fail after the whole comparison
    for key, folder, staged in (("out", out, True), ("runs", runs_root, False)):
        problem = folder_problem(folder, staged)
        if problem:
            fail(f"{key}={own[key] or folder} {problem}; pass {key}= a folder that can be created and written"
                 + (" (for the report: tables, selection.csv, plots)" if key == "out" else " (for the trials' runs)"))
    # whose report out= holds (comparison.json): this comparison's, written with its report
    mine = {"setting_key": setting_key(probe), "command": compare_command(argv), "optimizers": list(own["optimizers"])}
    refuse_other_report(out, mine, own["out"] or str(out))
    threads = max(1, (os.cpu_count() or 1) // own["workers"])
    factors = lr_factors(own)
    searches: dict[str, Search] = {}
    for opt in own["optimizers"]:
        try:
            composed = compose([*for_optimizer(base, opt), f"optimizer={opt}"])
        except Exception as exc:  # noqa: BLE001
            fail(f"optimizer {opt!r}: {str(exc).strip().splitlines()[0]}")
        try:  # the values every trial shares, before its grid is made (each kind of trial: check_trial)
            check_values([*for_optimizer(base, opt), f"optimizer={opt}"])
        except ConfigError as exc:
            fail(f"{exc} (with optimizer={opt})")
        ocfg = composed.optimizer
        searches[opt] = Search(opt, float(ocfg.lr), weight_decays(float(ocfg.weight_decay), own["search"]), factors,
                               own["lr_step"], lr_floor(composed.schedule))
    for opt, srch in searches.items():  # a trial's run directory and override write the lr as %.6g
        texts = [f"{lr:.6g}" for lr in srch.lrs]
        same = sorted({t for t in texts if texts.count(t) > 1}, key=float)
        if same:
            factors_of = [f"{f:.10g}" for f, t in zip(factors, texts) if t in same]
            factors_of = factors_of[:6] + ([f"... ({len(factors_of)} in all)"] if len(factors_of) > 6 else [])
            fail(f"the grid's factors {','.join(factors_of)} give {opt} lrs that are written the same ({', '.join(same)}: "
                 f"one run directory, one trial); use factors that differ in the first 6 significant digits of the lr")
    select_seeds = [SELECT_SEED0 + i for i in range(own["select_seeds"])]
    final_seeds = list(range(own["seeds"]))

    # the finals' validation curve: evaluations at evenly spaced steps, for steps-to-target. The
    # selection runs evaluate at epoch ends only: evaluating does not change training (tested).
    evals = [] if any(a.lstrip("+").startswith("trainer.evals_per_epoch=") for a in base) else \
        [f"trainer.evals_per_epoch={own['evals_per_epoch']}"]

    def overrides(opt, lr, wd, seed, stage):
        return trial_overrides(for_optimizer(base, opt), evals, runs_root, opt, lr, wd, seed, stage)

    # what every trial's train() checks first, on each kind of trial as it will be launched (the
    # finals add their own settings, trainer.evals_per_epoch): a bad value fails here, not in 80
    # trials or after the whole selection
    first_selection = None  # a selection trial's configuration, for the holdout note below
    for opt, srch in searches.items():
        lr, wd = srch.trials()[0]
        cfg = check_trial(overrides(opt, lr, wd, select_seeds[0], "select"), "select", opt, bool(evals))
        if first_selection is None:
            first_selection = cfg
        check_trial(overrides(opt, lr, wd, final_seeds[0], "final"), "final", opt, bool(evals))
        # and the grid's other end: its highest lr (and weight decay) was first checked by the trial
        # itself, refused after the lower lrs had trained, and that refusal stopped the comparison
        top_lr, top_wd = srch.trials()[-1]
        if (top_lr, top_wd) != (lr, wd):
            check_trial(overrides(opt, top_lr, top_wd, select_seeds[0], "select"), "select", opt, bool(evals),
                        grid_hint=f"; the grid's highest point is lr {top_lr:.6g}" +
                        (f", weight decay {top_wd:.6g} (search=lr_wd: 10x the default)" if top_wd != wd else "") +
                        ": narrow the lr grid (lr_span, lr_grid) or lower optimizer.lr" +
                        (" / optimizer.weight_decay" if top_wd != wd else ""))
    if own["launcher"] == "local" and first_selection.data.name in ("folder", "imagenet"):
        # the trials read the data here: a root that is no folder would fail every trial in turn
        # (dry_run said "accepted" without a word). A dry run, which may check a cluster's
        # configuration on a machine without its data, says so; a launch refuses. Under SLURM the
        # data may be on the nodes only, and train.py checks it there
        from adarem.data import DataError, imagefolder_root

        try:
            imagefolder_root(first_selection.data)
        except DataError as exc:
            if not own["dry_run"]:
                fail(str(exc))
            print(f"note: {exc}: launched here (launcher=local), every trial would fail", file=sys.stderr,
                  flush=True)
    small = small_holdout(first_selection.data)
    for note in argument_notes(passthrough) + unread_notes(passthrough, own["optimizers"]) + ([small] if small else []):  # after the checks: a refusal is its one line
        print(f"note: {note}", file=sys.stderr, flush=True)
    if not own["out"] and changed:
        print(f"note: the report goes to {out}, not results/{name}: overrides that set the final runs' "
              f"configuration ({' '.join(changed)}; named as given, even where one repeats the default) never "
              f"replace that folder's report; give out= to choose the folder", file=sys.stderr, flush=True)

    n_trials = len(factors) * len(next(iter(searches.values())).wds)
    where = (f"{own['workers']} workers x {threads} threads" if own["launcher"] == "local" else
             f"SLURM job arrays (partition {own['partition'] or 'default'}, {own['gpus_per_node']} GPU(s) per node)")
    print(f"compare: {len(searches)} optimizers x {n_trials} trials x {len(select_seeds)} selection seeds on a "
          f"holdout (search={own['search']}), then {len(final_seeds)} final seeds each; {where}; runs in {runs_root}; "
          f"report to {out}",
          flush=True)
    if own["dry_run"]:
        print(f"dry run: the arguments and every optimizer's configuration are accepted; nothing was launched",
              flush=True)
        return 0
    hold_runs_folder(runs_root, mine["setting_key"])
    if own["launcher"] == "local":
        dispatcher = LocalDispatcher(own["workers"], threads)
    else:
        dispatcher = SlurmDispatcher(runs_root / "submitit", slurm_parameters(own))
    rows, data_identity = [], None
    trained_with = {}  # run dir -> what it was trained with (code_section), not a selection.csv column
    with dispatcher:

        def run_trials(todo: list[tuple[str, float, float, int]]) -> None:
            for (opt, lr, wd, seed), res in dispatcher.run("select", [(t, overrides(*t, "select")) for t in todo]):
                if res.get("locked"):  # not evaluated: never score it as worst
                    fail(f"{res['run_dir']} is in use by another process (another compare on the same runs=?); "
                         f"wait for it to end, then launch again: finished trials are kept")
                if res.get("refused"):  # scored as worst, it would silently drop this lr from the search
                    fail(f"trial refused: {res['error']}")
                searches[opt].results[(lr, wd, seed)] = res
                print(f"  select {opt:15s} lr {lr:<9.4g} wd {wd:<8.3g} seed {seed} {res['status']:9s} "
                      f"holdout top-1 err {score(res):6.2f}%  ({res['seconds']:.0f} s)"
                      + (f"  {res['error']}" if "error" in res else ""), flush=True)

        run_trials([(opt, lr, wd, s) for opt, srch in searches.items() for lr, wd in srch.trials() for s in select_seeds])
        for _ in range(own["max_extend"] if not own["lr_grid"] else 0):
            todo = []
            for opt, srch in searches.items():
                lr, wd, err, _ = srch.best(select_seeds)
                side = srch.edge(lr)
                if side in ("low", "high") and math.isfinite(err):
                    new = srch.extend(side)  # None: below the schedule's min_lr/warmup_lr (flagged in the report)
                    todo += [(opt, new, w, s) for w in srch.wds for s in select_seeds] if new is not None else []
            if not todo:
                break
            print(f"  extending the grid of {sorted({t[0] for t in todo})} by one half-decade step", flush=True)
            run_trials(todo)
        chosen = {opt: srch.best(select_seeds) for opt, srch in searches.items()}
        empty = [opt for opt, (_, _, err, _) in chosen.items() if not math.isfinite(err)]
        failed = {opt: [r for r in searches[opt].results.values() if r.get("status") == "failed"] for opt in empty}
        broken = [opt for opt in empty if failed[opt] and len(failed[opt]) == len(searches[opt].results)]
        if broken:  # not the grid: every trial failed (a missing data root, a crash), none diverged or ran
            first = failed[broken[0]][0]
            fail(f"every selection trial of {', '.join(broken)} failed, so no lr can be chosen (the grid is not the "
                 f"cause); the first: {first['run_dir']}: {first.get('error') or 'see its run.json'}")
        if empty:
            counts = "; ".join(f"{opt}: " + ", ".join(f"{n} {st}" for st, n in sorted(collections.Counter(
                r.get("status", "unknown") for r in searches[opt].results.values()).items())) for opt in empty)
            fail(f"no learning rate of {', '.join(empty)} finished with a finite holdout error on every selection "
                 f"seed ({counts}); move or widen the grid (lr_span, lr_grid), and see the run directories under "
                 f"{runs_root / 'select'}")
        # seed by seed, every optimizer in turn: launched optimizer by optimizer, a change in the
        # machine's load over the hours of a comparison (other jobs, a slower stretch) lands on whole
        # optimizers and their seconds rank the launch order; interleaved, it spreads over them all
        finals = [((opt, s), overrides(opt, chosen[opt][0], chosen[opt][1], s, "final"))
                  for s in final_seeds for opt in searches]
        finished = set()
        for (opt, s), res in dispatcher.run("final", finals):
            if res.get("locked"):
                fail(f"{res['run_dir']} is in use by another process; wait for it to end, then launch again")
            if res.get("refused"):
                fail(f"trial refused: {res['error']}")
            if math.isfinite(score(res)):
                finished.add(opt)
                data_identity = data_identity or res.get("data_identity")
            lr, wd = chosen[opt][:2]
            rows.append(dict(optimizer=opt, lr=lr, weight_decay=wd, seed=s, stage="final", status=res["status"],
                             score=score(res), chosen=True, holdout_loss=math.nan, run_dir=res["run_dir"],
                             commit=res.get("commit"), dirty=res.get("dirty")))
            trained_with[res["run_dir"]] = {k: res.get(k) for k in TRAINED_WITH}
            print(f"  final  {opt:15s} lr {lr:<9.4g} wd {wd:<8.3g} seed {s} {res['status']:9s} "
                  f"test top-1 err {res.get('err', math.nan):6.2f}%  ({res['seconds']:.0f} s)"
                  + (f"  {res['error']}" if "error" in res else ""), flush=True)
        if not finished:
            fail(f"no final run finished; see the run directories under {runs_root / 'final'}")

    import pandas as pd

    from adarem.results.comparisons import write_manifest

    for opt, srch in searches.items():
        for (lr, wd, seed), res in sorted(srch.results.items()):
            rows.append(dict(optimizer=opt, lr=lr, weight_decay=wd, seed=seed, stage="select", status=res["status"],
                             score=score(res), chosen=(lr, wd) == chosen[opt][:2], holdout_loss=res.get("loss", math.nan),
                             run_dir=res["run_dir"], commit=res.get("commit"), dirty=res.get("dirty")))
            trained_with[res["run_dir"]] = {k: res.get(k) for k in TRAINED_WITH}
    # only this invocation's finals, read on their own: runs left in the tree by another invocation
    # (other epochs, an lr chosen before, a setting the run-directory hash tells apart but the
    # tables' de-duplication does not) must neither enter its verdicts nor displace its own runs.
    # Read before anything is written: a report that cannot be made leaves out/ and the manifests as
    # they were
    rs = load_own_runs([r["run_dir"] for r in rows if r["stage"] == "final"])
    if rs.runs.empty:
        why = "; ".join(f"{p['run_dir']}: {p['problem']}" for p in rs.problems[:2])
        fail(f"none of this comparison's final runs could be read back from {runs_root / 'final'}; see the run "
             f"directories there{f' ({why})' if why else ''}")
    for line in edge_summary(searches, chosen):
        print(f"note: {line}", flush=True)
    for opt, srch in searches.items():
        picks = seed_choices(srch, select_seeds)
        if picks.startswith("**"):  # the seeds disagree: say how narrowly the mean decided
            print(f"note: {opt}: the selection seeds alone choose differently ({picks.strip('*')}); runner-up "
                  f"(+ points of mean holdout error): {runner_up(srch, chosen[opt], select_seeds)}", flush=True)
    from adarem.run.record import git_info, versions

    code, code_warnings = code_section([{**r, **trained_with.get(r["run_dir"], {})} for r in rows],
                                       {**git_info(), "versions": versions()})
    for warning in code_warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    command = mine["command"]
    preamble = provenance(command, own, threads, data_identity, len(select_seeds), final_seeds,
                          None if evals else int(probe.trainer.evals_per_epoch)) + "\n" + code + \
        "\n" + selection_table(searches, chosen, select_seeds, factors) + \
        "\n![holdout error against lr](plots/selection_lr.png)\n"
    selection = pd.DataFrame(rows).sort_values(["stage", "optimizer", "lr", "weight_decay", "seed"],
                                               ascending=[False, True, True, True, True])
    # which finals are this comparison's, for make_tables on the runs folder later: written with the
    # report (after every file of it is staged, before they are moved in), so that a comparison whose
    # report failed never becomes the newest, and a report is never left without its record
    finals_chosen = {opt: {"lr": lr, "weight_decay": wd} for opt, (lr, wd, *_) in chosen.items()}
    try:
        text = write_comparison_report(out, rs, selection, command, preamble, record=lambda: write_manifest(
            runs_root, command, own, base, finals_chosen, [r["run_dir"] for r in rows if r["stage"] == "final"]),
            mine=mine, given=own["out"] or str(out),
            # the selection trials, read on their own as the finals are: the report shows the
            # oscillation claims at every lr both sides were searched at
            trials=load_own_runs([r["run_dir"] for r in rows if r["stage"] == "select"]))
    except OSError as exc:  # a full disk, a folder made unwritable meanwhile: the runs are kept
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        fail(f"cannot write the report into {out} or record the comparison in {runs_root / 'comparisons'} "
             f"({where}{exc.strerror or exc}); the comparison is not recorded and every run is kept: free space (or "
             f"make the folders writable) and launch the same command again, which reuses the finished runs and "
             f"writes the report")
    verdicts = [line for line in text.splitlines() if line.startswith("| ") and any(
        v in line for v in ("Supported", "Contradicted", "Inconclusive", "Not supported", "Insufficient data"))]
    print("\n".join(verdicts))
    print(f"\nwrote {out}/tables.md (tables, claims, plots) and {out}/selection.csv; runs in {runs_root}")
    return 0


def run() -> None:
    """The ``adarem-compare`` and ``scripts/compare.py`` command: main()'s exit code, after a shorter
    exit (adarem.cli.run_command)."""
    from adarem.cli import run_command

    run_command(main)


def main(argv: list[str] | None = None) -> int:
    """The compare command line (scripts/compare.py; a console script can point here): returns the
    exit code; bad input exits 2 with one ``error:`` line."""
    import signal
    import threading
    from concurrent.futures.process import BrokenProcessPool

    argv = sys.argv[1:] if argv is None else list(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # a SIGTERM (a time limit, scancel of the job running compare.py) ended the compare at once
        # and said nothing (helper-92): it now stops as Ctrl-C does, its trials as preempted runs
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return compare(argv)
    except BrokenProcessPool:
        fail("a worker process died (killed, or out of memory); launch the same command again: finished "
             "trials are kept and unfinished ones resume")
    except KeyboardInterrupt as exc:
        from adarem.protocol.dispatch import Terminated

        what = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        print(f"{what}; launch the same command again to resume: finished trials are kept, stopped ones resume "
              f"from their checkpoints", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _terminated(signum, frame):
    from adarem.protocol.dispatch import Terminated

    raise Terminated()
