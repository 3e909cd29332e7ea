"""The commit an installed copy of the package (the cluster image's) was built from, verifiably.

A checkout's run.json gets its commit from ``git`` (``adarem.run.record.git_info``). An installed
copy has no repository around it, so the image records its provenance when it is built, in two
steps the Dockerfile runs, and ``git_info`` reads it back at run time:

1. ``describe`` (the Dockerfile's build-info stage, which alone sees the build context's ``.git``):
   the commit of the context's repository and whether the files the image copies (the paths
   given, the Dockerfile and .dockerignore among them) differ from that commit's files under
   those paths, compared with ``git ls-tree``: a changed, added (untracked or git-ignored) or
   missing file, or a symlink in place of a file, makes the build dirty. A file whose bytes are
   not the committed blob's is asked of git once more, through git's own filters (``git
   hash-object --stdin-paths``: core.autocrlf, .gitattributes eol/text, filter drivers), so a
   checkout that ``git status`` calls clean (Git for Windows' autocrlf=true, CRLF in the files)
   is clean here too. ``__pycache__`` folders are left out (bytecode that .dockerignore keeps out
   of the image); a ``*.pyc`` anywhere else is a file like any other: importable without its
   source. Dirty: ``diff_sha1``, a hash of which files differ and their contents, and
   ``changed_files``. Without a usable repository whose root is the context
   (no ``.git``, a worktree whose ``.git`` points outside the context, no git, no commit), commit
   and dirty are null and ``error`` says why; the build goes on. Run as a script, stdlib only:
   ``python -P adarem/run/build_info.py describe SRC PATH... > build-info.json``
2. ``seal`` (after ``pip install``): writes that description into the installed package as
   ``_build.json``, with ``files_sha256``, a hash of every file of the installed package (its
   configs, ``adarem/configs``, included; ``__pycache__`` folders and ``_build.json`` itself left
   out), and adds ``_build.json`` to the RECORD of the distribution that installed the package
   (with its sha256 and size, as pip writes rows), so that pip removes it with the package: a
   later ``pip install --force-reinstall`` of other code or a ``pip uninstall`` does not leave
   a description of code that is gone: ``python -P -m adarem.run.build_info seal build-info.json``
   (the command line requires that RECORD).

At run time ``read`` (for a copy no repository tracks) hashes the installed files again. The same
hash: the build's commit and dirty, with ``"source": "image build"`` and ``built_at``. Another hash
(files edited, added or removed in the container or a derived image since): the build's commit
with dirty true, ``changed_since_build`` true and a ``diff_sha1`` of the files as they are, so the
tables flag the run as code that no commit names. A commit is never returned with a dirty that
is not true or false. The file does not vouch for itself: anyone can write one, so it is what the
image's build said, checked against the files that run, not a signature.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

BUILD_FILE = "_build.json"
SOURCE = "image build"
FORMAT = 1
_SKIP_DIRS = {"__pycache__", ".git"}
_HEX = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


def _git(src: Path, *args: str, input: bytes | None = None) -> bytes:
    # safe.directory: the context's files may belong to another uid than the build's (rootless builds)
    return subprocess.run(["git", "-c", "safe.directory=*", "--literal-pathspecs", *args], cwd=src,
                          input=input, capture_output=True, check=True, timeout=60).stdout


def _blob_id(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, b"blob %d\0" % len(data) + data).hexdigest()


def _present(src: Path, paths: list[str], algorithm: str) -> dict[str, tuple[str, str]]:
    """path (relative, /) -> (kind, git blob id) of the files under ``paths`` in ``src``."""
    found: dict[str, tuple[str, str]] = {}

    def add(path: Path) -> None:
        rel = path.relative_to(src).as_posix()
        if path.is_symlink():
            found[rel] = ("link", _blob_id(os.fsencode(os.readlink(path)), algorithm))
        elif path.is_file():
            found[rel] = ("file", _blob_id(path.read_bytes(), algorithm))
        else:  # a socket, a fifo: nothing git could hold
            found[rel] = ("other", "")

    for name in paths:
        top = src / name
        if top.is_symlink() or (top.exists() and not top.is_dir()):
            add(top)
            continue
        for root, dirs, files in os.walk(top):
            for d in list(dirs):
                if Path(root, d).is_symlink():
                    dirs.remove(d)
                    add(Path(root, d))
                elif d in _SKIP_DIRS:
                    dirs.remove(d)
            for f in files:
                add(Path(root, f))
    return found


def _same_through_filters(src: Path, candidates: list[str], committed: dict) -> set[str]:
    """Of ``candidates`` (regular files, committed as regular files, whose bytes are not the
    committed blob), those that git's clean filters turn into the committed blob: what ``git
    status`` calls unchanged. A file git cannot hash (a filter that fails) stays changed."""
    # --stdin-paths reads one path a line and unquotes one that starts with '"': other names stay changed
    names = [p for p in candidates if not ({"\n", "\r"} & set(p)) and not p.startswith('"')]
    if not names:
        return set()
    try:
        oids = _git(src, "hash-object", "--stdin-paths",
                    input=b"".join(os.fsencode(p) + b"\n" for p in names)).decode().split()
    except (OSError, subprocess.SubprocessError):
        return set()
    if len(oids) != len(names):
        return set()
    return {p for p, oid in zip(names, oids) if oid == committed[p][1]}


def describe(src: str | os.PathLike, paths: list[str]) -> dict:
    """The build's provenance: the commit of the repository at ``src`` and whether the files under
    ``paths`` (relative to ``src``) are exactly that commit's files there."""
    src = Path(src).resolve()
    for name in paths:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{name}: a path inside the build context, relative to it")
    out = {"format": FORMAT, "commit": None, "dirty": None, "paths": list(paths),
           "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        top = Path(os.fsdecode(_git(src, "rev-parse", "--show-toplevel").strip())).resolve()
        if top != src:
            out["error"] = f"{src} is not the root of a git repository (the repository found is {top})"
            return out
        commit = _git(src, "rev-parse", "--verify", "HEAD^{commit}").decode().strip()
        algorithm = _git(src, "rev-parse", "--show-object-format").decode().strip() or "sha1"
        listing = _git(src, "ls-tree", "-r", "-z", "--full-tree", "HEAD", "--", *paths)
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", None)
        reason = err.decode(errors="replace").strip().splitlines()[-1] if err else str(exc)
        out["error"] = f"git could not describe {src}: {reason}"
        return out
    kinds = {"100644": "file", "100755": "file", "120000": "link"}
    committed = {}
    for entry in filter(None, listing.split(b"\0")):
        meta, _, name = entry.partition(b"\t")
        mode, _, oid = meta.split(b" ")
        committed[os.fsdecode(name)] = (kinds.get(mode.decode(), mode.decode()), oid.decode())
    present = _present(src, paths, algorithm)
    differ = sorted(p for p in committed.keys() | present.keys() if committed.get(p) != present.get(p))
    same = _same_through_filters(src, [p for p in differ if committed.get(p, ("",))[0] == "file"
                                       and present.get(p, ("",))[0] == "file"], committed)
    differ = [p for p in differ if p not in same]
    out.update(commit=commit, dirty=bool(differ))
    if differ:
        text = "".join(f"{p}\0{':'.join(committed.get(p, ('-', '-')))}\0{':'.join(present.get(p, ('-', '-')))}\n"
                       for p in differ)
        out["diff_sha1"] = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()
        out["changed_files"] = differ[:50]
        out["changed_files_count"] = len(differ)
    return out


def files_sha256(package: str | os.PathLike) -> str:
    """A hash of every file of an installed package: relative paths and contents (symlinks by
    their target), without ``__pycache__`` folders and the package's own ``_build.json`` (a
    ``*.pyc`` elsewhere is importable without its source: it counts)."""
    package = Path(package)
    h = hashlib.sha256()
    entries = []
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS or Path(root, d).is_symlink())
        for name in files + [d for d in dirs if Path(root, d).is_symlink()]:
            path = Path(root, name)
            rel = path.relative_to(package).as_posix()
            if rel == BUILD_FILE:
                continue
            if path.is_symlink():
                digest = "link:" + hashlib.sha256(os.fsencode(os.readlink(path))).hexdigest()
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                digest = "other"
            entries.append((rel, digest))
    for rel, digest in sorted(entries):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def _problem(info: object) -> str | None:
    """Why a build description cannot be used, None when it can."""
    if not isinstance(info, dict):
        return "not a JSON object"
    commit, dirty = info.get("commit"), info.get("dirty")
    if commit is None:
        return None if dirty is None else "dirty recorded without a commit"
    if not isinstance(commit, str) or not _HEX.fullmatch(commit):
        return f"commit {commit!r} is not a commit id"
    if not isinstance(dirty, bool):
        return f"commit {commit} with dirty {dirty!r} (neither true nor false)"
    return None


