"""What `tinyllm train` assembles before workflow.build trains: its data path checked, the model's
name, the params (./params.yaml or the defaults, the options on top) and the checkpoint.

Command-only code: no DVC stage imports it, so editing it re-runs nothing (tests/test_dvc_deps.py).
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from tinyllm.config import Params
from tinyllm.errors import TinyLLMError


def check_data_path(data_path: str) -> None:
    """A missing data path is an error that lists the text files under ./data/ instead."""
    if Path(data_path).exists():
        return
    from tinyllm.corpus import text_files_under

    found = text_files_under(Path("data")) if Path("data").is_dir() else []
    if found:
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        hint = f"text files under ./data/: {', '.join(map(str, found[:10]))}{more}"
    else:
        hint = "no text files under ./data/ either"
    raise TinyLLMError(f"data file not found: {data_path}; {hint}")


def model_name_for(data_path: str) -> str:
    """my_text.txt -> my_text; a directory -> its name; odd characters become '_'."""
    path = Path(data_path).resolve()
    stem = path.name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-") or "model"


def adhoc_params(data_path: str, name: str, register: bool, overrides: dict) -> Params:
    """./params.yaml (or the built-in defaults) training on data_path under the registry name
    `name`, tracked if `register`, with overrides ({params key: value}) on top, validated.

    data.val_fraction sets test_fraction too: one option holds out the same share for each.
    """
    from tinyllm.config import load_params_or_defaults, params_from_dict, set_keys

    raw = asdict(load_params_or_defaults())
    raw["data"]["corpus"] = data_path
    raw["tracking"]["registry_name"] = name
    raw["tracking"]["enabled"] = register
    set_keys(raw, overrides)
    if "data.val_fraction" in overrides:
        raw["data"]["test_fraction"] = overrides["data.val_fraction"]
    return params_from_dict(raw, "params.yaml and options")


def set_aside_checkpoint(checkpoints: Path, resume: bool) -> Path | None:
    """--resume needs the checkpoint; a fresh start moves it aside (never deletes it) and
    returns where to."""
    from tinyllm.io import set_aside
    from tinyllm.training.state import CHECKPOINT_FILE

    checkpoint = checkpoints / CHECKPOINT_FILE
    if resume:
        if not checkpoint.exists():
            raise TinyLLMError(f"--resume: no checkpoint at {checkpoint}; drop --resume to start "
                               "afresh (or check --output-dir/--name)")
        return None
    return set_aside(checkpoint) if checkpoint.exists() else None
