"""The run record: ``run.json`` (what ran, where, how it ended) and ``metrics.jsonl``.

This is the contract that ``adarem/results`` reads; the README documents the fields.
Only rank 0 writes. ``run.json`` is replaced atomically; ``metrics.jsonl`` is append-only, one
JSON object per line, and is cut back to the last checkpoint's line count when a run resumes,
so that a resumed run's file equals an uninterrupted run's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import threading
from importlib import metadata
from pathlib import Path

import torch

from adarem.fsync import replace_durably
from adarem.run import build_info
from adarem.run.identity import NOT_IDENTITY, config_differences, flatten  # noqa: F401 (re-exported)

RUN_JSON, METRICS = "run.json", "metrics.jsonl"
FINAL_STATUSES = ("finished", "diverged")
# with 5 classes or fewer every class is among the top 5: top-5 error is 0 by construction, no
# measurement; run records hold null for it (engine.evaluate) and the tables show none
TOP5_MIN_CLASSES = 6
# keys that may change between a run and its resumption without making it another run
RESUME_INSENSITIVE = NOT_IDENTITY


def now() -> str:
    # to the microsecond: the tables keep the first started of two runs of one configuration and
    # seed, and two trials of a comparison often start within one second (records written before
    # this have whole seconds; ``results.records.start_order`` reads both)
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def git_info() -> dict:
    """The commit of the code that runs: only when this package's own files are tracked by the
    repository around them (an editable install, a run from the repository, or the suite inside a
    larger monorepo checkout). A copy installed elsewhere inside some checkout (pip install --target
    <checkout>/.venv/site, untracked there) records no commit, not the checkout's.
    ``diff_sha1`` (when dirty): a hash of the uncommitted changes to tracked files, so that two
    segments of a run on differently changed code are told apart; null when that diff could not be
    taken (a timeout, an error): the commit and ``dirty`` true are still recorded.

    An installed copy that no repository tracks (the cluster image's) records the commit it was
    built from when it carries the ``_build.json`` its image build wrote, checked against its
    files, with ``"source": "image build"`` (adarem/run/build_info.py: files changed since the
    build give that commit with dirty true and ``changed_since_build``); without one, null as
    before. A checkout never reads that file."""
    package = Path(__file__).resolve().parents[1]  # adarem/ (this file: adarem/run/record.py)
    none = {"commit": None, "dirty": None}
    git = lambda *args, timeout=10, text=True: subprocess.run(  # noqa: E731
        ["git", *args], cwd=package, capture_output=True, text=text, check=True, timeout=timeout)
    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # fails for an untracked (installed) copy
    except (OSError, subprocess.SubprocessError):
        return build_info.read(package) or none
    try:
        commit = git("rev-parse", "HEAD").stdout.strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", ":/").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return none
    out = {"commit": commit or None, "dirty": dirty}
    if dirty:
        try:
            out["diff_sha1"] = hashlib.sha1(git("diff", "HEAD", "--binary", ":/", timeout=30, text=False).stdout
                                            ).hexdigest()
        except (OSError, subprocess.SubprocessError):
            out["diff_sha1"] = None  # dirty for sure; which changes, unknown
    return out


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("adarem", "torch", "torchvision", "timm", "numpy", "pillow", "hydra-core", "omegaconf", "wandb",
                "submitit", "nvidia-dali-cuda130"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_type(record: dict) -> str | None:
    """The type of the device a run record's ``hardware.device`` names ("cuda:0" -> "cuda"); None
    where the record names none."""
    hw = record.get("hardware") if isinstance(record.get("hardware"), dict) else {}
    return str(hw["device"]).split(":")[0] if hw.get("device") else None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict:
    # cpu_model: two CPU hosts at one thread each time differently (records.timing_platform)
    hw = {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu_model": cpu_model(),
          "cpu_count": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
          "device": str(device)}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
        hw["gpu_count"] = torch.cuda.device_count()
    return hw


def trained_at_other_world(record: dict, world: int) -> bool:
    """Whether a run recorded in ``record`` was trained at another world size than a launch of
    ``world`` ranks: its result is not that launch's (BatchNorm's batch without SyncBatchNorm, each
    rank's dropout masks, drawn from seed + rank, and the order of the gradient sums all change
    with it). A record of a version that did not write world_size is taken as this launch's.
    train.py's refusal of a finished run and compare.py's refusal to reuse a trial both ask this;
    a stopped or preempted run is refused at another world size by its checkpoint."""
    before = record.get("world_size")
    return before is not None and before != world


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finished_record_problem(record: dict) -> str | None:
    """Why a run.json that says ``finished`` is no result, None if it is one (or is not finished).
    train.py refuses such a record on relaunch and the tables exclude it, with this reason.

    - no finite final top-1 error: a record of an older version;
    - a non-finite final validation loss: weights that blew up after the last training loss was
      checked, recorded finished by a version before 26b6a62 (its error is an argmax over NaN
      logits). Records older than the key carry no val_loss and pass."""
    if record.get("status") != "finished":
        return None
    final = record.get("final") if isinstance(record.get("final"), dict) else {}
    if not _finite_number(final.get("val_top1_err")):
        return "says finished but records no finite final error (a record of an older version)"
    loss = final.get("val_loss", 0.0)
    if not _finite_number(loss):
        return (f"says finished but its final validation loss is {loss} (weights that diverged after the last "
                f"training loss was checked, recorded finished by an older version: its top-1 error is an "
                f"argmax over NaN logits)")
    return None


def read_run_json(run_dir: Path) -> dict | None:
    """The run directory's run.json, None if there is none; ValueError (one line) if it is not a
    JSON object (empty, truncated by a full disk, edited by hand)."""
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); move it away (the run directory's other "
                         f"files are kept) or choose another hydra.run.dir") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a run record; move it away or "
                         f"choose another hydra.run.dir")
    return data


# the fields of one stop (or failure): kept in its segment, cleared from the top level when the run restarts
PER_STOP = ("status", "end_time", "error", "signal", "stopped_at_step", "stop_reason")
# what can change a run's numbers between segments (hostname, platform and cpu_count do not)
_HARDWARE_KEYS = ("device", "gpu", "torch_threads", "omp_num_threads", "cpu_model")
_HARDWARE_LATER_RECORDED = ("hardware.cpu_model",)  # compared only where both segments recorded it


# the versions that can change a run's numbers (every version is recorded; only these are compared):
# not wandb, hydra-core, omegaconf or submitit, which log, configure and launch
NUMERIC_VERSIONS = ("python", "adarem", "torch", "torchvision", "timm", "numpy", "pillow")
# recorded from a later version on: compared only when both segments record them
_LATER_RECORDED = ("numpy", "pillow")


def _numeric_version(key: str) -> bool:
    return key in NUMERIC_VERSIONS or key.startswith("nvidia-dali")


def _provenance_items(segment: dict) -> dict:
    git, versions_, hw = (segment.get(k) if isinstance(segment.get(k), dict) else {}
                          for k in ("git", "versions", "hardware"))
    items = {f"git.{k}": git.get(k) for k in ("commit", "dirty", "diff_sha1")}
    items.update({f"versions.{k}": v for k, v in versions_.items()})
    items.update({f"hardware.{k}": hw.get(k) for k in _HARDWARE_KEYS})
    items["world_size"] = segment.get("world_size")
    return items


def _compared(key: str, x: dict, y: dict) -> bool:
    if key in _HARDWARE_LATER_RECORDED:
        return x.get(key) is not None and y.get(key) is not None
    if not key.startswith("versions."):
        return True
    name = key.split(".", 1)[1]
    return _numeric_version(name) and (name not in _LATER_RECORDED or (key in x and key in y))


def _provenance_differences(a: dict, b: dict) -> list[str]:
    """The provenance keys (dotted) that differ between two segments and can change its numbers
    (``_compared``: a version of a logging or launch package does not)."""
    x, y = _provenance_items(a), _provenance_items(b)
    return sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k) and _compared(k, x, y))


def describe_differences(a: dict, b: dict, keys: list[str]) -> str:
    """``key old -> new; ...`` for a note."""
    x, y = _provenance_items(a), _provenance_items(b)
    short = lambda v: v[:10] if isinstance(v, str) and len(v) == 40 else v  # noqa: E731 (a commit)
    return "; ".join(f"{k} {short(x.get(k))} -> {short(y.get(k))}" for k in keys)


PROVENANCE = ("git", "versions", "hardware", "world_size")


def segment_provenance(record: dict) -> dict:
    """What a checkpoint stores as its ``provenance``: the current segment's git, versions, hardware
    and world_size, and the run's ``mixed_provenance`` so far."""
    segment = (record.get("segments") or [{}])[-1]
    return {**{k: segment.get(k) for k in PROVENANCE}, "mixed_provenance": list(record.get("mixed_provenance") or [])}