def record_of(package: str | os.PathLike) -> Path | None:
    """The RECORD of the distribution that installed ``package`` (a ``*.dist-info`` beside it
    listing files under it); None when none does (a package pip did not install); ValueError when
    several do (which one pip would remove the file with is not known)."""
    package = Path(package)
    prefix = package.name + "/"
    owners = []
    for info in sorted(package.parent.glob("*.dist-info")):
        try:
            with open(info / "RECORD", newline="", encoding="utf-8") as f:
                if any(row and row[0].replace("\\", "/").startswith(prefix) for row in csv.reader(f)):
                    owners.append(info / "RECORD")
        except FileNotFoundError:
            continue
    if len(owners) > 1:
        raise ValueError(f"several distributions install {package}: {', '.join(map(str, owners))}")
    return owners[0] if owners else None


def _add_to_record(record: Path, package: Path, path: Path) -> None:
    """``path`` (a file of ``package``) as a row of ``record``, as pip writes them: the path
    relative to the folder holding the package, sha256=<urlsafe base64, unpadded>, the size."""
    data = path.read_bytes()
    rel = f"{package.name}/{path.relative_to(package).as_posix()}"
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    raw = record.read_bytes()
    terminator = "\r\n" if b"\r\n" in raw else "\n"
    rows = [row for row in csv.reader(raw.decode("utf-8").splitlines()) if row and row[0] != rel]
    rows.append([rel, f"sha256={digest}", str(len(data))])
    tmp = record.with_name(record.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator=terminator).writerows(rows)
    os.replace(tmp, record)


