"""The one exception type users can cause, and the guard that turns it into `error: ...`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class TinyLLMError(Exception):
    """A problem with the user's input (params, corpus, model, URI) described in one line."""

    exit_code = 1


def store_failure(exc: BaseException) -> str | None:
    """One line for a failure of the MLflow store (a database or server problem, not a bug)."""
    if not type(exc).__module__.startswith(("mlflow.", "sqlalchemy.")):
        return None
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"MLflow store failed: {first_line}"


def exit_on_error(main: Callable[[], object]) -> None:
    """Run an entry point; print our errors as one line and exit non-zero, never a traceback."""
    try:
        main()
    except Exception as exc:
        message = str(exc) if isinstance(exc, TinyLLMError) else store_failure(exc)
        if message is None:
            raise
        logging.getLogger(__name__).debug("error details", exc_info=True)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
