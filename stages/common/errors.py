"""What every stage's `main()` shares: logging set-up and one-line errors for bad input."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm.auto import tqdm

# Below this many free bytes on a stage's filesystem, a failed write is taken for a full disk: torch reports one
# as "unexpected pos", safetensors without an errno.
FULL_DISK_BYTES = 16 * 2**20


class UserError(ValueError):
    """Input the user must fix (params, data, paths); shown as one line, without a traceback."""


class _RenameMain(logging.Filter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.module = name

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "__main__":
            record.name = self.module
        return True


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's `main`, turning a `UserError` into `error: <message>` and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Under `python -m stages.prepare` the stage's logger is `__main__`: log it by its module's name.
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_RenameMain(spec.name))
    try:
        main()
    except UserError as err:
        _close_progress_bars()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:
        full = full_filesystem(sys.argv[1:])
        if not no_space(err) and full is None:
            raise
        _close_progress_bars()
        # A write outside the atomic outputs (a checkpoint, a log) hit a full disk: a line, not a traceback.
        where = f" ({full} has {free_bytes(full):,} bytes free)" if full is not None else ""
        print(f"error: no space left on the device{where}: {err}; free some space and rerun", file=sys.stderr)
        sys.exit(1)


def _close_progress_bars() -> None:
    """Close the progress bars still open (tqdm), so the error line starts a line of its own."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def free_bytes(path: Path) -> int:
    """The bytes this process may still write on `path`'s filesystem."""
    stats = os.statvfs(path)
    # root may write into the blocks a filesystem reserves for it; others stop at `f_bavail`.
    return stats.f_frsize * (stats.f_bfree if os.geteuid() == 0 else stats.f_bavail)


def full_filesystem(args: Iterable[str]) -> Path | None:
    """The first of a stage's path arguments (or the folder it would go in) whose filesystem is all but full."""
    for arg in args:
        path = Path(arg)
        while not path.exists() and path != path.parent:
            path = path.parent
        if not arg.startswith("-") and path.exists() and free_bytes(path) < FULL_DISK_BYTES:
            return path
    return None


def no_space(err: BaseException | None) -> bool:
    """Whether `err`, or an error it came from, says the disk is full."""
    while err is not None:
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False
