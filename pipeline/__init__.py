"""DVC stage entry points (`python3 -m pipeline.<stage>`); tinyllm.workflow does the work.

DVC runs a stage's command with whatever `python3` comes first on the user's PATH: typing
`.venv/bin/dvc repro` without activating .venv starts the system's, which lacks torch. Importing
this package (before any stage imports tinyllm) re-runs the stage under the project's .venv when
this interpreter lacks the project's packages, or stops with one line saying what to do. Plain
stdlib only: it runs under any python3.
"""

import importlib.util
import os
import sys
from pathlib import Path

# Packages every stage imports (a subset of pyproject.toml's dependencies).
REQUIRED = ("numpy", "torch", "yaml", "mlflow")
VENV = ".venv"


def _project_venvs():
    """The .venv of the DVC root (the real project, also for queued experiments) and of ours."""
    roots = [os.environ.get("DVC_ROOT"), str(Path(__file__).resolve().parents[1])]
    return [Path(root) / VENV for root in roots if root]


def _ensure_project_python():
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    here = Path(sys.prefix).resolve()
    for venv in _project_venvs():
        python = venv / "bin" / "python3"
        if python.exists() and venv.resolve() != here and getattr(sys, "orig_argv", None):
            os.execv(str(python), [str(python), *sys.orig_argv[1:]])
    print(f"error: {sys.executable} lacks the project's packages (no module named "
          f"'{missing[0]}'): activate the project's environment (`make install`, then "
          f"`. {VENV}/bin/activate`) and run dvc again", file=sys.stderr)
    sys.exit(1)


_ensure_project_python()
