"""Write stage outputs so that a kill, a crash or a full disk never loses the last good ones.

`with atomic_outputs(files=[csv, metrics], dirs=[model]) as tmp:` write `tmp[csv]`, `tmp[metrics]` and the folder
`tmp[model]`; on success they replace the outputs together and durably. `atomic_file(path)` and `atomic_dir(path)`
do one output; `write_json(path, data)` one JSON file. `recover(paths)` finishes a commit that a killed process
left half done: readers of several outputs call it first, and every write does.

How: everything is written into one staging folder beside the outputs (`.<last name>.tmp-<pid>-*`) and fsynced;
a journal (`COMMIT`) naming each staged entry, its destination and both versions' inodes is then renamed into the
folder, the commit point; then each entry is renamed into place (a folder by an atomic exchange on Linux, so its
path always holds the old or the new one) and its folder fsynced. A process killed before the journal leaves the
old outputs; after it, `recover` does the renames still to do, unless an output changed since (a `dvc checkout`,
say), when the journal is stale and is dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from stages.common.errors import FULL_DISK_BYTES, UserError, free_bytes, no_space

JOURNAL = "COMMIT"


class OutOfSpace(UserError):
    """A write failed for lack of disk space; the previous outputs are untouched."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_writer(leftover: Path, kind: str) -> bool:
    """Whether `leftover` (`.<name>.<kind>-<pid>[-...]`) was left by a process that no longer runs."""
    name = leftover.name
    marker = f".{kind}-"
    if not name.startswith(".") or marker not in name:
        return False
    pid = name.rsplit(marker, 1)[1].split("-")[0]
    return pid.isdigit() and not _pid_alive(int(pid))


def fsync(path: Path) -> None:
    """Flush a file or folder to disk, so a rename that follows cannot outlive its content in a power loss."""
    sys.audit("stages.atomic.fsync", str(path))
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, and `root` itself."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync(Path(folder) / name)
        fsync(Path(folder))


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_renameat2 = getattr(_libc, "renameat2", None)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux `renameat2`); False where the platform or filesystem cannot."""
    if _renameat2 is None:
        return False
    sys.audit("stages.atomic.exchange", str(a), str(b))
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _identity(path: Path) -> list[int] | None:
    """What tells one version of a path from another: its inode (with size and mtime, for a file); None if absent."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return [stat.st_ino] if path.is_dir() else [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _install(staged: Path, dest: Path) -> None:
    """Rename the staged entry onto `dest` (a folder by an atomic exchange where the system has one)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not (staged.is_dir() and dest.exists() and _exchange(staged, dest)):
        if staged.is_dir() and dest.exists():
            # No atomic exchange here: move the old folder into the staging folder, then the new one in. A kill
            # between leaves `dest` missing until `recover` renames it in.
            os.rename(dest, staged.with_name(staged.name + ".old"))
        os.replace(staged, dest)
    fsync(dest.parent)


def _pending(entry: dict[str, Any], staging: Path, root: Path) -> bool | None:
    """After a kill: whether the entry is still to install (True), installed (False), or neither (None: its
    output was changed since by someone else, a `dvc checkout` or the next run, so the journal is stale)."""
    dest, staged = _identity(root / entry["dest"]), _identity(staging / entry["staged"])
    if dest == entry["new"]:
        return False
    set_aside = _identity(staging / (entry["staged"] + ".old"))  # the old folder, where there is no exchange
    old_there = dest == entry["old"] or (dest is None and set_aside == entry["old"])
    return True if old_there and staged == entry["new"] else None


def _roll_forward(staging: Path, root: Path) -> bool:
    """Finish a dead writer's commit journaled in `staging`, unless its outputs changed since (then False)."""
    entries = json.loads((staging / JOURNAL).read_text())
    pending = [_pending(entry, staging, root) for entry in entries]
    if None in pending:
        return False
    for entry, todo in zip(entries, pending, strict=True):
        if todo:
            _install(staging / entry["staged"], root / entry["dest"])
    return True


def _staging_root(paths: Iterable[Path]) -> Path:
    parents = [os.path.abspath(path.parent) for path in paths]
    return Path(os.path.commonpath(parents))


