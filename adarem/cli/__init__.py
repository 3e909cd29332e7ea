"""Entry points (``adarem-train``, ``adarem-tables``; ``python -m adarem.cli.train`` / ``.tables``) and
their plumbing: where the configs are, one-line error messages and a pre-flight composition.

A bad override, a run directory that cannot be created or a configuration error must reach the
user as one ``error:`` line with exit code 2, never as Hydra's multi-line report or a traceback;
in a sweep (``-m``), before its first job starts. Importing this package imports only the standard
library (Hydra is imported inside the functions), so that an entry point can install its early
signal handlers (adarem.cli.early) first.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path
from typing import Callable

MULTIRUN_FLAGS = ("-m", "--multirun")


def _config_dir() -> Path:
    """The repository's configs/ when running from a checkout (``python train.py``, an editable
    install); otherwise the same files installed with the package as ``adarem.configs`` (pyproject.toml
    maps configs/ there: one copy, not two)."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs" / "config.yaml").is_file():
        return checkout / "configs"
    from importlib.resources import files

    return Path(str(files("adarem.configs")))


CONFIG_DIR = _config_dir()


def train_command() -> None:
    """``adarem-train``: the early signal handlers first, then the seconds-long imports and the run."""
    from adarem.cli import early

    early.install()
    check_command_line()
    from adarem.cli.train import run

    run()


# arguments after which a command only prints (its help; Hydra's config, info, completion)
PRINT_ONLY = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")


def print_only_dies_on_closed_pipe(argv: list[str]) -> None:
    """A command that only prints (PRINT_ONLY: ``train.py --cfg job | head``) ends like cat when its
    reader goes away: silently, by SIGPIPE. Hydra catches the BrokenPipeError of ``--cfg`` itself
    and prints a traceback; ``--info`` writes through logging, which prints one per line; argparse
    swallows it and exits 0. A command that trains keeps Python's SIGPIPE handling (stdout_gone)."""
    import signal

    if any(_print_only(a) for a in argv):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def _print_only(arg: str) -> bool:
    """``arg`` is one of PRINT_ONLY as argparse reads it: a long option abbreviated (--inf), a short
    one with its value attached (-cjob)."""
    flag = arg.split("=")[0]
    if flag.startswith("--"):
        return len(flag) > 2 and any(o.startswith(flag) for o in PRINT_ONLY if o.startswith("--"))
    return flag[:2] in ("-h", "-c", "-i") or flag.startswith("-sc")


def run_command(main: Callable[[], int]) -> None:
    """Run a command's ``main`` (adarem-compare, adarem-tables) and exit with its code, sooner: the
    interpreter's teardown ran the garbage collector over every object of torch, timm, pandas and
    matplotlib (2-3 s of a 2-core machine); gc.freeze() puts them out of its reach, while the atexit
    hooks still run. The command has written and closed its files by then. (Trial processes do the
    same with adarem.protocol.dispatch.freeze_heap_at_exit; train.py skips the teardown altogether,
    adarem.cli.train.run.)"""
    import gc

    print_only_dies_on_closed_pipe(sys.argv[1:])
    try:
        code = main()
    except BrokenPipeError:
        code = stdout_gone()
    gc.freeze()
    sys.exit(code)


def stdout_gone() -> int:
    """After a BrokenPipeError on stdout (``--help | head``, a reader that went away): no traceback,
    stdout pointed at /dev/null so that the exit's flush does not raise it again, and exit code 1,
    as the Python documentation advises (Note on SIGPIPE, in the signal module's)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 1


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in a traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    prefix = f"{type(exc).__name__}: "
    for line in reversed(lines):
        if line.startswith(prefix) or f".{prefix}" in line:
            return line.split(prefix, 1)[1]
    return lines[0] if lines else type(exc).__name__


def _is_multirun(argv: list[str]) -> bool:
    return any(a in MULTIRUN_FLAGS or a.replace(" ", "").lower() == "hydra.mode=multirun" for a in argv)


def _sweep_jobs(overrides: list[str]) -> tuple[list[str], list[list[str]]]:
    """The overrides of a sweep's base configuration (what hydra.sweep.dir comes from) and of each
    job, as Hydra's basic sweeper expands them (``a=1,2 b=x,y``: four jobs; range() and glob())."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    parsed = parser.parse_overrides(overrides)
    if any(o.get_key_element().lstrip("+~") == "hydra/sweeper" for o in parsed):
        return overrides, []  # another sweeper expands the jobs its own way: check the base only
    base = [o.input_line for o in parsed if not o.is_sweep_override()]
    return base, BasicSweeper.split_arguments(parsed, None)[0]


