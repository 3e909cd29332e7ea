"""Durability helpers shared by the checkpoint writer, the optimizer's kernel cache and the tools
that build a directory all or nothing (torch-free, so that the optimizer-only install can use
them).

Building all or nothing: a tool fills a hidden sibling of its destination, the *staging folder*
``.<dest>.staging-XXXXXXXX`` (``staging_folder``), and moves what it made into place once complete:
the whole tree by one rename (``staged_directory``: export_runs, prepare_imagenet's val layout, the
wandb download) or file by file (``adarem.results.report.staged_output``). The staging folder holds
two entries: ``.writer.json``, the marker naming the process that writes it (host, kernel boot id,
pid, the pid's start time and namespace), and ``content/``, what the tool writes (and what becomes
``dest`` itself in ``staged_directory``: the marker never ends up inside ``dest``). A tool that is
killed (``kill -9``, a node lost) cannot clean up; the next one into the same destination removes
its staging folder first (``remove_dead_stagings``), never a live writer's, never anything that
does not match that name exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def fsync_dir(path) -> None:
    """Make a rename inside ``path`` durable: without it a crash can leave the old directory entry."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src, dst) -> None:
    """``os.replace(src, dst)`` with ``src``'s data on disk before the rename and the rename on disk
    after it: a crash leaves either the old ``dst`` or the complete new one."""
    with open(src, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


# --- staging folders and their writers ------------------------------------------------------------------

# in a staging folder: who writes it (host, boot id, pid, the pid's start time and namespace)
WRITER_MARKER = ".writer.json"
# in a staging folder: what the writer writes (staged_directory renames it to dest)
CONTENT = "content"
# in a staging folder, while staged_directory(replace=True) swaps: the dest it replaces
REPLACED = "replaced"
# a staging folder whose writer cannot be asked (no marker yet or unreadable, another host, kernel
# boot or pid namespace) is a dead writer's only once nothing in it changed for this long: these
# tools take minutes, an ImageNet layout less than an hour
UNASKABLE_STALE_S = 24 * 3600


_MKDTEMP_SUFFIX = r"[a-z0-9_]{8}"  # what tempfile.mkdtemp appends to a staging folder's prefix


def staging_prefix(dest: Path) -> str:
    """The start of the name of ``dest``'s staging folders (tempfile.mkdtemp adds 8 characters)."""
    return f".{Path(dest).name}.staging-"


def _staging_name(dest: Path) -> re.Pattern:
    return re.compile(re.escape(staging_prefix(dest)) + _MKDTEMP_SUFFIX)


def is_staging_folder_name(name: str) -> bool:
    """Whether ``name`` is a staging folder's (of any destination): what a reader of a tree skips,
    as it holds an unfinished writer's copy, or a killed one's."""
    return re.fullmatch(r"\..+\.staging-" + _MKDTEMP_SUFFIX, name) is not None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None where /proc
    cannot say (not Linux, gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _boot_id() -> str | None:
    """This kernel's boot id: random per boot, so two machines (or containers of two machines) that
    share a hostname and the default pid namespace's inode are still told apart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _writer() -> dict:
    stat = _proc_stat(os.getpid())
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "start_ticks": stat[1] if stat else None, "pid_ns": _pid_namespace(), "time": time.time()}


def _writer_alive(marker: dict) -> bool | None:
    """Whether the process a staging folder's marker names still runs; None where this process
    cannot tell (another host, kernel boot or pid namespace, a marker it cannot read)."""
    try:
        pid = int(marker["pid"])
        boot = _boot_id()
        if (marker["host"] != socket.gethostname() or boot is None or marker.get("boot_id") != boot
                or marker.get("pid_ns") != _pid_namespace() or pid <= 0):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process, alive
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    # a zombie (killed, not yet reaped) writes nothing more; a pid reused by another process since
    # has another start time
    return state != "Z" and (marker.get("start_ticks") is None or start == marker["start_ticks"])


def _changed_since(folder: Path, since: float) -> bool:
    """Whether anything in ``folder`` (itself, its marker, any directory or file below it) changed at
    or after ``since``. Stops at the first recent entry, so a live writer's folder costs little; a
    dead one's walk stats every entry (about 1 s per 250,000 on a local disk), which is less than
    its removal costs. Asked only of a folder whose writer cannot be asked (another host, no
    readable marker). Files count: a writer on another host may only be appending to one. Raises
    OSError when ``folder`` itself is gone."""
    if os.lstat(folder).st_mtime >= since:
        return True
    with contextlib.suppress(OSError):
        if os.lstat(folder / WRITER_MARKER).st_mtime >= since:
            return True
    stack = [str(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):  # removed meanwhile: says nothing recent
                        if entry.stat(follow_symlinks=False).st_mtime >= since:
                            return True
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
        except OSError:  # removed meanwhile, or unreadable: says nothing recent
            continue
    return False


def remove_dead_stagings(dest: Path) -> list[Path]:
    """Remove the staging folders of ``dest`` (its hidden siblings ``.<dest>.staging-XXXXXXXX``) left
    by writers that died before cleaning up (``kill -9``, a node lost): those whose marker names a
    process of this host, boot and pid namespace that is gone, and those whose writer cannot be
    asked (no readable marker, another host) once nothing in them changed for UNASKABLE_STALE_S. A
    folder of a writer running now is never removed, nor anything whose name is not exactly a
    staging folder's. A dead writer's folder that holds the ``dest`` a replacing writer had moved
    aside (``replaced``, killed between its two renames) gives it back when ``dest`` is missing.
    Returns the folders removed."""
    dest = Path(os.path.abspath(dest))
    pattern = _staging_name(dest)
    try:
        candidates = sorted(p for p in dest.parent.iterdir() if pattern.fullmatch(p.name))
    except OSError:
        return []
    removed = []
    for folder in candidates:
        try:
            if folder.is_symlink() or not folder.is_dir():
                continue
            try:
                alive = _writer_alive(json.loads((folder / WRITER_MARKER).read_text()))
            except (OSError, ValueError, AttributeError):
                alive = None
            if alive is None:
                alive = _changed_since(folder, time.time() - UNASKABLE_STALE_S)
        except OSError:  # removed meanwhile by another writer
            continue
        if not alive:
            with contextlib.suppress(OSError):  # killed mid-swap: the old dest is all there is
                if (folder / REPLACED).is_dir() and not os.path.lexists(dest):
                    os.rename(folder / REPLACED, dest)
            shutil.rmtree(folder, ignore_errors=True)
            if not os.path.lexists(folder):  # not another user's folder that this one may not empty
                removed.append(folder)
    return removed


class StagingError(FileExistsError):
    """A destination this process cannot fill as asked (not a directory, or its staging folder taken
    over by another process); the message names the path and what to do. A FileExistsError, so
    that callers telling local write problems from others (a network error) can catch it."""


@dataclass
class Staging:
    """A staging folder of this process: ``folder`` (the hidden sibling), ``content`` (what to fill)."""
    dest: Path
    folder: Path
    marker: str  # the marker's text as written

    @property
    def content(self) -> Path:
        return self.folder / CONTENT

    def ours(self) -> bool:
        """Whether the folder still holds this process's marker: another writer may have judged this
        one dead (a writer it could not ask) and removed the folder meanwhile."""
        try:
            return (self.folder / WRITER_MARKER).read_text() == self.marker
        except OSError:
            return False

    def check_ours(self) -> None:
        """Raise (one line) unless the folder is still ours: then nothing of it may go into dest."""
        if not self.ours():
            raise StagingError(f"{self.folder}: this staging folder was removed or replaced by another process "
                               f"while it was written; {self.dest} is left as it was: run again")


@contextlib.contextmanager
def staging_folder(dest: Path):
    """A new staging folder of ``dest`` (see the module's docstring), after removing the dead
    writers' ones (``remove_dead_stagings``); yields its ``Staging``. Removed when the block ends,
    with or without an error, if it is still ours (a folder another process took over is its).
    ``dest`` is made absolute first: a relative one would point elsewhere once a replacing writer
    has moved a working directory inside ``dest`` aside."""
    dest = Path(os.path.abspath(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_stagings(dest)
    folder = Path(tempfile.mkdtemp(prefix=staging_prefix(dest), dir=dest.parent))
    stage = Staging(dest, folder, json.dumps(_writer()))
    try:
        (folder / WRITER_MARKER).write_text(stage.marker)
        # a plain mkdir: the umask's mode (mkdtemp's 0700 would hide a renamed dest from a group)
        stage.content.mkdir()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        yield stage
    finally:
        if stage.ours():
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(dest: Path, replace: bool = False):
    """A new directory to fill (a staging folder's ``content``), renamed to ``dest`` when the block
    ends without an exception and removed when it raises: a stopped run (disk full, Ctrl-C) never
    leaves a half-made ``dest`` that a later run takes for a complete one, and a killed one's is
    removed by the next run into ``dest`` (``staging_folder``). The directory gets the umask's mode.
    An empty ``dest`` is replaced (POSIX rename); a non-empty one makes the rename fail, unless
    ``replace``: then an existing ``dest`` directory is moved into the staging folder and removed
    with it (a run killed between the two renames leaves no ``dest``, and the old one in its staging
    folder, which the next run into ``dest`` gives back: ``remove_dead_stagings``). The rename fails
    (one line, ``dest`` untouched) when the staging folder is no longer ours."""
    with staging_folder(dest) as stage:
        dest = stage.dest  # absolute (staging_folder)
        yield stage.content
        stage.check_ours()
        if replace and os.path.lexists(dest):
            if dest.is_symlink() or not dest.is_dir():
                raise StagingError(f"{dest} is not a directory; move it away or write elsewhere")
            old = stage.folder / REPLACED
            os.rename(dest, old)
            try:
                os.rename(stage.content, dest)
            except BaseException:
                os.rename(old, dest)
                raise
        else:
            os.rename(stage.content, dest)
