"""What every stage's `main()` shares: logging set-up and one-line errors for bad input."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Callable


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
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:
        if not no_space(err):
            raise
        # A write outside the atomic outputs (a checkpoint, a log) hit a full disk: a line, not a traceback.
        print(f"error: no space left on the device ({err}); free some space and rerun", file=sys.stderr)
        sys.exit(1)


def no_space(err: BaseException | None) -> bool:
    """Whether `err`, or an error it came from, says the disk is full."""
    while err is not None:
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False