def _cuts(cuts) -> list[dict]:
    """run.json's ``metrics_cuts`` entries that are well formed (a hand-edited record is no crash)."""
    return [c for c in cuts or () if isinstance(c, dict) and isinstance(c.get("segment"), int)
            and isinstance(c.get("lines"), int)]


def lines_before_checkpoint(ckpt: dict, own_cuts: list, foreign: bool, source_cuts: list = ()) -> int:
    """How many lines of the run's metrics.jsonl were logged before ``ckpt``: its ``metrics_lines``,
    less what a cut removed since. A start that found fewer lines than its checkpoint counted (a
    torn or cut file) keeps what was there and records a cut (run.json ``metrics_cuts``: the
    segment, the lines kept and lost); a checkpoint written before that segment counts lines that
    are no longer there, and its count cut the file back into the killed segment's lines, which were
    then logged twice (helper-93). ``foreign`` (resume=<path>): every cut of this directory came
    after the checkpoint; ``source_cuts`` are its own run's, which its segment is compared with."""
    segment = ckpt.get("segment", -1)  # a checkpoint of an older version: before any recorded cut
    writer = source_cuts if foreign else own_cuts  # the cuts of the run that wrote the checkpoint
    later = [c["lines"] for c in _cuts(writer) if c["segment"] > segment]
    later += [c["lines"] for c in _cuts(own_cuts)] if foreign else []  # every cut here followed the copy
    return min([ckpt["metrics_lines"], *later])


