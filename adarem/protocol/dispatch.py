"""Running the comparison's trials, a stage at a time. The protocol only makes each trial's
train.py overrides and reads its run record (run.json) afterwards; how the trial is run is the
dispatcher's business:

- ``LocalDispatcher`` (launcher=local): spawned worker processes of this machine, each running
  train.py's ``train()`` in-process (no interpreter start per trial), with its torch threads pinned;
- ``SlurmDispatcher`` (launcher=slurm): one submitit job array per stage on a SLURM cluster; each
  array task runs ``Trial``, i.e. train.py's ``train()`` as any run (SIGUSR2/SIGTERM checkpoint the
  run, submitit requeues it and it resumes from its directory). Trials whose run directory already
  holds a finished (or diverged) run are not submitted again; failed or unfinished ones are. Such
  a run is reused only after train.py's data check (``data_refusal``: the data identity, computed
  on the submitting host, must match its run.json's), or it is submitted for train.py to check
  where the data cannot be read on that host.

Either way a finished trial is reused only at the world size it was trained at, where its model
has BatchNorm (``reuse_refusal``: train.py's own check, made before launching): otherwise it is a
failed trial whose error says so, never a result of another BatchNorm batch in the selection.

Both yield ``(key, outcome)`` pairs in the order the trials were given; an outcome is a dict with
``run_dir``, ``status``, ``err``/``loss`` (the run's final holdout or test top-1 error and loss),
``data_identity``, ``commit``/``dirty`` (the code it was trained at), ``seconds``, and ``error`` / ``locked`` when the trial did not run to an end.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import gc
import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from adarem.protocol.search import num

REPO = Path(__file__).resolve().parents[2]
# the checkout this package runs from (runs/ and results/ live there); an installed
# package without one works in the current directory
HOME = REPO if (REPO / "configs" / "config.yaml").is_file() else Path.cwd()
DONE = ("finished", "diverged")  # run records that launching the run again would only report


def config_dir() -> Path:
    """configs/ of the checkout, or the copy installed with the package (adarem.cli.CONFIG_DIR)."""
    try:
        from adarem.cli import CONFIG_DIR  # type: ignore[attr-defined]
    except ImportError:
        return REPO / "configs"
    return Path(CONFIG_DIR)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from adarem.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def train_function():
    """train.py's ``train(cfg)``: from adarem.cli.train where the package holds it, else from the
    repository's top-level train.py imported by path (the package never edits sys.path)."""
    try:
        from adarem.cli.train import train  # type: ignore[import-not-found]

        return train
    except ImportError:
        pass
    mod = sys.modules.get("train")
    if mod is None or Path(getattr(mod, "__file__", "") or "").resolve() != REPO / "train.py":
        spec = importlib.util.spec_from_file_location("train", REPO / "train.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["train"] = mod
        spec.loader.exec_module(mod)
    return mod.train


def read_outcome(run_dir: Path, seconds: float = 0.0) -> dict:
    """A trial's outcome as its run record tells it."""
    from adarem.run.record import read_run_json

    try:
        record = read_run_json(run_dir)
    except ValueError as exc:
        return {"run_dir": str(run_dir), "status": "failed", "error": str(exc), "seconds": seconds}
    if record is None:
        return {"run_dir": str(run_dir), "status": "failed", "error": "no run.json", "seconds": seconds}
    return {"run_dir": str(run_dir), "status": record.get("status", "unknown"), **recorded(record), "seconds": seconds}


def recorded(record: dict) -> dict:
    """What the protocol reads from a run record: the final (holdout or test) top-1 error and loss,
    the data identity, and what the run was trained with (a reused trial may be older code's, on
    other versions or threads; a resumed one may have changed them midway): the commit and its
    uncommitted diff, the versions, the device and torch threads, run.json's mixed_provenance."""
    from adarem.run.record import device_type

    final = record.get("final") if isinstance(record.get("final"), dict) else {}
    git = record.get("git") if isinstance(record.get("git"), dict) else {}
    hw = record.get("hardware") if isinstance(record.get("hardware"), dict) else {}
    mixed = record.get("mixed_provenance")
    text = lambda v: v if isinstance(v, str) else None  # noqa: E731 - a hand-edited record: no crash in the report
    threads = hw.get("torch_threads")
    return {"err": num(final.get("val_top1_err")), "loss": num(final.get("val_loss")),
            "data_identity": record.get("data_identity"), "commit": text(git.get("commit")),
            "dirty": git["dirty"] if isinstance(git.get("dirty"), bool) else None,
            "diff_sha1": text(git.get("diff_sha1")),
            "versions": record.get("versions") if isinstance(record.get("versions"), dict) else None,
            "device": device_type(record),
            "threads": threads if isinstance(threads, int) and not isinstance(threads, bool) else None,
            "mixed_provenance": [str(k) for k in mixed] if isinstance(mixed, list) else None}


def reuse_refusal(run_dir: Path, cfg, world: int, launch: str, device: str | None = None) -> str | None:
    """Why the finished (or diverged) run in ``run_dir`` is not this launch's result, in one line;
    None when it is, or when there is none to reuse (train.py decides about anything else).

    train.py's check_finished_world_size (adarem/run_setup.py), with the same rule, made before a
    trial is launched (the SLURM dispatcher reuses a finished trial without launching train.py)
    and worded for compare.py's keys: a run is this launch's result only at the world size it was
    trained at (``world`` ranks per trial; ``launch`` says whence): BatchNorm's batch, each rank's
    dropout masks and the order of the gradient sums change with it (adarem.run.record.trained_at_other_world).
    A record of a version that did not write world_size is reused, as train.py reuses it. ``device``
    ("cpu" or "cuda", None: not known here), the device type the trial trains on: a run trained on
    another is refused, as train.py refuses it."""
    from adarem.run.record import device_type, finished_record_problem, read_run_json, trained_at_other_world

    try:
        record = read_run_json(run_dir) or {}
    except ValueError:
        return None  # not a result either way: the launch fails on it (read_outcome, train.py)
    # train.py's relaunch check (run/plan.py), which a reuse without train.py (the SLURM dispatcher)
    # skips: a finished record that is no result (a non-finite final loss) is never scored
    problem = finished_record_problem(record)
    if problem:
        return (f"{run_dir}/run.json {problem}; it is not a result: move that directory away and launch again "
                f"(a divergence is then recorded diverged)")
    # train.py's device check (run_setup.prepare), which a reuse without train.py skips as well:
    # trainer.amp=auto is bf16 autocast on a GPU and fp32 on the CPU, and the kernels differ
    was = device_type(record)
    if device is not None and record.get("status") in DONE and was and was != device:
        return (f"{run_dir} holds a {record['status']} run trained on {was}; this launch trains on {device} ({launch}): "
                f"give runs= a fresh folder per device type")
    if record.get("status") not in DONE or not trained_at_other_world(record, world):
        return None
    before, bn = record["world_size"], record.get("bn_batch", "unrecorded")
    batch = int(cfg.trainer.batch_size)
    now = f" (BatchNorm batch {batch if world == 1 or cfg.trainer.sync_bn else batch // world})" \
        if bn is not None else ""
    how = "launcher=local, or launcher=slurm with" if before == 1 else "launcher=slurm with"
    return (f"{run_dir} holds a {record['status']} run trained on {before} rank(s)"
            + (f" (BatchNorm batch {bn})" if bn is not None else "") + f"; this launch has {world}{now} ({launch}), "
            f"which changes its result (BatchNorm's batch, each rank's dropout masks, the order of the gradient sums): "
            f"relaunch with {before} rank(s) per trial ({how} nodes x max(1, gpus_per_node) = {before}), or give runs= "
            f"a fresh folder for a new comparison")


# the data identity keys that do not depend on the loader or the world size (train_samples and
# val_samples do: DALI and the torch loader round an epoch differently)
_HOST_IDENTITY_SKIP = ("train_samples", "val_samples")


def host_data_identity(data_cfg, batch_size: int, seed: int, cache: dict) -> dict | None:
    """The data identity of ``data_cfg`` as train.py computes it (adarem.data.data_identity), built
    on this host with the torch loader (no GPU, nothing cached) less the keys that depend on the
    loader; None when the data cannot be built here (the trial is then launched and train.py checks).
    Cached per data configuration: the holdout split does not depend on the seed."""
    from omegaconf import OmegaConf

    key = OmegaConf.to_yaml(data_cfg)
    if key not in cache:
        import torch

        from adarem.data import build_data, data_identity

        cfg = OmegaConf.merge(data_cfg, {"loader": "torch", "cache_samples": False, "num_workers": 0})
        try:
            ident = data_identity(cfg, build_data(cfg, batch_size, 0, 1, seed, torch.device("cpu")))
            cache[key] = {k: v for k, v in ident.items() if k not in _HOST_IDENTITY_SKIP}
        except Exception:  # noqa: BLE001 - no data on this host, or another refusal: train.py's to make
            cache[key] = None
    return cache[key]


def data_refusal(run_dir: Path, cfg, record: dict, cache: dict) -> str | None:
    """train.py's check_data_identity for a finished (or diverged) run that the SLURM dispatcher
    would reuse without launching train.py: why its result is not this data's, in train.py's words;
    None when the identities agree (on the keys both have), when the record has none, or when the
    data cannot be built on this host ("unchecked": the caller launches the trial instead)."""
    from types import SimpleNamespace

    from adarem.config import ConfigError
    from adarem.run_setup import check_data_identity

    if not isinstance(record.get("data_identity"), dict):
        return None
    now = host_data_identity(cfg.data, int(cfg.trainer.batch_size), int(cfg.seed), cache)
    if now is None:
        return "unchecked"
    before = {k: v for k, v in record["data_identity"].items() if k not in _HOST_IDENTITY_SKIP}
    run = SimpleNamespace(run_dir=run_dir, plan=SimpleNamespace(previous=dict(record, data_identity=before),
                                                                 checkpoint=None, checkpoint_path=None))
    try:
        check_data_identity(run, now)
    except ConfigError as exc:
        return str(exc)
    return None


def refused(run_dir: Path, error: str, seconds: float = 0.0) -> dict:
    """The outcome of a trial refused before training (as run_one returns train.py's refusals):
    compare.py stops on it, as on a locked trial (scored as the worst, it would silently drop an lr
    from the search)."""
    return {"run_dir": str(run_dir), "status": "failed", "error": error, "seconds": seconds, "locked": False,
            "refused": True}


def _is_refusal(exc: BaseException) -> bool:
    """train()'s refusals of the run as configured, never the optimizer's doing: a ConfigError
    (another configuration or data in its directory, a finished run of another world size...) or
    a CheckpointError (a stopped run's checkpoint written by another number of processes, or
    unreadable, or of another lr schedule)."""
    from adarem.run.checkpoint import CheckpointError
    from adarem.config import ConfigError
    from adarem.run.plan import RunLocked

    return isinstance(exc, (ConfigError, CheckpointError)) and not isinstance(exc, RunLocked)


LOCAL_WORLD = 1  # run_one trains each trial as one process: no process group, one rank


def run_one(overrides: list[str], threads: int) -> dict:
    """Train one configuration in this (worker) process; returns its outcome."""
    if _ORPHANED.is_set():  # the compare that queued it is gone: never start a trial without it
        os._exit(1)
    if _STOPPED.is_set():  # the compare is leaving (an error, Ctrl-C): a trial queued before is not
        # begun; were the compare to read this outcome (Ctrl-C reached this worker alone), it stops
        raise KeyboardInterrupt("not started: the comparison is stopping")
    cfg = compose(overrides)
    run_dir = Path(cfg.run_dir)
    why = reuse_refusal(run_dir, cfg, LOCAL_WORLD, "launcher=local: one process per trial")
    if why:  # train.py would refuse it too, with hydra.run.dir in its advice
        return refused(run_dir, why)
    import torch

    torch.set_num_threads(threads)
    train = train_function()
    from adarem.cli import one_line
    from adarem.run.plan import RunLocked
    from adarem.run.record import read_run_json

    t0 = time.time()
    _IN_TRIAL.set()
    if _STOPPED.is_set():  # the stop came during the set-up above (seconds on a worker's first trial),
        _IN_TRIAL.clear()  # while the watch saw no trial: it is not begun. Later, the watch waits for
        raise KeyboardInterrupt("not started: the comparison is stopping")  # the trial's handler
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            code = train(cfg)
    except KeyboardInterrupt:  # Ctrl-C in a terminal reaches the workers too: the trial is recorded
        _STOPPED.set()  # interrupted, and this worker begins none of the trials its pool had queued
        raise  # the compare reads it as its own Ctrl-C
    except Exception as exc:  # one failed configuration must not stop the comparison; a refusal does
        return {"run_dir": str(run_dir), "status": "failed", "error": one_line(exc), "seconds": time.time() - t0,
                "locked": isinstance(exc, RunLocked), "refused": _is_refusal(exc)}
    finally:
        _IN_TRIAL.clear()
    try:
        record = read_run_json(run_dir) or {}
    except ValueError as exc:
        return {"run_dir": str(run_dir), "status": "failed", "error": str(exc), "seconds": time.time() - t0}
    return {"run_dir": str(run_dir), "status": record.get("status", f"exit {code}"), **recorded(record),
            "seconds": time.time() - t0}


class Terminated(KeyboardInterrupt):
    """SIGTERM in the compare process (adarem.protocol.cli.main): it leaves as on Ctrl-C, its local
    trials stopped as preempted runs, but submitted SLURM jobs are not cancelled."""


_ORPHAN_GRACE_S = 60.0  # time an orphaned worker's stopped trial gets to write its checkpoint
_ORPHANED = threading.Event()  # set in a worker whose compare process died: it starts no further trial
_STOPPED = threading.Event()  # set in a worker whose compare is leaving on an error or Ctrl-C: likewise
_IN_TRIAL = threading.Event()  # set in a worker while run_one trains


def _stop_with_compare(stop) -> None:
    """Pool-worker initializer: ``stop`` (a shared byte the compare sets to 1 when it leaves on an
    error, such as a refused or locked trial, or on Ctrl-C) makes this worker begin no further trial,
    and stop the one it trains as a preempted run is stopped (SIGTERM once the trial's own handler is
    in place: it checkpoints at its next step, and a relaunch resumes it). cancel_futures alone left
    the pool's already-queued trials (up to workers + 1) to be trained: a refused second compare on
    the same runs trained them on, holding their locks against the first. Polled, not waited on: a
    multiprocessing Event's set() waits for every process waiting on it to wake, and one killed
    meanwhile (Ctrl-C reaching an idle worker) never does, which hung the compare."""
    def watch() -> None:
        while not stop.value:
            time.sleep(0.1)
        _STOPPED.set()
        while _IN_TRIAL.is_set():
            # the trial's own SIGTERM handler (adarem.run.signals.StopFlag), called here rather than
            # signalled: a SIGTERM sent as the trial ended (its handler given back, _IN_TRIAL not yet
            # cleared) killed the worker (BrokenProcessPool while the compare stopped); a StopFlag
            # set after its trial ended stops nothing
            from adarem.run.signals import StopFlag  # torch: imported by run_one before _IN_TRIAL is set

            handler = signal.getsignal(signal.SIGTERM)
            if isinstance(getattr(handler, "__self__", None), StopFlag):
                handler(signal.SIGTERM, None)
                return
            time.sleep(0.05)  # the trial is starting: its handler is not in place yet

    threading.Thread(target=watch, daemon=True, name="adarem-compare-stop").start()


def _exit_with_parent(parent: int) -> None:
    """Pool-worker initializer: a worker whose compare process died (SIGKILL, out of memory) exits
    too, instead of training its trial on unobserved (holding the run's lock against the relaunched
    compare) and then waiting forever on the task queue. It is stopped as a preempted run is
    (SIGTERM: the trial checkpoints at its next step and returns), then exits."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        _ORPHANED.set()  # the trial stopped below returns, and the next one queued is not started
        os.kill(os.getpid(), signal.SIGTERM)  # outside a trial this ends the worker at once
        time.sleep(_ORPHAN_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="adarem-parent-watch").start()


def freeze_heap_at_exit() -> None:
    """Make this trial-running process (a pool worker, a SLURM job) exit sooner: the interpreter's
    teardown ran the garbage collector over every object of torch, dynamo and timm, 2-2.5 s a
    process (that compare waited for at ``pool.shutdown``); gc.freeze() as an atexit hook puts them
    out of its reach. Registered after multiprocessing's and submitit's own hooks, it runs before
    them, and they still run (the result queue's feeder thread is joined); every trial's records
    are closed by the time its result is returned. Registered once per process."""
    global _FREEZE_REGISTERED
    if not _FREEZE_REGISTERED:
        _FREEZE_REGISTERED = True
        atexit.register(gc.freeze)


_FREEZE_REGISTERED = False


def _init_worker(parent: int, stop) -> None:
    """Pool-worker initializer: the worker exits with its compare process (``_exit_with_parent``),
    stops with it when it leaves on an error (``_stop_with_compare``), and exits sooner when
    compare ends (``freeze_heap_at_exit``)."""
    _exit_with_parent(parent)
    _stop_with_compare(stop)
    freeze_heap_at_exit()


class LocalDispatcher:
    """Trials on this machine: ``workers`` spawned processes x ``threads`` torch threads each."""

    def __init__(self, workers: int, threads: int):
        self.workers, self.threads = workers, threads

    def __enter__(self):
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        ctx = get_context("spawn")
        self.stop = ctx.RawValue("b", 0)  # _stop_with_compare
        self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx,
                                        initializer=_init_worker, initargs=(os.getpid(), self.stop))
        return self

    def __exit__(self, exc_type, *exc):
        # leaving on an error (a refused or locked trial stops the comparison, as does Ctrl-C): the
        # stage's queued trials are cancelled, not trained first (a plain shutdown waited for all of
        # them, hours for a refusal found at once), those the pool had already handed on are not
        # begun, and the running ones stop as preempted runs do, checkpointed (_stop_with_compare);
        # a relaunch resumes or redoes them
        if exc_type is not None:
            self.stop.value = 1
        self.pool.shutdown(wait=True, cancel_futures=exc_type is not None)

    def run(self, stage: str, trials: Iterable[tuple[object, list[str]]]) -> Iterator[tuple[object, dict]]:
        """Outcomes in the order given. At most 2 x workers trials are unfinished at a time (the next
        one submitted as one ends, not only as the first in order is taken, so a long trial at the
        head does not leave the other workers idle once the short ones behind it are done): a
        refusal that stops the comparison leaves only those to end, never the whole stage trained
        first."""
        from concurrent.futures import FIRST_COMPLETED, wait

        todo = iter(trials)
        window: collections.deque = collections.deque()
        limit = 2 * self.workers

        def top_up() -> None:
            while sum(not f.done() for _, f in window) < limit:
                nxt = next(todo, None)
                if nxt is None:
                    return
                key, overrides = nxt
                window.append((key, self.pool.submit(run_one, overrides, self.threads)))

        top_up()
        while window:
            key, fut = window[0]
            while not fut.done():  # trials behind it that end meanwhile make room for the next ones
                wait([f for _, f in window if not f.done()], return_when=FIRST_COMPLETED)
                if not fut.done():
                    top_up()
            window.popleft()
            yield key, fut.result()  # the caller may stop here (a refusal): nothing more is submitted
            top_up()


class Trial:
    """One trial as a submitit job: train.py's ``train()`` on the composed overrides, as any run
    (its stop signals, checkpoint and resume=auto). ``checkpoint`` makes submitit requeue it with
    the same arguments on preemption or timeout, after the run has checkpointed (adarem.run.signals)."""

    def __call__(self, overrides: list[str]) -> dict:
        from adarem import distributed as dist_utils
        from adarem.cli import one_line
        from adarem.run.plan import RunLocked

        t0 = time.time()
        freeze_heap_at_exit()  # the job process ends after submitit has written this result
        train = train_function()
        cfg = compose(overrides)
        run_dir = Path(cfg.run_dir)
        try:
            code = train(cfg)
        except Exception as exc:  # the trial failed, not the job: the protocol reads the outcome
            return {"run_dir": str(run_dir), "status": "failed", "error": one_line(exc), "seconds": time.time() - t0,
                    "locked": isinstance(exc, RunLocked), "refused": _is_refusal(exc)}
        finally:
            dist_utils.cleanup()
        res = read_outcome(run_dir, time.time() - t0)
        res.setdefault("exit_code", code)
        return res

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def slurm_parameters(own: dict) -> dict:
    """submitit's AutoExecutor parameters from the compare keys (which default to the environment
    variables of configs/hydra/launcher/slurm.yaml)."""
    gpus = int(own["gpus_per_node"])
    params = dict(timeout_min=int(own["timeout_min"]), nodes=int(own["nodes"]), gpus_per_node=gpus,
                  tasks_per_node=max(1, gpus),  # one task per GPU (adarem/distributed.py maps SLURM's ranks)
                  cpus_per_task=int(own["cpus_per_task"]), slurm_signal_delay_s=300,
                  slurm_array_parallelism=int(own["array_parallelism"]))
    if own.get("mem_gb"):
        params["mem_gb"] = float(own["mem_gb"])
    if own.get("partition"):
        params["slurm_partition"] = own["partition"]
    if own.get("account"):
        params["slurm_account"] = own["account"]
    return params


class SlurmDispatcher:
    """Trials as one submitit job array per stage; waits for the stage, then reads the run records."""

    def __init__(self, folder: Path, params: dict, poll_s: float = 10.0, cluster: str = "slurm"):
        self.folder, self.params, self.poll_s, self.cluster = Path(folder), params, poll_s, cluster
        # the ranks of each trial's job (adarem/distributed.py: one per SLURM task)
        nodes, tasks = int(params.get("nodes", 1)), int(params.get("tasks_per_node", 1))
        self.world = nodes * tasks
        self.launch = f"launcher=slurm: {nodes} node(s) x {tasks} task(s)"
        self.gpus = int(params.get("gpus_per_node", 0))
        self._data_ids: dict = {}  # data configuration -> its identity on this host (data_refusal)

    def device(self, cfg) -> str:
        """The device type a trial's job trains on: trainer.device where it names one, else (auto)
        a GPU where the job has some (adarem/distributed.py's choice on the node)."""
        if cfg.trainer.device in ("cpu", "cuda"):
            return cfg.trainer.device
        return "cuda" if self.gpus > 0 else "cpu"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def _executor(self, stage: str):
        import submitit

        ex = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster, slurm_max_num_timeout=50)
        params = dict(self.params, name=f"adarem-{stage}")
        if self.cluster != "slurm":  # submitit's local/debug executors: no slurm_* keys
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        ex.update_parameters(**params)
        return ex

    def run(self, stage: str, trials: Iterable[tuple[object, list[str]]]) -> Iterator[tuple[object, dict]]:
        trials = list(trials)
        outcomes: dict[int, dict] = {}
        todo = []
        for i, (_, overrides) in enumerate(trials):
            cfg = compose(overrides)
            run_dir = Path(cfg.run_dir)
            why = reuse_refusal(run_dir, cfg, self.world, self.launch, self.device(cfg))
            res = refused(run_dir, why) if why else read_outcome(run_dir)
            if res["status"] in DONE and not why:  # train.py's data check, which a reuse skips
                why = data_refusal(run_dir, cfg, {"status": res["status"], "data_identity": res.get("data_identity")},
                                   self._data_ids)
                if why == "unchecked":  # no data here: the trial is launched, and train.py checks it
                    todo.append((i, overrides, cfg, run_dir))
                    continue
                res = refused(run_dir, why) if why else res
            if res["status"] in DONE or why:  # launched again it would only report its result (or refuse)
                outcomes[i] = res
            else:
                todo.append((i, overrides, cfg, run_dir))
        if todo:
            print(f"  {stage}: submitting {len(todo)} trial(s) as a job array ({len(trials) - len(todo)} already "
                  f"done); submitit files in {self.folder}", flush=True)
            ex = self._executor(stage)
            jobs = ex.map_array(Trial(), [overrides for _, overrides, _, _ in todo])
            print(f"  {stage}: job {jobs[0].job_id.split('_')[0]}", flush=True)
            t0 = time.time()
            try:
                self._wait(stage, jobs)
            except KeyboardInterrupt as exc:
                # Ctrl-C cancels the jobs; a SIGTERM (the compare's own time limit) leaves them to
                # finish, as they did before compare.py handled it: a relaunch collects them (helper-94)
                if not isinstance(exc, Terminated):
                    for job in jobs:
                        with contextlib.suppress(Exception):
                            job.cancel(check=False)
                raise
            for (i, _, cfg, run_dir), job in zip(todo, jobs):
                res = self._outcome(job, run_dir, time.time() - t0)
                # a run another launch finished meanwhile: the job only reported it, or refused it
                # (train.py in the job checked the device: the job's own is what it trained on)
                why = reuse_refusal(run_dir, cfg, self.world, self.launch) if res["status"] in DONE else None
                outcomes[i] = refused(run_dir, why, res["seconds"]) if why else res
        for i, (key, _) in enumerate(trials):
            yield key, outcomes[i]

    def _wait(self, stage: str, jobs: list) -> None:
        pending, last = list(jobs), time.time()
        while pending:
            pending = [j for j in pending if not j.done()]
            if pending:
                if time.time() - last > 600:
                    print(f"  {stage}: {len(jobs) - len(pending)}/{len(jobs)} trials done", flush=True)
                    last = time.time()
                time.sleep(self.poll_s)

    @staticmethod
    def _outcome(job, run_dir: Path, seconds: float) -> dict:
        from adarem.cli import one_line

        res = read_outcome(run_dir, seconds)
        try:
            returned = job.result()
        except Exception as exc:  # the job died: killed, out of memory, time limit without requeue
            if res["status"] not in DONE:
                res.update(status="failed", error=f"job {job.job_id}: {one_line(exc)}")
            return res
        if isinstance(returned, dict):
            res["locked"] = bool(returned.get("locked"))
            if "error" in returned and res["status"] not in DONE:
                res.update(status="failed", error=returned["error"], refused=bool(returned.get("refused")))
        return res
