"""The one exception type users can cause, and the guard that turns it into `error: ...`."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import NoReturn


class TinyLLMError(Exception):
    """A problem with the user's input (params, corpus, model, URI) described in one line."""

    exit_code = 1

    def __init__(self, *args, key: str | None = None):
        super().__init__(*args)
        self.key = key  # the setting it is about (a params key, a sampling field), if one


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message as one line that ends with its detail (MLflow's run to pages).

    A first line ending in a colon ("...failures occurred while downloading ...:") is followed
    by the last meaningful line below it (the failure itself), or else by the exception's type.
    A line over `limit` characters keeps its whole sentences up to the limit: never cut mid-way.
    """
    lines = [line.strip() for line in str(exc).splitlines()
             if re.search(r"\w", line) and not line.strip().startswith("#")]
    if not lines:
        return type(exc).__name__
    line = lines[0]
    if line.endswith(":"):
        line = f"{line} {lines[-1] if len(lines) > 1 else type(exc).__name__}"
    return whole_sentences(line, limit)


def whole_sentences(text: str, limit: int) -> str:
    """text cut after its last sentence that ends within limit characters (all of it if none)."""
    if len(text) <= limit:
        return text
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", text[:limit + 1])]
    return text[:ends[-1]] if ends else text


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for a failure the user can act on; None for a bug.

    Besides our own errors, failures of the MLflow store (its database or server, raised from
    mlflow or SQLAlchemy) are the user's environment, not a bug in tinyllm.
    """
    if isinstance(exc, TinyLLMError):
        return str(exc)
    if type(exc).__module__.startswith(("mlflow.", "sqlalchemy.")):
        return f"MLflow failed: {first_line(exc)}"
    return None


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit; the traceback goes to the DEBUG log only."""
    logging.getLogger(__name__).debug("error details", exc_info=True)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def fail_on_user_error(exc: Exception) -> NoReturn:
    """fail() with exc's one-line message, or raise exc again when it is a bug."""
    message = user_error_message(exc)
    if message is None:
        raise exc
    fail(message, getattr(exc, "exit_code", 1))


def exit_on_error(main: Callable[[], object]) -> None:
    """Run an entry point; print our errors as one line and exit non-zero, never a traceback."""
    try:
        main()
    except Exception as exc:
        fail_on_user_error(exc)
    except KeyboardInterrupt:
        fail("interrupted", 130)