def lost_before_checkpoint(ckpt: dict, source_cuts: list) -> int:
    """The lines the run a foreign checkpoint came from had lost before it (its cuts up to the
    checkpoint's segment): lost for a run continued from it too (helper-94)."""
    segment = ckpt.get("segment", -1)
    return sum(c["lost"] for c in _cuts(source_cuts) if c["segment"] <= segment and isinstance(c.get("lost"), int))


def checkpoint_start(ckpt: dict, path: Path, foreign: bool) -> dict:
    """What ``RunRecord.start`` needs of the checkpoint a start continues."""
    pos = ckpt.get("position") or {}
    return {"path": str(Path(path).resolve()), "foreign": foreign, "provenance": ckpt.get("provenance"),
            "position": {k: pos.get(k) for k in ("global_step", "epoch", "batch", "phase")}}


def checkpoint_segment(checkpoint: dict) -> dict:
    """The first segment of a run continued from a checkpoint with no earlier segment recorded."""
    seg = {"from_checkpoint": True, "checkpoint": checkpoint["path"], "start_step": None,
           "end_status": "checkpoint", "stopped_at_step": checkpoint["position"].get("global_step")}
    prov = checkpoint.get("provenance")
    if not isinstance(prov, dict):
        return {**seg, "provenance": "unrecorded", "git": {"commit": None, "dirty": None}}
    seg.update({k: prov.get(k) for k in PROVENANCE})
    if prov.get("mixed_provenance"):
        seg["mixed_provenance"] = list(prov["mixed_provenance"])
    return seg


