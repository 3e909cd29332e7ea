"""Load run records (run.json + metrics.jsonl, as written by train.py) into pandas.

Nothing is dropped silently: every directory that is not a complete, unique run is listed in
``RunSet.problems`` with the reason (no run.json, still running or crashed, truncated lines,
duplicate of another run), and only complete runs (finished or diverged) enter ``runs``.

A setting is what the optimizers of one comparison share (everything but the hyperparameters the
optimizer presets set, the seed and the split evaluated on). Runs of one dataset x model in two settings (two comparisons
with other epochs, batch sizes, schedules or data roots) get distinct ``dataset`` labels, which
name what differs, so that no table, target or claim pairs runs across settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from adarem.fsync import is_staging_folder_name
from adarem.oscillation import path_window
from adarem.results.comparisons import newest_comparison_only
from adarem.run.identity import is_neutral
from adarem.run.record import (FINAL_STATUSES, METRICS, RESUME_INSENSITIVE, RUN_JSON, TOP5_MIN_CLASSES,
                               device_type, finished_record_problem, flatten)

IDENTITY_IGNORED = RESUME_INSENSITIVE + ("seed", "experiment_name", "recipe", "trainer.deterministic",
                                        "trainer.oscillation_every", "trainer.compile", "trainer.channels_last")


EVAL_COLUMNS = ["run_dir", "step", "epoch_frac", "wall_time_s", "val_top1_err", "val_loss"]
ITER_COLUMNS = ["run_dir", "step", "loss", "train_loss_window", "window_steps"]


@dataclass
class RunSet:
    """``runs``: one row per complete run. ``epochs``: the "epoch" lines. ``evals``: every
    evaluation (mid-epoch "eval" lines and evaluated epoch ends) with its step and training
    wall-clock, in step order. ``iters``: the per-step loss lines. ``oscillation``: the
    oscillation lines."""

    runs: pd.DataFrame
    epochs: pd.DataFrame
    oscillation: pd.DataFrame
    problems: list[dict] = field(default_factory=list)
    evals: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EVAL_COLUMNS))
    iters: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ITER_COLUMNS))

    def subset(self, run_dirs) -> "RunSet":
        """Only the runs (and problems) of these directories, compared as resolved paths."""
        keep = {str(Path(d).resolve()) for d in run_dirs}

        def only(df: pd.DataFrame) -> pd.DataFrame:
            if df.empty:
                return df
            return df[df.run_dir.map(lambda d: str(Path(d).resolve()) in keep)].reset_index(drop=True)

        return RunSet(only(self.runs), only(self.epochs), only(self.oscillation),
                      [p for p in self.problems if str(Path(p["run_dir"]).resolve()) in keep],
                      only(self.evals), only(self.iters))

    @property
    def problems_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.problems, columns=["run_dir", "problem"])


# What a comparison varies between its runs: the optimizer and the hyperparameters its presets
# (configs/optimizer/*.yaml) and the searches set, the seed, and the split evaluated on (the lr
# search's holdout runs and the final runs belong to one setting). Other optimizer keys (eps,
# nesterov, no_weight_decay_on_bias_and_norm, impl, ...) are the same for every optimizer of a
# comparison and part of its setting. Evaluations per epoch change no final number, only where a
# curve is sampled: the speed table and the curve claims say "evaluated differently" instead.
OPTIMIZER_OWN = tuple(f"optimizer.{k}" for k in ("name", "variant", "lr", "weight_decay", "momentum", "betas",
                                                 "beta", "decay", "decay_horizon"))
SETTING_IGNORED = IDENTITY_IGNORED + OPTIMIZER_OWN + ("data.eval_on", "trainer.evals_per_epoch")
MAX_LABEL_KEYS = 3  # differing keys named in a setting's label
SEARCHED = ("lr", "weight_decay")  # the optimizer keys a search chooses: columns of their own


@functools.lru_cache(maxsize=1)
def optimizer_presets() -> dict[str, dict]:
    """The optimizer presets (configs/optimizer/*.yaml, or their installed copy) by variant."""
    import yaml

    from adarem.cli import CONFIG_DIR

    presets = {}
    for f in sorted(Path(CONFIG_DIR, "optimizer").glob("*.yaml")):
        preset = yaml.safe_load(f.read_text()) or {}
        presets[preset.get("variant") or f.stem] = preset
    return presets


# The optimizer keys of OPTIMIZER_OWN each optimizer reads (adarem/optim/factory.py). Every preset
# sets each of them (tests/results/test_tables.py checks it), so a run's label compares with its preset
# only; a key the optimizer never reads (beta for SGD) changes nothing and is not compared.
READS = {"sgd": ("momentum",), "adam": ("betas",), "adamw": ("betas",),
         "adarem": ("beta", "decay", "decay_horizon", "momentum")}


def _reads(name, decay_horizon) -> set[str]:
    """The keys of READS the optimizer ``name`` reads; AdaRem with a horizon > 0 takes lambda from
    it and does not read ``decay``. Empty for an optimizer READS does not know."""
    reads = set(READS.get(str(name), ()))
    try:
        if name == "adarem" and float(decay_horizon or 0.0) > 0:
            reads.discard("decay")
    except (TypeError, ValueError):
        pass
    return reads


def _same(a, b) -> bool:
    """Equal as numbers (1 and 1.0, 1e-4 and 0.0001, a list and a tuple), else as JSON."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return json.dumps(a, default=str) == json.dumps(b, default=str)


def _spell(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_spell(x) for x in v) + "]"
    return format(v, ".10g") if isinstance(v, float) else str(v)


def optimizer_label(opt: dict) -> str:
    """A run's optimizer as the tables name it: its variant (the preset's name), followed by the
    preset's keys its optimizer reads that the run changed, ``sgd (momentum=0)``: SGD without
    momentum is not the SGD-momentum the claims compare with, however its preset was named on the
    command line. A key a record lacks (written before the key existed) is the preset's. Labels
    follow today's presets (configs/optimizer/): a preset retuned later renames older runs."""
    variant = opt.get("variant") or opt.get("name")
    preset = optimizer_presets().get(variant)
    if preset is None:
        return str(variant)
    name = opt.get("name", preset.get("name"))
    if not _same(name, preset.get("name")):
        return f"{variant} (name={name})"
    reads = _reads(name, opt.get("decay_horizon", preset.get("decay_horizon")))
    changed = [f"{k}={_spell(opt[k])}" for k in READS.get(str(name), ())
               if k in reads and k in opt and k in preset and not _same(opt[k], preset[k])]
    return f"{variant} ({'; '.join(changed)})" if changed else str(variant)


# The data identity's content keys (adarem/data/identity.py), recorded since ad3a920: run records
# written before lack them. Ids hash the other keys; runs of one data root that recorded different
# contents are told apart afterwards (_split_by_content), so an old record still pools with new
# ones of the same data, and runs on changed data never pool.
CONTENT_KEYS = ("train_images", "val_images", "train_sha1", "val_sha1")


def _base(data_identity: dict | None) -> dict | None:
    if not isinstance(data_identity, dict):
        return data_identity
    return {k: v for k, v in data_identity.items() if k not in CONTENT_KEYS}


def _content(data_identity: dict | None) -> str | None:
    """A digest of the content keys; None for a record without all of them (written before them)."""
    if not isinstance(data_identity, dict) or not all(k in data_identity for k in CONTENT_KEYS):
        return None
    return _digest({k: data_identity.get(k) for k in CONTENT_KEYS}, 10)


def _unread_keys(flat: dict) -> tuple[str, ...]:
    """The optimizer keys of OPTIMIZER_OWN the run's optimizer does not read (READS)."""
    name = flat.get("optimizer.name")
    if name not in READS:
        return ()
    own = {k.split(".", 1)[1] for k in OPTIMIZER_OWN} - {"name", "variant", *SEARCHED}
    return tuple(f"optimizer.{k}" for k in sorted(own - _reads(name, flat.get("optimizer.decay_horizon"))))


def _identity(config: dict, ignored: tuple[str, ...], data_identity: dict | None, bn_batch: int | None) -> dict:
    flat = flatten(config)
    # a key added to the schema later, at its neutral value, is left out (adarem/run/identity.py):
    # a record written before the key existed pools with one written after it; so is an optimizer key
    # the run's optimizer never reads (momentum for Adam): it changes nothing in training
    ignored = ignored + _unread_keys(flat)
    kept = {k: v for k, v in flat.items()
            if not any(k == p or k.startswith(p + ".") for p in ignored) and not is_neutral(k, v)}
    root = kept.get("data.root")
    if isinstance(root, str) and os.path.isabs(os.path.expanduser(root)):  # /x/t2/ and /x/t2 pool (a relative
        kept["data.root"] = os.path.normpath(os.path.expanduser(root))    # one, of old records, is left as is)
    if data_identity:
        kept["_data_identity"] = _base(data_identity)
    if bn_batch is not None:
        kept["bn_batch"] = bn_batch
    return kept


def replaced_images(run: dict, epochs: list[dict]) -> dict:
    """Training images replaced by others (data.on_corrupt=skip), all ranks: run.json's count, and
    whether it is exact. A record from before the count was kept has only its epoch lines' count
    (rank 0's, cumulative): a lower bound, as is a run resumed from such a checkpoint."""
    if isinstance(run.get("corrupt_skipped"), int):
        return {"corrupt_skipped": run["corrupt_skipped"], "corrupt_exact": run.get("corrupt_skipped_exact") is not False}
    old = max((r["corrupt_skipped"] for r in epochs if isinstance(r.get("corrupt_skipped"), int)), default=0)
    return {"corrupt_skipped": old, "corrupt_exact": old == 0}


def timing_platform(run: dict) -> str:
    """What a run's seconds and images/s were measured on: ranks x device (CPU: torch threads per
    rank). The host name is left out: two nodes of one cluster partition time alike. The CPU model,
    recorded since 2026-12-01, is a column of its own (``cpu_model``): a record without it is not
    another platform (tables.timing_mixed compares the models that were recorded)."""
    hw = run.get("hardware") if isinstance(run.get("hardware"), dict) else {}
    world = run.get("world_size") if isinstance(run.get("world_size"), int) else 1
    device = device_type(run) or "unrecorded"
    if device == "cuda":
        device = str(hw.get("gpu") or "cuda")
    elif device == "cpu" and hw.get("torch_threads"):
        device = f"cpu/{hw['torch_threads']} thread(s)"
    return f"{world} x {device}"


def numerics_config(run: dict) -> dict:
    """run.json's config with the arithmetic the run actually used: trainer.amp=auto replaced by
    what it chose (run.json's ``amp``; in older records, from the run's device: bf16 autocast on
    CUDA, none on the CPU, as engine.make_precision does), and ``tf32 matmuls`` where run.json says TF32 was on (every CUDA
    run). trainer.device is no identity key (a requeued job may land elsewhere), so without this
    a GPU bf16 run and a CPU fp32 run of one config pooled in one row and one claim. A record that
    does not name its device keeps its config as written."""
    cfg = run["config"]
    device = device_type(run)
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    used = run.get("amp") if run.get("amp") in ("bf16", "fp16", "none") else None  # run.json's, where recorded
    if device not in ("cpu", "cuda") and used is None:
        return cfg
    out = dict(cfg)
    if trainer.get("amp", "auto") == "auto":
        out["trainer"] = {**trainer, "amp": used or ("bf16" if device == "cuda" else "none")}
    if run.get("tf32") is True:
        out["tf32 matmuls"] = True
    return out


def split_bn_batch(run: dict) -> int | None:
    """The images per BatchNorm batch where they are not the global batch (several ranks without
    SyncBatchNorm: batch / world size), else None: runs that differ in it never pool. None also for
    a model without BatchNorm (run.json's bn_batch is null). Records written before bn_batch was
    recorded give it from trainer.batch_size and world_size."""
    if "bn_batch" in run and run["bn_batch"] is None:
        return None
    trainer = (run.get("config") or {}).get("trainer") or {}
    world, batch = run.get("world_size") or 1, trainer.get("batch_size")
    if world == 1 or trainer.get("sync_bn") or not isinstance(batch, int):
        return None
    return batch // world


def _digest(items: dict, n: int) -> str:
    return hashlib.sha1(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:n]


def config_id(config: dict, data_identity: dict | None = None, bn_batch: int | None = None) -> str:
    """A short hash of everything that makes a configuration different, except the seed; the
    data identity (root, split sizes, class names; see adarem.data.data_identity) is part of it,
    so runs of two datasets that share data.name never pool into one row, and so is the BatchNorm
    batch where it is not the global batch (``split_bn_batch``)."""
    return _digest(_identity(config, IDENTITY_IGNORED, data_identity, bn_batch), 10)


def setting_items(config: dict, data_identity: dict | None = None, bn_batch: int | None = None) -> dict:
    """What the optimizers of one comparison share: the configuration without the optimizer's own
    keys, the seed and data.eval_on (and what config_id ignores)."""
    return _identity(config, SETTING_IGNORED, data_identity, bn_batch)


def _split_free(setting: dict) -> dict:
    """A setting without the split its data identity names (SPLIT_KEYS)."""
    data = setting.get("_data_identity")
    if not isinstance(data, dict):
        return setting
    return {**setting, "_data_identity": {k: v for k, v in data.items() if k not in SPLIT_KEYS}}


def setting_labels(settings: dict[str, dict], configs: dict[str, dict]) -> dict[str, str]:
    """Per setting id, a label naming the keys whose values tell the settings apart
    (``trainer.batch_size=64; trainer.epochs=4``), with each setting's value as its runs' config
    spells it (``configs``: a flattened config per setting), with `` (setting <id>)`` added where
    that is not unique."""
    def value(items, k):
        return json.dumps(items.get(k, "unset"), sort_keys=True, default=str)

    keys = sorted({k for items in settings.values() for k in items})
    differing = [k for k in keys if len({value(items, k) for items in settings.values()}) > 1]
    shown = differing[:MAX_LABEL_KEYS]
    more = "; ..." if len(differing) > MAX_LABEL_KEYS else ""
    spell = lambda v: v if isinstance(v, str) else json.dumps(v, default=str)  # noqa: E731
    labels = {sid: "; ".join(f"{k}={spell(configs[sid].get(k, 'unset'))}" for k in shown) + more
              for sid in settings}
    if len(set(labels.values())) < len(labels) or not all(labels.values()):  # the keys shown do not tell
        # them apart (more differ than are shown, or only what the config does not hold: the data's
        # contents, the BatchNorm batch): the id added to what is shown
        labels = {sid: f"{label} (setting {sid})" if label else f"setting {sid}" for sid, label in labels.items()}
    return labels


def data_id(data_identity: dict | None) -> str:
    """A short hash of a run's data identity ("none" for a record without one)."""
    if not data_identity:
        return "none"
    return _digest(_base(data_identity), 6)


# The data identity's keys that name the split a run reads rather than the data: the lr search's
# holdout runs (data.eval_on=holdout: train/ less a holdout part, evaluated on that part) and the
# final runs of one data root differ in these only
SPLIT_KEYS = ("eval_on", "train_samples", "val_samples") + CONTENT_KEYS


def data_source(data_identity: dict | None) -> str:
    """A short hash of the data a run's splits are cut from: its data identity without SPLIT_KEYS
    (root, name, classes); "none" for a record without one."""
    if not data_identity:
        return "none"
    if not isinstance(data_identity, dict):
        return data_id(data_identity)
    return _digest({k: v for k, v in data_identity.items() if k not in SPLIT_KEYS}, 6)


def split_images(data_identity: dict | None) -> float:
    """The images a run's splits were cut from, as its data identity counts them (per epoch, so a
    dropped last batch is missing): train + holdout for an lr search run, the training split for a
    final run; NaN where unrecorded."""
    if not isinstance(data_identity, dict):
        return math.nan
    train, val = data_identity.get("train_samples"), data_identity.get("val_samples")
    if not _is_int(train) or (data_identity.get("eval_on") == "holdout" and not _is_int(val)):
        return math.nan
    return float(train + (val if data_identity.get("eval_on") == "holdout" else 0))


def data_labels(runs: pd.DataFrame) -> dict:
    """Per row of ``runs`` (one data.name): the hash its ``name@<hash>`` label would take. A run on
    the val/test split takes its data id; a holdout (lr search) run takes the data id of the
    val/test runs cut from the same data (``data_source``) where those have one, so that the
    search and the finals of one data root are one dataset, and its own where they have none or
    several. Only finals whose training split holds as many images as the search's training and
    holdout splits together (up to two dropped last batches, as the identity counts per epoch)
    qualify: a search run on the tree before it grew keeps its own label. Labels differ only between
    runs on different data: another root (or classes) of the same name, or the same root holding
    other images (a grown tree)."""
    holdout = runs.eval_on == "holdout"
    finals = runs[~holdout]
    out = {}
    for i in runs.index:
        did = runs.at[i, "data_id"]
        if not holdout[i]:
            out[i] = did
            continue
        batch = pd.to_numeric(runs.at[i, "batch_size"], errors="coerce")  # a numpy int in the frame
        slack = 2 * float(batch) if pd.notna(batch) else 0.0
        same = finals[(finals.data_source == runs.at[i, "data_source"])
                      & ((finals.split_images - runs.at[i, "split_images"]).abs() < max(slack, 1))]
        ids = same.data_id.unique()
        out[i] = ids[0] if len(ids) == 1 else did
    return out


def read_metrics_lines(path: Path, numbered: bool = False) -> tuple[list, list[str]]:
    """Parsed lines, and a description of each line that is not valid JSON (e.g. truncated).
    ``numbered``: each parsed line as (its line number in the file, the line)."""
    records, bad = [], []
    if not path.exists():
        return records, ["no metrics.jsonl"]
    with open(path, errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
                records.append((n, rec) if numbered else rec)
            except ValueError:
                bad.append(f"metrics.jsonl line {n} is not valid JSON (truncated write?)")
    return records, bad


def start_order(start_time: pd.Series) -> pd.Series:
    """run.json's start_time as instants, for ordering runs by when they started: records have
    microseconds, older ones whole seconds (text would order "…:05+00:00" and "…:05.2+00:00" right
    by chance only); one with none or unreadable orders last."""
    return pd.to_datetime(start_time, utc=True, errors="coerce", format="ISO8601")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else math.nan


def run_images_per_s(epochs: list[dict]) -> float:
    """A run's training throughput: all its images over all its training time, i.e. the epochs'
    rates weighted by their ``epoch_time_s``. A plain mean of the per-epoch rates would weigh a
    slow first epoch (worker start-up, compilation, cold caches) as little as any other and
    overstate the rate (9 % on two epochs at 408 and 733 images/s). Only the epochs that logged a
    finite rate count (an epoch line without one is no epoch at 0 images/s); where one of them
    lacks a positive ``epoch_time_s`` the weights are unknown and the plain mean is all there is."""
    rated = [r for r in epochs if _is_number(r.get("images_per_s")) and math.isfinite(r["images_per_s"])]
    times = [r.get("epoch_time_s") for r in rated]
    if rated and all(_is_number(t) and math.isfinite(t) and t > 0 for t in times):
        return sum(r["images_per_s"] * t for r, t in zip(rated, times)) / sum(times)
    return _mean([r["images_per_s"] for r in rated])


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shown(v) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# run.json config keys the tables compute with or print as numbers: a value of another type (a
# hand-edited "8") is a malformed record, excluded with its reason, never a traceback
CONFIG_TYPES = {"optimizer.lr": (_is_number, "a number"), "optimizer.weight_decay": (_is_number, "a number"),
                "trainer.epochs": (_is_int, "an integer"), "trainer.batch_size": (_is_int, "an integer"),
                "trainer.evals_per_epoch": (_is_int, "an integer"), "trainer.bn_recalibrate": (_is_int, "an integer"),
                "trainer.eval_every": (_is_int, "an integer"),
                "trainer.oscillation_every": (_is_int, "an integer"), "seed": (_is_int, "an integer")}
# per metrics.jsonl line type: the keys it must hold (step) and the keys that, where present and not
# null, must be numbers; the tables read them all
LINE_KEYS = {
    "epoch": (("step",), ("train_loss", "val_top1_err", "val_top5_err", "val_loss", "wall_time_s", "images_per_s",
                          "epoch")),
    "eval": (("step",), ("val_top1_err", "val_top5_err", "val_loss", "wall_time_s", "epoch_frac")),
    "iter": (("step", "loss"), ("train_loss_window", "train_loss_window_steps")),
    "oscillation": (("step", "flip_fraction"), ("path_efficiency", "path_window")),
}


def malformed_config(cfg: dict) -> str | None:
    """Why run.json's config cannot be tabulated (a key of CONFIG_TYPES of another type), or None."""
    flat = flatten(cfg)
    for key, (ok, what) in CONFIG_TYPES.items():
        if flat.get(key) is not None and not ok(flat[key]):
            return f"run.json: config {key} is {_shown(flat[key])}, not {what}: excluded"
    for section in ("trainer", "data", "optimizer", "model"):
        if section in cfg and not isinstance(cfg[section], dict):
            return f"run.json: config {section} is not an object: excluded"
    return None


def malformed_line(numbered: list[tuple[int, dict]]) -> str | None:
    """The first metrics.jsonl line of a type the tables read that lacks a key they need (an iter
    line without step) or holds a non-number where they compute with one, or None."""
    for n, r in numbered:
        required, numeric = LINE_KEYS.get(r.get("type"), ((), ()))
        for key in required:
            if not (_is_int(r.get(key)) if key == "step" else _is_number(r.get(key))):
                found = "missing" if key not in r else f"{_shown(r[key])}, not a number"
                return f"metrics.jsonl line {n} ({r['type']}): {key} {found}: excluded"
        for key in numeric:
            if r.get(key) is not None and not _is_number(r[key]):
                return f"metrics.jsonl line {n} ({r['type']}): {key} is {_shown(r[key])}, not a number: excluded"
    return None


def find_run_dirs(root: Path) -> list[Path]:
    """Directories below ``root`` holding a run record, through symlinked folders too (a runs
    folder moved to a bigger disk), each real folder once; not the copies inside a run's wandb
    folder (the root itself may lie under a folder named wandb), nor those in a staging folder
    (``.<dest>.staging-XXXXXXXX``: an export or download still being written, or killed midway,
    whose copies would pass for runs of their own)."""
    dirs, seen = [], set()
    for here, subdirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a symlink loop, or a second link to a folder already read
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs[:] = sorted(d for d in subdirs if d != "wandb" and not is_staging_folder_name(d))
        if RUN_JSON in files or METRICS in files:
            dirs.append(Path(here))
    return sorted(dirs)


def _split_by_content(runs: pd.DataFrame, listed: pd.DataFrame, settings: dict, setting_configs: dict) -> list[dict]:
    """Runs of one data identity (without its content keys) that recorded different contents
    (images added, classes swapped) get their own config, setting and data ids, in place, in both
    frames (decided on ``listed``, every record read); a record without content keys among them
    cannot be placed and keeps the bare ids, apart from every content, and is listed. One content
    (or none recorded): nothing changes."""
    split = {}  # run_dir -> its content, or None (unplaceable), in data ids recorded with several contents
    for _, g in listed.groupby("data_id"):
        n_contents = g.content.dropna().nunique()
        if n_contents > 1:
            split.update({d: (c if isinstance(c, str) else None, n_contents) for d, c in zip(g.run_dir, g.content)})
    problems = []
    for frame in (runs, listed):
        for i in frame.index[frame.run_dir.isin(split)] if not frame.empty else []:
            c, n_contents = split[frame.at[i, "run_dir"]]
            if c is None:
                if frame is runs:
                    problems.append({"run_dir": frame.at[i, "run_dir"], "problem": (
                        f"recorded before data contents were hashed, beside runs of the same data root on "
                        f"{n_contents} different contents: kept apart from all of them")})
                continue
            old = frame.at[i, "setting_id"]
            new = _digest({"setting": old, "content": c}, 10)
            frame.at[i, "setting_id"] = new
            frame.at[i, "data_id"] = _digest({"data": frame.at[i, "data_id"], "content": c}, 6)
            if frame is runs:
                frame.at[i, "config_id"] = _digest({"config": frame.at[i, "config_id"], "content": c}, 10)
                if new not in settings:
                    settings[new] = {**settings[old], "_data_content": c}
                    setting_configs[new] = {**setting_configs[old], "data contents": c}
    return problems


def _oscillation_window(osc_lines: list[dict], every) -> str:
    """The window (in steps) a run's path efficiency was measured over: its oscillation lines'
    path_window, or, in records written before it was logged, what the tracker derives from
    trainer.oscillation_every (adarem/oscillation.py); several (a run resumed with another
    oscillation_every) are joined by "/"; "" without oscillation lines."""
    if not osc_lines:
        return ""
    default = path_window(every) if _is_int(every) and every > 0 else None
    windows = {r.get("path_window") if r.get("path_window") is not None else default for r in osc_lines}
    return "/".join(sorted((str(w) if w is not None else "unrecorded" for w in windows),
                           key=lambda w: (not w.isdigit(), int(w) if w.isdigit() else 0, w)))


def _oscillation_every(osc_lines: list[dict]) -> str:
    """The interval, in steps, of a run's oscillation records, read off the records: the greatest
    common divisor of their steps (records every k steps fall at multiples of k; one record skipped,
    as by a resume from an older checkpoint without the tracker's state, leaves it k); "" without
    records. Both measures are means over the recorded steps, so runs recorded at other intervals
    average other points of training (helper-92: +0.015 against -0.011 flips, one training recorded
    every 10 and every 60 steps)."""
    steps = [r["step"] for r in osc_lines if _is_int(r.get("step")) and r["step"] > 0]
    return str(functools.reduce(math.gcd, steps)) if steps else ""


def _read_run(rel: str, run: dict, numbered: list[tuple[int, dict]], torn: int = 0) -> dict:
    """One run record: {"listed": ...} and either {"problem": why it is excluded} or its row, the
    rows of its lines, and its setting (see load_runs). ``torn``: how many of its metrics.jsonl
    lines did not parse (each is listed by load_runs; here they are holes in its curve)."""
    lines = [r for _, r in numbered]
    status = run.get("status", "unknown")
    cfg = numerics_config(run)
    bn = split_bn_batch(run)
    setting = setting_items(cfg, run.get("data_identity"), bn)
    opt = cfg.get("optimizer") or {}
    listed = {"run_dir": rel, "dataset": (cfg.get("data") or {}).get("name"),
              "model": (cfg.get("model") or {}).get("name"), "setting_id": _digest(setting, 10),
              "optimizer": optimizer_label(opt), "data_id": data_id(run.get("data_identity")),
              "content": _content(run.get("data_identity"))}
    if status not in FINAL_STATUSES:
        return {"listed": listed, "problem": f"incomplete (status {status}): excluded"}
    bad_line = malformed_line(numbered)
    if bad_line:
        return {"listed": listed, "problem": bad_line}
    epochs = [r for r in lines if r.get("type") == "epoch"]
    evals = [r for r in epochs if "val_top1_err" in r and r["val_top1_err"] is not None]
    # a non-finite val error (NaN: nothing was counted) is no evaluation: never a best error (min()
    # with NaN first returns NaN), never a point of the curve
    scored = [(n, r) for n, r in numbered if r.get("type") in ("eval", "epoch") and _is_number(r.get("val_top1_err"))]
    nonfinite = [n for n, r in scored if not math.isfinite(r["val_top1_err"])]
    every_eval = [r for _, r in scored if math.isfinite(r["val_top1_err"])]
    if status == "finished" and not evals:
        return {"listed": listed, "problem": "finished but no evaluated epoch in metrics.jsonl: excluded"}
    trainer, data = cfg.get("trainer") or {}, cfg.get("data") or {}
    final = evals[-1] if evals and status == "finished" else {}
    # top-5 error of a task of 5 classes or fewer is 0 by construction, no measurement: null in the
    # records (engine.evaluate); an older record's 0.0 for such a task is read as none too
    classes = (run.get("data_identity") or {}).get("num_classes") if isinstance(run.get("data_identity"), dict) else None
    top5 = not (_is_int(classes) and classes < TOP5_MIN_CLASSES)
    recorded = run.get("final") if isinstance(run.get("final"), dict) else {}
    if status == "finished":
        # run.json's final is what train.py reported; metrics.jsonl must agree with it and hold
        # every epoch, or the curves and "final" of the tables would describe another run
        n_epochs = trainer.get("epochs")
        problem = finished_record_problem(run)
        if problem:
            return {"listed": listed, "problem": f"run.json {problem}: excluded; move the run directory away and "
                    f"run again (a divergence is then recorded diverged)"}
        lost_before = run.get("metrics_lines_lost") if _is_number(run.get("metrics_lines_lost")) else 0
        if recorded["val_top1_err"] != final.get("val_top1_err"):
            return {"listed": listed, "problem": f"metrics.jsonl disagrees with run.json (last evaluated error "
                    f"{final.get('val_top1_err')} vs final {recorded['val_top1_err']}): excluded"}
        # fewer epoch lines than epochs is a curve with holes where run.json records lost lines
        # (a resume=<path> run, a cut file): its final error stands, as below (helper-93)
        if n_epochs is not None and (len(epochs) > n_epochs or (len(epochs) < n_epochs and not lost_before > 0)):
            return {"listed": listed, "problem": f"metrics.jsonl disagrees with run.json ({len(epochs)} epoch "
                    f"lines for {n_epochs} epochs" + ("" if len(epochs) > n_epochs else ", and no line recorded "
                    "lost") + "): excluded"}
    # a curve with holes: lines lost for good after a crash (run.json's metrics_lines_lost), or
    # evaluations without a finite error. Its final error stands (run.json's); the metrics read off
    # the curve (best error, steps and seconds to a target, AUC, train loss at x %) do not
    gaps = []
    lost = run.get("metrics_lines_lost")
    if _is_number(lost) and lost > 0:
        gaps.append(f"{lost:g} metrics.jsonl line(s) missing (run.json metrics_lines_lost: lost after a crash, "
                    f"or written before a resume=<path> from another directory)")
    if torn:
        gaps.append(f"{torn} metrics.jsonl line(s) unreadable (a torn write)")
    # an evaluation logged twice (the second of two writers, a bad merge) or missing (a deleted
    # line leaves valid JSON behind): the curve is not the run's
    counts = Counter(r.get("step") for _, r in scored)
    twice = sorted(s for s, c in counts.items() if c > 1 and s is not None)
    if twice:
        gaps.append(f"evaluation(s) at step(s) {', '.join(map(str, twice[:5]))}{', ...' if len(twice) > 5 else ''} "
                    f"logged more than once")
    per_epoch = trainer.get("evals_per_epoch", 1)
    if status == "finished" and _is_int(per_epoch) and per_epoch > 1 and _is_int(trainer.get("epochs")):
        mid = sum(1 for _, r in scored if r.get("type") == "eval")
        expected = trainer["epochs"] * (per_epoch - 1)
        if mid != expected:
            gaps.append(f"{mid} mid-epoch evaluation line(s) for the {expected} of {trainer['epochs']} epochs at "
                        f"trainer.evals_per_epoch={per_epoch}")
    if nonfinite:
        gaps.append(f"{len(nonfinite)} evaluation(s) with a non-finite val error (metrics.jsonl line"
                    f"{'s' if len(nonfinite) > 1 else ''} {', '.join(map(str, nonfinite[:5]))}"
                    f"{', ...' if len(nonfinite) > 5 else ''})")
    curve_ok = not gaps and status == "finished"
    # a torn line may have been any kind (a train-loss or oscillation line): lost like a missing one
    lines_lost = (int(lost) if _is_number(lost) and lost > 0 else 0) + torn
    git = run.get("git") if isinstance(run.get("git"), dict) else {}
    versions = run.get("versions") if isinstance(run.get("versions"), dict) else {}
    osc_lines = [r for r in lines if r.get("type") == "oscillation"]
    # a non-finite oscillation value (the tracker writes finite numbers, or null for a window in
    # which nothing moved): the run's mean over the other lines would describe part of its training
    osc_bad = [n for n, r in numbered if r.get("type") == "oscillation"
               and any(_is_number(r.get(k)) and not math.isfinite(r[k]) for k in ("flip_fraction", "path_efficiency"))]
    osc_gap = (f"{len(osc_bad)} oscillation line(s) with a non-finite flip_fraction or path_efficiency "
               f"(metrics.jsonl line{'s' if len(osc_bad) > 1 else ''} {', '.join(map(str, osc_bad[:5]))}"
               f"{', ...' if len(osc_bad) > 5 else ''})") if osc_bad else ""
    row = {
        "run_dir": rel, "status": status, "config_id": config_id(cfg, run.get("data_identity"), bn),
        "dataset": data.get("name"), "data_id": listed["data_id"], "content": listed["content"],
        "data_source": data_source(run.get("data_identity")),
        "split_images": split_images(run.get("data_identity")),
        "eval_on": data.get("eval_on", "val"),
        "model": (cfg.get("model") or {}).get("name"),
        "optimizer": listed["optimizer"], "lr": opt.get("lr"),
        "weight_decay": opt.get("weight_decay"), "epochs": trainer.get("epochs"),
        "batch_size": trainer.get("batch_size"), "seed": cfg.get("seed"),
        "experiment": cfg.get("experiment_name", ""), "start_time": run.get("start_time", ""),
        "final_top1": final.get("val_top1_err", math.nan),
        "final_top5": final["val_top5_err"] if top5 and _is_number(final.get("val_top5_err")) else math.nan,
        # over every evaluation, the mid-epoch ones (trainer.evals_per_epoch) included
        "best_top1": min((r["val_top1_err"] for r in every_eval), default=math.nan) if curve_ok else math.nan,
        "best_top5": min((r["val_top5_err"] for r in every_eval if _is_number(r.get("val_top5_err"))
                          and math.isfinite(r["val_top5_err"])), default=math.nan) if curve_ok and top5 else math.nan,
        "final_train_loss": (epochs[-1].get("train_loss", math.nan) if epochs and status == "finished" else math.nan),
        "wall_time_s": epochs[-1].get("wall_time_s", math.nan) if epochs else math.nan,
        "images_per_s": run_images_per_s(epochs),
        "diverged_at_step": run.get("diverged_at_step"),
        # the step budget: what a run that never reaches a target is censored at
        "budget_steps": (trainer["epochs"] * run["steps_per_epoch"]
                         if _is_int(run.get("steps_per_epoch")) and trainer.get("epochs") else
                         (epochs[-1]["step"] if epochs else math.nan)),
        "bn_recalibrate": trainer.get("bn_recalibrate", 0),
        "evals_per_epoch": trainer.get("evals_per_epoch", 1),
        "eval_every": trainer.get("eval_every", 1),  # epochs (evals_per_epoch > 1 needs 1)
        "optimizer_impl": run.get("optimizer_impl") or "unrecorded",
        # the code that trained it: a reused finished run keeps the commit it was trained at
        "commit": str(git.get("commit") or "unrecorded")[:10],
        "dirty": git.get("dirty") is True,
        "diff_sha1": git.get("diff_sha1") if isinstance(git.get("diff_sha1"), str) else None,
        # what differed between the segments of a resumed run (run.json's mixed_provenance: commit,
        # versions, threads, device...); None for a record written before segments were kept
        "mixed_provenance": (", ".join(map(str, run["mixed_provenance"]))
                             if isinstance(run.get("mixed_provenance"), list) else None),
        "torch": str(versions.get("torch") or "unrecorded"),
        "compile": trainer.get("compile") is True,
        "channels_last": trainer.get("channels_last") is True,
        "deterministic": trainer.get("deterministic") is True,
        # not part of a run's identity, but of how fast it ran (the loader's helpers, a cached dataset)
        "num_workers": str(data.get("num_workers", "unrecorded")),
        # the loss lines' window (train loss @x % averages the windows that end in a span)
        "log_every": str(trainer.get("log_every", "unrecorded")),
        "cache_samples": data.get("cache_samples") is True,
        # the oscillation tracker works inside every step of its windows (13 % of a resnet18 CPU
        # step, results/bench/throughput.csv): part of how a run was timed, like compile
        "oscillation_every": (int(trainer["oscillation_every"]) if _is_int(trainer.get("oscillation_every"))
                              and trainer["oscillation_every"] > 0 else 0),
        "schedule_truncated": run.get("schedule_truncated") if isinstance(run.get("schedule_truncated"), str) else "",
        "platform": timing_platform(run),
        "cpu_model": str(run["hardware"].get("cpu_model") or "") if isinstance(run.get("hardware"), dict) else "",
        "curve_gap": "; ".join(gaps), "lines_lost": lines_lost, "nonfinite_evals": len(nonfinite),
        "osc_window": _oscillation_window(osc_lines, trainer.get("oscillation_every")),
        "osc_every": _oscillation_every(osc_lines), "osc_gap": osc_gap,
        **replaced_images(run, epochs),
        "setting_id": listed["setting_id"],
    }
    out = {"listed": listed, "row": row, "setting": setting,
           "setting_config": {**flatten(cfg), "bn_batch": bn or "global batch"},
           "evals": [], "iters": [], "epochs": [], "osc": []}
    for r in lines:
        kind = r.get("type")
        if kind in ("eval", "epoch") and _is_number(r.get("val_top1_err")) and math.isfinite(r["val_top1_err"]):
            out["evals"].append({"run_dir": rel, "step": r.get("step"),
                                 "epoch_frac": r.get("epoch_frac", r.get("epoch", 0) + 1.0 if kind == "epoch" else None),
                                 "wall_time_s": r.get("wall_time_s", math.nan),
                                 "val_top1_err": r["val_top1_err"], "val_loss": r.get("val_loss", math.nan)})
        elif kind == "iter":
            window = r.get("train_loss_window")  # absent in records written before it existed
            k = r.get("train_loss_window_steps")
            out["iters"].append({"run_dir": rel, "step": r["step"], "loss": r["loss"],
                                 "train_loss_window": float(window) if _is_number(window) else math.nan,
                                 "window_steps": float(k) if _is_number(k) else math.nan})
    for r in epochs:
        out["epochs"].append({"run_dir": rel, **{k: v for k, v in r.items() if k != "type"}})
    for r in osc_lines:
        eff = r.get("path_efficiency")  # absent in records written before it existed
        out["osc"].append({"run_dir": rel, "step": r["step"], "flip_fraction": r["flip_fraction"],
                           "path_efficiency": float(eff) if _is_number(eff) else math.nan})
    return out


def _given_run_dirs(run_dirs) -> tuple[list[tuple[str, Path]], list[dict]]:
    """(name as given, path) of each directory of ``run_dirs`` that exists, each real folder once
    (the first spelling of it); a problem for each that does not."""
    entries, problems, seen = [], [], set()
    for d in run_dirs:
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
        if Path(d).is_dir():
            entries.append((str(d), Path(d)))
        else:
            problems.append({"run_dir": str(d), "problem": "no run directory: excluded"})
    return entries, problems


# How two runs of one configuration and seed may have been trained differently (config_id leaves
# these out: they change no number by design, or change it as a code change does)
TWIN_KEYS = (("oscillation_every", "trainer.oscillation_every"), ("compile", "trainer.compile"),
             ("channels_last", "trainer.channels_last"), ("deterministic", "trainer.deterministic"),
             ("optimizer_impl", "optimizer path"), ("torch", "torch"), ("platform", "timed on"))


def twin_differences(run, kept) -> str:
    """What differs between a duplicate run and the one kept: the code (commit, uncommitted
    changes), then TWIN_KEYS; "" where nothing recorded differs."""
    from adarem.run.code_version import same_code

    out = []
    code = lambda r: f"{r.commit}{' with uncommitted changes' if r.dirty else ''}"  # noqa: E731
    git = lambda r: {"commit": r.commit, "dirty": r.dirty, "diff_sha1": r.get("diff_sha1")}  # noqa: E731
    if code(run) != code(kept):
        out.append(f"trained at commit {code(run)}, the kept one at {code(kept)}")
    elif run.dirty and not same_code(git(run), git(kept)):  # one commit, other (or unknown) uncommitted changes
        out.append(f"trained at commit {code(run)} with other uncommitted changes than the kept one (run.json "
                   f"git.diff_sha1 {run.get('diff_sha1') or 'unknown'} against {kept.get('diff_sha1') or 'unknown'})")
    for col, name in TWIN_KEYS:
        if col in run and run[col] != kept[col]:
            out.append(f"{name} {run[col]}, the kept one {kept[col]}")
    return "; ".join(out)


def load_runs(root: Path | None = None, newest_comparison: bool = True, *, run_dirs=None) -> RunSet:
    """Every run record under ``root``, or exactly the directories ``run_dirs`` (not what lies
    beside them; each named as given, read once; one that does not exist, or holds no record, is a
    problem), never both. ``newest_comparison``: where compare.py's manifests say which finals are
    which comparison's, each optimizer's runs are its newest comparison's
    (adarem/results/comparisons.py); compare.py's own report, which names its runs, turns it off.
    Of two runs of one configuration and seed, the first started is kept (``run_dirs``: only
    among those given)."""
    if (root is None) == (run_dirs is None):
        raise TypeError("load_runs reads a root folder or a list of run_dirs: give one of them")
    rows, epoch_rows, osc_rows, eval_rows, iter_rows, problems = [], [], [], [], [], []
    listed = []  # every record read, complete or not: which comparison covers which optimizer
    settings: dict[str, dict] = {}  # setting id -> its items, for labels
    setting_configs: dict[str, dict] = {}  # setting id -> a flattened config of one of its runs
    if run_dirs is None:
        entries = [(str(d), d) for d in find_run_dirs(Path(root))]
    else:
        entries, problems = _given_run_dirs([run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else run_dirs)
    for rel, run_dir in entries:
        if not (run_dir / RUN_JSON).exists() and not (run_dir / METRICS).exists():  # a given folder, not a run
            problems.append({"run_dir": rel, "problem": "no run record (run.json, metrics.jsonl): excluded"})
            continue
        numbered, bad = read_metrics_lines(run_dir / METRICS, numbered=True)
        problems += [{"run_dir": rel, "problem": b} for b in bad]
        try:
            with open(run_dir / RUN_JSON) as f:
                run = json.load(f)
        except FileNotFoundError:
            problems.append({"run_dir": rel, "problem": "no run.json: excluded"})
            continue
        except ValueError:
            problems.append({"run_dir": rel, "problem": "run.json unreadable: excluded"})
            continue
        if not isinstance(run, dict) or not isinstance(run.get("config"), dict):
            problems.append({"run_dir": rel, "problem": "run.json is not a run record (no config object): excluded"})
            continue
        bad_config = malformed_config(run["config"])
        if bad_config:
            problems.append({"run_dir": rel, "problem": bad_config})
            continue
        try:
            read = _read_run(rel, run, numbered, torn=sum(b.startswith("metrics.jsonl line") for b in bad))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a malformed record no
            # check above names: one line in the report, not a traceback that loses every other run
            read = {"problem": f"run.json or metrics.jsonl malformed ({type(exc).__name__}: {exc}): excluded"}
        if "listed" in read:
            listed.append(read["listed"])
        if "problem" in read:
            problems.append({"run_dir": rel, "problem": read["problem"]})
            continue
        rows.append(read["row"])
        settings[read["row"]["setting_id"]] = read["setting"]
        setting_configs[read["row"]["setting_id"]] = read["setting_config"]
        eval_rows += read["evals"]
        iter_rows += read["iters"]
        epoch_rows += read["epochs"]
        osc_rows += read["osc"]

    runs = pd.DataFrame(rows)
    listed = pd.DataFrame(listed, columns=["run_dir", "dataset", "model", "setting_id", "optimizer", "data_id",
                                           "content"])
    problems += _split_by_content(runs, listed, settings, setting_configs)
    if newest_comparison:
        runs, notes = newest_comparison_only(runs, listed)
        problems += notes
    if not runs.empty:
        # same configuration and seed twice: keep the first started (a rerun never replaces a
        # result, so no seed's number can be chosen among reruns), list the others with how they
        # were trained differently (other code, the tracker, compile: not part of config_id)
        runs = (runs.assign(started=start_order(runs.start_time)).sort_values(["started", "run_dir"])
                .drop(columns="started").reset_index(drop=True))
        dup = runs.duplicated(subset=["config_id", "seed"], keep="first")
        for _, r in runs[dup].iterrows():
            first = runs[(runs.config_id == r.config_id) & (runs.seed == r.seed) & ~dup].iloc[0]
            differs = twin_differences(r, first)
            problems.append({"run_dir": r.run_dir, "problem": f"duplicate of {first.run_dir} (same config and seed"
                             + (f"; {differs}" if differs else "") + "): excluded, the first started being kept; to "
                             "report this one instead, move the other away"})
        runs = runs[~dup].reset_index(drop=True)
        # two datasets that share data.name (two data=folder roots, a grown tree) are two settings:
        # by the name alone the claims and speed targets would compare runs across them. The lr
        # search's holdout runs and the finals of one data root differ in the split only: one dataset
        for name, g in runs.groupby("dataset", dropna=False):
            labels = data_labels(g)
            if len(set(labels.values())) > 1:
                runs.loc[g.index, "dataset"] = [f"{name}@{labels[i]}" for i in g.index]
        # two comparisons of one dataset x model that differ in anything but the optimizer (epochs,
        # batch, schedule, ...) are two settings: selecting each optimizer's configuration across
        # them would pair, say, SGD trained 8 epochs with AdaRem trained 4 in the claims and targets.
        # The lr search's holdout runs are labelled among themselves (their setting ids differ from
        # their finals' in the split alone): the report's search tables and its oscillation claims at
        # shared lrs pooled the trials of two settings into one row (helper-92)
        for (name, _, eval_on), g in runs.groupby(["dataset", "model", "eval_on"], dropna=False):
            # holdout runs of one data differ in their split's sizes by design (data_labels has told
            # other data apart): their settings are compared without them
            own = {sid: _split_free(settings[sid]) if eval_on == "holdout" else settings[sid] for sid in g.setting_id}
            key = {sid: _digest(items, 10) for sid, items in own.items()}
            if len(set(key.values())) > 1:
                one = {key[sid]: sid for sid in sorted(own)}  # a setting id per key
                labels = setting_labels({k: own[sid] for k, sid in one.items()},
                                        {k: setting_configs[sid] for k, sid in one.items()})
                runs.loc[g.index, "dataset"] = [f"{name} ({labels[key[s]]})" for s in g.setting_id]
    keep = set(runs.run_dir) if not runs.empty else set()
    epochs_df = pd.DataFrame(epoch_rows)
    osc_df = pd.DataFrame(osc_rows, columns=["run_dir", "step", "flip_fraction", "path_efficiency"])
    if not epochs_df.empty:
        epochs_df = epochs_df[epochs_df.run_dir.isin(keep)].reset_index(drop=True)
    osc_df = osc_df[osc_df.run_dir.isin(keep)].reset_index(drop=True)
    evals_df = pd.DataFrame(eval_rows, columns=EVAL_COLUMNS)
    evals_df = evals_df[evals_df.run_dir.isin(keep)].sort_values(["run_dir", "step"], kind="stable").reset_index(drop=True)
    iters_df = pd.DataFrame(iter_rows, columns=ITER_COLUMNS)
    iters_df = iters_df[iters_df.run_dir.isin(keep)].reset_index(drop=True)
    return RunSet(runs, epochs_df, osc_df, problems, evals_df, iters_df)