def check_config(config, num: int | None = None) -> None:
    """What train() checks first (adarem.config.validate: unknown keys, ranges), on a run's
    configuration as Hydra hands it over: one sweep job's (``num``: job number and output dir set
    as the launcher sets them) or a single run's (``num`` None: output dir = hydra.run.dir)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    from adarem.config import validate

    HydraConfig.instance().set_config(config)  # hydra.run.dir may need ${hydra:...} (via ${run_id:})
    with read_write(config.hydra), open_dict(config.hydra):
        if num is None:
            config.hydra.runtime.output_dir = str(OmegaConf.select(config, "hydra.run.dir"))
        else:
            config.hydra.job.num = config.hydra.job.id = num  # as Hydra's basic launcher sets them
            config.hydra.runtime.output_dir = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                                                           str(OmegaConf.select(config, "hydra.sweep.subdir")))
    HydraConfig.instance().set_config(config)
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    validate(task)


_checked = False  # the command line was checked in this process (check_command_line)


def check_command_line() -> None:
    """register_configs() and preflight() on sys.argv, once per process: called by every entry
    point before it imports torch and the harness (seconds), so that a bad override or value
    costs a fraction of a second and one line."""
    global _checked
    if _checked:
        return
    _checked = True
    print_only_dies_on_closed_pipe(sys.argv[1:])
    run_dir_as_hydras(sys.argv)
    from adarem.config import register_configs

    register_configs()
    preflight(sys.argv[1:])


def run_dir_as_hydras(argv: list[str]) -> None:
    """``run_dir=X`` on the command line becomes ``hydra.run.dir=X`` (in place): run_dir defaults to
    Hydra's run directory, and given on its own it left Hydra writing train.log into the
    config-derived runs/... folder, one shared by every launch of that configuration whatever its
    run_dir, while X got none. Not in a multirun (-m), whose jobs get Hydra's sweep folders; both
    given, and different, is refused in one line."""
    if _is_multirun(argv[1:]):
        return
    given = [(i, a.split("=", 1)[1]) for i, a in enumerate(argv) if i and a.lstrip("+").startswith("run_dir=")]
    hydras = [a.split("=", 1)[1] for a in argv[1:] if a.lstrip("+").startswith("hydra.run.dir=")]
    if not given or "${hydra:" in given[-1][1]:  # run_dir='${hydra:run.dir}/sub': Hydra's dir, not its own
        return
    if hydras and os.path.abspath(hydras[-1]) != os.path.abspath(given[-1][1]):
        print(f"error: run_dir={given[-1][1]} and hydra.run.dir={hydras[-1]} name two run directories; give one of "
              f"them", file=sys.stderr)
        sys.exit(2)
    for i, value in given:
        argv[i] = f"hydra.run.dir={value}"


def composition_error(exc: BaseException, overrides: list[str]) -> str:
    """Hydra's error for a command line it cannot compose, as one line: its lines and its causes'
    (e.g. "Key 'foo' not in 'TrainerConfig'" says the most), without the noise; a remedy added where
    Hydra names none (train.py and compare.py say the same)."""
    noise = ("full_key:", "reference_type", "object_type", "Config search path", "provider=",
             "Set the environment variable", "To append to your config")
    lines: list[str] = []
    while exc is not None:
        lines += [line.strip() for line in str(exc).splitlines()
                  if line.strip() and not line.strip().startswith(noise) and line.strip() not in lines]
        exc = exc.__cause__
    message = "; ".join(lines).replace(":; ", ": ").replace(".; ", "; ")
    # Hydra quotes an override as its Python repr ("Override(type=<OverrideType.DEL: 4>, ...,
    # input_line='~=1', ...)"): the user's own text instead
    message = re.sub(r"\s*:?\s*Override\(type=.*?input_line=(['\"])(.*?)\1.*?\)", r": \2", message)
    for arg in overrides:  # Hydra's words for a refused deletion ("does not support deletion", "Missing
        key = arg[1:].split("=")[0] if arg.startswith("~") else ""  # mandatory value") say no remedy
        if key and (message.startswith(f"Error merging override {arg};")
                    or re.search(rf"Missing mandatory value: {re.escape(key)}(?![\w.])", message)):
            message += (f" ({arg} deletes a setting or config group; train.py needs every one of them: "
                        f"set a value instead, {key}=VALUE)")
            break
    if "override deletion value must be" in message:  # ~=1, ~optimizer=1
        message += " (to set a value write KEY=VALUE, without the ~)"
    if message.startswith("LexerNoViableAltException") and any(ord(c) > 127 for a in overrides
                                                                for c in a.partition("=")[2]):
        message += " (values with non-ASCII characters must be quoted: key='value')"  # the lexer's one remedy
    return message


def preflight(argv: list[str]) -> None:
    """Compose the config as @hydra.main will, so that a bad override (unknown key or option,
    wrong type) fails with one line instead of Hydra's multi-line report, and check that the run
    directory (which Hydra creates before train() runs) can be created. A sweep (-m) gets the same
    for every job, plus train()'s value checks, so that a bad job stops it before its first job
    runs (its directory checked: hydra.sweep.dir). Skipped for Hydra's other flags."""
    multirun = _is_multirun(argv)
    overrides = [a for a in argv if a not in MULTIRUN_FLAGS]
    if not overrides or any(a.startswith("-") for a in overrides) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from adarem.config import ConfigError

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            if multirun:
                overrides, jobs = _sweep_jobs(overrides)
                for num, job in enumerate(jobs):
                    check_config(compose("config", overrides=job, return_hydra_config=True), num)
            composed = compose("config", overrides=overrides, return_hydra_config=True)
            if not multirun:  # train()'s value checks, before the seconds-long imports of a run
                check_config(copy.deepcopy(composed), None)
        HydraConfig.instance().set_config(composed)  # ${hydra:...} in a value resolves as under @hydra.main
        run_dir = Path(str(OmegaConf.select(composed, "hydra.sweep.dir" if multirun else "hydra.run.dir")))
    except ConfigError as exc:  # a sweep job's bad value: train() would say the same, one line
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - every composition error becomes one line
        message = composition_error(exc, overrides)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        print(f"error: cannot create or write the {'sweep' if multirun else 'run'} directory {run_dir} "
              f"({exc.strerror}); choose a writable hydra.{'sweep' if multirun else 'run'}.dir", file=sys.stderr)
        sys.exit(2)