class RunRecord:
    def __init__(self, run_dir: Path, enabled: bool):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.data: dict = {}
        # the peer watch's thread may record a failure (adarem/run/peer_watch.py) while the main
        # thread is in start, update or write: one writer of run.json (and of its .tmp) at a time
        self.lock = threading.RLock()

    def start(self, config: dict, world_size: int, device: torch.device, previous: dict | None,
              start_step: int = 0, checkpoint: dict | None = None) -> list[str]:
        """Open this segment of the run (a first start, or a restart after a stop or a kill).

        Every segment's provenance is kept in ``segments`` (``start_time``, ``start_step``, ``git``,
        ``versions``, ``hardware``, ``world_size``; a segment that ended before this one also
        ``end_status`` and whatever its stop recorded: ``end_time``, ``stopped_at_step``, ``signal``,
        ``error``; ``end_status`` "running" means it died without a record: kill -9, a node lost).
        The top level describes the whole run: ``git`` is this segment's with ``dirty`` true if any
        segment ran on uncommitted code, ``mixed_provenance`` lists what differed between segments
        (e.g. ``git.commit``, ``versions.torch``, ``hardware.torch_threads``; empty when nothing
        did), and the fields of an earlier stop are cleared. Returns what differs from the previous
        segment, for a note at the resume.

        ``checkpoint`` (``checkpoint_start``), when this start continues a checkpoint: one of
        another directory (resume=<path>) is recorded as ``resumed_from``; and where no earlier
        segment is recorded here (resume=<path>, a run.json moved away), the provenance of the
        segment that wrote the checkpoint becomes the first segment (``from_checkpoint: true``), so
        that training on other code before it counts as mixed. A checkpoint of a version that did
        not store its provenance gives a first segment with ``provenance: "unrecorded"`` and
        ``mixed_provenance`` ["unrecorded"]: what trained before it is unknown, so it is not called
        clean."""
        with self.lock:
            return self._start(config, world_size, device, previous, start_step, checkpoint)

    def _start(self, config: dict, world_size: int, device: torch.device, previous: dict | None,
               start_step: int, checkpoint: dict | None) -> list[str]:
        self.data = dict(previous or {})
        segments = [dict(s) for s in self.data.get("segments") or [] if isinstance(s, dict)]
        if previous and not segments:  # a record of a version that kept only the last segment
            segments = [{"start_time": previous.get("start_time"), "start_step": None,
                         **{k: previous[k] for k in ("git", "versions", "hardware", "world_size") if k in previous}}]
        if previous and segments and "end_status" not in segments[-1]:  # set where a start-up stop kept it
            ended = {"end_status": previous.get("status")}
            ended.update({k: previous[k] for k in PER_STOP if k in previous and k != "status"})
            segments[-1].update(ended)
        if checkpoint is not None and checkpoint.get("foreign"):
            self.data["resumed_from"] = {"path": checkpoint["path"], **checkpoint["position"]}
        if checkpoint is not None and not segments:
            segments = [checkpoint_segment(checkpoint)]
        for key in PER_STOP:
            self.data.pop(key, None)
        segment = {"start_time": now(), "start_step": start_step, "git": git_info(), "versions": versions(),
                   "hardware": hardware(device), "world_size": world_size}
        # a start from no checkpoint trains from step 0: the earlier segments (killed before their
        # first checkpoint) left nothing in it, and their provenance is no part of its numbers
        # (helper-93: a restart with other threads was called mixed)
        contributing = segments if checkpoint is not None else []
        changed = (["unrecorded"] if contributing[-1].get("provenance") == "unrecorded"
                   else _provenance_differences(contributing[-1], segment)) if contributing else []
        segments.append(segment)
        mixed = {k for s in contributing if s.get("provenance") != "unrecorded"
                 for k in _provenance_differences(s, segment)}
        for s in contributing:  # what the run a checkpoint came from had already mixed, or that it is unknown
            if s.get("provenance") == "unrecorded":
                mixed.add("unrecorded")
            mixed.update(k for k in s.get("mixed_provenance") or [] if isinstance(k, str))
        mixed = sorted(mixed)
        git = dict(segment["git"])
        if any((s.get("git") or {}).get("dirty") for s in [*contributing, segment]):
            git["dirty"] = True  # some of the training ran on uncommitted code
        self.data.update({
            "status": "running", "config": config, "git": git, "versions": segment["versions"],
            "hardware": segment["hardware"], "world_size": world_size, "segments": segments,
            "mixed_provenance": mixed,
        })
        self.data.setdefault("start_time", segment["start_time"])
        self.data["restarts"] = self.data.get("restarts", -1) + 1
        self.write()
        return changed

    def update(self, **fields) -> None:
        with self.lock:
            self.data.update(fields)
            self.write()

    @property
    def segment(self) -> int:
        """The index of this launch's segment in run.json's ``segments``."""
        return len(self.data.get("segments") or []) - 1

    def write(self) -> None:
        if not self.enabled:
            return
        with self.lock:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.run_dir / f".{RUN_JSON}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=2, default=str)
            replace_durably(tmp, self.run_dir / RUN_JSON)  # a crash leaves the old record or the new, never none


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool):
        self.path = Path(run_dir) / METRICS
        self.enabled = enabled
        self.lines = 0
        self._f = None

    def open(self, keep_lines: int) -> int:
        """Open for appending, first cutting the file back to its first ``keep_lines`` lines
        (those logged before the checkpoint a resumed run starts from). A line that was torn (no
        newline, not JSON) ends what is kept. Returns how many of the ``keep_lines`` were missing."""
        self.lines = keep_lines
        if not self.enabled:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists() or keep_lines:
            if self.path.exists():
                with open(self.path, errors="replace") as f:
                    for _, line in zip(range(keep_lines), f):
                        if not line.endswith("\n") or not _is_json_object(line):
                            break
                        kept.append(line)
            tmp = self.path.with_name(f".{METRICS}.tmp")
            with open(tmp, "w") as f:
                f.writelines(kept)
            replace_durably(tmp, self.path)
        self.lines = len(kept)
        self._f = open(self.path, "a")
        return keep_lines - len(kept)

    def copy_lines_from(self, source: Path, n: int) -> None:
        """Start an empty (or absent) metrics.jsonl with the first ``n`` complete lines of
        ``source``: a run continued from another directory's checkpoint (resume=<path>) begins with
        the lines its run logged before that checkpoint, so that its curve is whole. What is not
        there to copy, ``open`` counts as lost."""
        if not self.enabled or (self.path.exists() and self.path.stat().st_size > 0) or not Path(source).is_file():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{METRICS}.tmp")
        with open(source, errors="replace") as f, open(tmp, "w") as out:
            for _, line in zip(range(n), f):
                if not line.endswith("\n") or not _is_json_object(line):
                    break
                out.write(line)
        replace_durably(tmp, self.path)

    def log(self, record: dict, flush: bool = False) -> None:
        self.lines += 1
        if self._f is None:
            return
        self._f.write(json.dumps(record, default=float) + "\n")
        if flush:
            self.flush()

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self.flush()
            self._f.close()
            self._f = None
