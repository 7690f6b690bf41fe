"""What every stage's `main()` shares: logging set-up and one-line errors for bad input."""

from __future__ import annotations

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