def _recover_root(root: Path, legacy_names: Iterable[str] = ()) -> None:
    """Finish or discard what dead writers left in `root`: journaled commits are redone, others removed."""
    if not root.is_dir():
        return
    for staging in sorted(root.glob(".*.tmp-*")):
        if staging.is_dir() and _dead_writer(staging, "tmp"):
            if (staging / JOURNAL).is_file():
                _roll_forward(staging, root)
                (staging / JOURNAL).unlink()
            shutil.rmtree(staging)
    for name in legacy_names:
        for tmp in root.glob(f".{name}.tmp-*"):
            if tmp.is_file() and _dead_writer(tmp, "tmp"):
                tmp.unlink()  # an earlier version's temporary file
        # Earlier versions moved an old output aside as `.<name>.old-<pid>` before renaming the new one in.
        for old in root.glob(f".{name}.old-*"):
            if _dead_writer(old, "old"):
                if not (root / name).exists():
                    os.replace(old, root / name)  # killed between the two renames: the old output is the good one
                elif old.is_dir():
                    shutil.rmtree(old)
                else:
                    old.unlink()


def recover(paths: Iterable[Path]) -> None:
    """Finish any commit of `paths` that a killed process left half done (see the module docstring)."""
    paths = list(paths)
    if not paths:
        return
    _recover_root(_staging_root(paths))
    for path in paths:
        _recover_root(Path(os.path.abspath(path.parent)), [path.name])


@contextlib.contextmanager
def atomic_outputs(files: Iterable[Path] = (), dirs: Iterable[Path] = ()) -> Iterator[dict[Path, Path]]:
    """Yield a temporary path for each output (an empty folder for each of `dirs`); on success all replace
    their outputs as one commit: folders first, then files in the order given, so a reader's file goes last.

    A failure for lack of space raises `OutOfSpace`, naming the outputs; the previous ones stay untouched.
    """
    files, dirs = list(files), list(dirs)
    outputs = dirs + files
    root = _staging_root(outputs)
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
    # A process killed outright (SIGKILL) cannot clean up: its pid in the staging name lets the next write do it.
    recover(outputs)
    staging = Path(tempfile.mkdtemp(prefix=f".{outputs[-1].name}.tmp-{os.getpid()}-", dir=root))
    staged = {path: staging / f"{i}-{path.name}" for i, path in enumerate(outputs)}
    committed = False
    try:
        for path in dirs:
            staged[path].mkdir()
        yield staged
        entries = [_journal_entry(staged[path], path, root) for path in outputs]
        fsync_tree(staging)
        journal = staging / f"{JOURNAL}.tmp"
        journal.write_text(json.dumps(entries, indent=1) + "\n")
        fsync(journal)
        sys.audit("stages.atomic.commit", str(staging))
        os.rename(journal, staging / JOURNAL)  # the commit point: from here on `recover` completes the commit
        committed = True
        fsync(staging)
        for path in outputs:
            _install(staged[path], path)
    except Exception as err:
        if not committed and not isinstance(err, UserError) and (no_space(err) or free_bytes(root) < FULL_DISK_BYTES):
            names = ", ".join(str(path) for path in outputs)
            raise OutOfSpace(
                f"no space left on the device while writing {names} ({err}); free some space and rerun; "
                "the previous outputs are untouched"
            ) from err
        raise
    else:
        (staging / JOURNAL).unlink()
    finally:
        # A commit that failed past its commit point stays for `recover` to finish; anything else is discarded.
        if not (staging / JOURNAL).is_file():
            shutil.rmtree(staging, ignore_errors=True)


def _journal_entry(staged: Path, path: Path, root: Path) -> dict[str, Any]:
    if not staged.exists():
        raise FileNotFoundError(f"{path}: nothing was written to its temporary path {staged}")
    if staged.parent.stat().st_dev != path.parent.stat().st_dev:
        raise UserError(f"{path}: on another filesystem than {root}, so it cannot be renamed into place atomically")
    dest = os.path.relpath(os.path.abspath(path), root)
    return {"staged": staged.name, "dest": dest, "new": _identity(staged), "old": _identity(path)}


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `path` whole."""
    with atomic_outputs(dirs=[path]) as staged:
        yield staged[path]


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    with atomic_outputs(files=[path]) as staged:
        yield staged[path]


def write_json(path: Path, data: Any) -> None:
    """Write `data` as stable, human-readable JSON (sorted keys, trailing newline)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json_text(data))


def json_text(data: Any) -> str:
    """`data` as write_json writes it."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
