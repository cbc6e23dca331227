"""The one exception type users can cause, and the guard that turns it into `error: ...`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class TinyLLMError(Exception):
    """A problem with the user's input (params, corpus, model, URI) described in one line."""

    exit_code = 1


def exit_on_error(main: Callable[[], object]) -> None:
    """Run an entry point; print our errors as one line and exit non-zero, never a traceback."""
    try:
        main()
    except TinyLLMError as exc:
        logging.getLogger(__name__).debug("error details", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
