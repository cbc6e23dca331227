"""`tinyllm restore`: the pipeline's model package put back from the MLflow registry after
`dvc exp run` deleted it (workflow.removed_model_hint says when).

Command-only code: no DVC stage imports it, so editing it re-runs nothing (tests/test_dvc_deps.py).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tinyllm.errors import TinyLLMError
from tinyllm.layout import Layout


@dataclass(frozen=True)
class Restored:
    uri: str  # the model URI restored
    version: str | None  # its registered version, when it names one
    paths: tuple[Path, ...]  # what was written: the model package, and the run handoff if new


def restore(model_uri: str | None, layout: Layout, tracking_uri: str | None = None) -> Restored:
    """Write layout.model (and layout.run_handoff, for evaluate) back from the MLflow registry.
    Never over an existing model.

    model_uri defaults to models:/NAME/latest, NAME being tracking.registry_name of params.yaml.
    """
    from tinyllm.io import replace_directory, staging_directory
    from tinyllm.tracking.registry import resolve_model_uri
    from tinyllm.tracking.runs import TrackedRun
    from tinyllm.tracking.store import Store

    if layout.model.exists():
        raise TinyLLMError(f"{layout.model} exists; move it aside to restore another model")
    uri = model_uri or f"models:/{_registry_name(layout.root / 'params.yaml')}/latest"
    store = Store(tracking_uri)
    model = resolve_model_uri(uri, store)
    staging = staging_directory(layout.model)
    shutil.copytree(model.path, staging, dirs_exist_ok=True)
    replace_directory(staging, layout.model)
    paths = [layout.model]
    if model.run_id and not layout.run_handoff.exists():
        run = store.client.get_run(model.run_id)
        experiment = store.client.get_experiment(run.info.experiment_id).name
        TrackedRun(store, model.run_id, experiment).write_handoff(layout.run_handoff)
        paths.append(layout.run_handoff)
    return Restored(uri, model.version, tuple(paths))


def _registry_name(params_file: Path) -> str:
    """tracking.registry_name of params.yaml, read leniently: after a refused `dvc exp run`
    the file still holds the refused value, which must not stop the restore."""
    import yaml

    from tinyllm.config import TrackingConfig

    try:
        return str(yaml.safe_load(params_file.read_text("utf-8"))["tracking"]["registry_name"])
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return TrackingConfig.registry_name