def seal(description: dict, package: str | os.PathLike, require_record: bool = False) -> Path:
    """Write ``description`` (``describe``'s) into the installed ``package`` as ``_build.json``
    with the hash of its files, and list it in the RECORD of the distribution that installed the
    package (``record_of``; ``require_record``: ValueError, nothing written, without one)."""
    problem = _problem(description)
    if problem:
        raise ValueError(f"not a build description: {problem}")
    package = Path(package)
    record = record_of(package)
    if record is None and require_record:
        raise ValueError(f"no *.dist-info beside {package} lists its files: seal an installed package "
                         f"(pip would not remove its {BUILD_FILE})")
    data = {**description, "format": FORMAT, "files_sha256": files_sha256(package),
            "sealed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path = package / BUILD_FILE
    tmp = path.with_name(BUILD_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    if record is not None:
        try:
            _add_to_record(record, package, path)
        except BaseException:
            path.unlink()  # a file pip would not remove is worse than none
            raise
    return path


def read(package: str | os.PathLike) -> dict | None:
    """run.json's ``git`` for an installed copy: None without a ``_build.json`` (as before, the
    caller records null); otherwise the build's commit, checked against the files (module doc)."""
    path = Path(package) / BUILD_FILE
    if not path.exists():
        return None
    none = {"commit": None, "dirty": None, "source": SOURCE}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {**none, "error": f"{path} unreadable: {exc}"}
    problem = _problem(info) or (None if isinstance(info.get("files_sha256"), str) else "no files_sha256")
    if problem:
        return {**none, "error": f"{path}: {problem}"}
    built_at = info.get("built_at")
    if info["commit"] is None:
        return {**none, "built_at": built_at, "error": str(info.get("error") or "no commit recorded at build time")}
    out = {"commit": info["commit"], "dirty": info["dirty"]}
    if info["dirty"]:
        out["diff_sha1"] = info.get("diff_sha1") if isinstance(info.get("diff_sha1"), str) else None
    try:
        now = files_sha256(package)
    except OSError as exc:  # a file that cannot be read: what runs is not known to be what was built
        return {**none, "built_at": built_at, "error": f"the installed files could not be hashed: {exc}"}
    if now != info["files_sha256"]:
        # edited since the build: the commit is what they were built from, not what runs
        out.update(dirty=True, changed_since_build=True,
                   diff_sha1=hashlib.sha1(f"{out.get('diff_sha1') or ''}:{now}".encode()).hexdigest())
    return {**out, "source": SOURCE, "built_at": built_at}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: build_info.py describe SRC PATH...   (JSON on stdout)\n"
             "       build_info.py seal BUILD_INFO_JSON [PACKAGE_DIR]   (default: this installed package)")
    if len(argv) >= 3 and argv[0] == "describe":
        print(json.dumps(describe(argv[1], argv[2:]), indent=1, sort_keys=True))
        return 0
    if len(argv) in (2, 3) and argv[0] == "seal":
        package = Path(argv[2]) if len(argv) == 3 else Path(__file__).resolve().parents[1]
        description = json.loads(Path(argv[1]).read_text())
        path = seal(description, package, require_record=True)
        print(f"{path} (in {record_of(package)}): commit {description.get('commit')}, dirty {description.get('dirty')}"
              + (f" ({description['error']})" if description.get("error") else ""))
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
