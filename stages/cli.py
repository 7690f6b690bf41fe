"""What every stage's `main()` shares: logging set-up and one-line errors for bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Input the user must fix (params, data, paths); shown as one line, without a traceback."""


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's `main`, turning a `UserError` into `error: <message>` and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
