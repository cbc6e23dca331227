"""One logging set-up for the CLI and the pipeline stages."""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

NOISY = ("mlflow", "alembic", "urllib3", "git", "matplotlib", "PIL", "dvc", "filelock",
         "fsspec", "sqlalchemy", "httpx", "asyncio")


def setup_logging(verbose: bool = False, log_file: str | Path | None = None) -> None:
    """Console lines on stderr (DEBUG with verbose), optionally a rotating file too."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(log_file, maxBytes=5_000_000,
                                                        backupCount=3)
        rotating.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(rotating)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # MLflow configures its own loggers when imported (later, lazily): tell it through its env.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
