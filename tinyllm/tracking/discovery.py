"""Which model to load: a model URI, or registry-aware discovery when none is given.

Without --model-uri the CLI takes the champion alias of the model named in ./params.yaml, else its
latest version, else the local models/model/ package, and says which and why. Looking never
creates an MLflow store where none exists.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

from tinyllm.config import TrackingConfig
from tinyllm.corpus import TEST
from tinyllm.errors import TinyLLMError
from tinyllm.layout import Layout, evaluation_of

log = logging.getLogger(__name__)

LOCAL_MODEL = Layout().model  # what `dvc repro` leaves in the project
# Every form load_model takes, and what it loads without one: the CLI's --model-uri help.
MODEL_URI_FORMS = ("models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest, "
                   "runs:/RUN_ID/PATH or a model package directory")
MODEL_URI_HELP = (f"{MODEL_URI_FORMS}. Default: the champion of the model named in "
                  f"./params.yaml, else its latest version, else ./{LOCAL_MODEL}.")


def open_store(explicit_uri: str | None):
    """(Store or None, uri). None when the store is a sqlite file that does not exist yet:
    merely opening it would create an empty mlflow.db."""
    from tinyllm.tracking.store import Store, choose_tracking_uri

    uri = choose_tracking_uri(explicit_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None, uri
    return Store(uri), uri


def registry_defaults() -> tuple[str, str, str]:
    """(registered model name, champion alias, where they came from)."""
    if Path("params.yaml").is_file():
        from tinyllm.config import load_params

        tracking = load_params("params.yaml").tracking
        return tracking.registry_name, tracking.champion_alias, "./params.yaml"
    defaults = TrackingConfig()
    return (defaults.registry_name, defaults.champion_alias,
            "the default, no ./params.yaml here")


def discover_model(store, store_uri: str) -> tuple[str, str]:
    """(model URI, why it was picked) when --model-uri is not given."""
    from mlflow.exceptions import MlflowException

    name, alias, source = registry_defaults()
    if store is None:
        missing = f"no MLflow store at {store_uri} yet"
    else:
        try:
            store.client.get_model_version_by_alias(name, alias)
            return f"models:/{name}@{alias}", f"the '{alias}' alias of '{name}' ({source})"
        except MlflowException:
            pass
        if store.client.search_model_versions(f"name='{name}'"):
            return f"models:/{name}/latest", (f"'{name}' ({source}) has no '{alias}' alias, "
                                              "so its latest version")
        missing = f"no registered model '{name}' ({source}) in {store.uri}"
    if LOCAL_MODEL.is_dir():
        return str(LOCAL_MODEL), f"{missing}; using the local package"
    raise TinyLLMError(f"no model to use: {missing} and no {LOCAL_MODEL}/ here; run `dvc repro` "
                       "(or `tinyllm train DATA`) to make one, or pass --model-uri")


def load_model(uri: str | None = None, device: str = "cpu", tracking_uri: str | None = None,
               notify: Callable[[str], None] = log.info, compile: bool = False):
    """The one model loader: a LoadedModel for any of MODEL_URI_FORMS, or for None the
    discovered one (notify says which and why). loaded.source says where it came from
    (a registry.ResolvedModel). compile: torch.compile it for generation."""
    return load_resolved(resolve(uri, tracking_uri, notify), device, compile)


def resolve(uri: str | None = None, tracking_uri: str | None = None,
            notify: Callable[[str], None] = log.info):
    """Where the model load_model(uri) loads is: a registry.ResolvedModel, its package in a local
    directory. Needs MLflow but not torch, so a server finds the model while its
    workers import torch."""
    from tinyllm.tracking.registry import resolve_model_uri

    store = None
    if uri is None or uri.startswith(("models:/", "runs:/")):
        store, store_uri = open_store(tracking_uri)
        if uri is None:
            uri, why = discover_model(store, store_uri)
            notify(f"using {uri}: {why}")
        elif store is None:
            raise TinyLLMError(f"cannot load {uri}: no MLflow store at {store_uri} yet; run "
                               "`dvc repro` to train and register a model")
    return resolve_model_uri(str(uri), store)


def load_resolved(resolved, device: str = "cpu", compile: bool = False):
    """The LoadedModel of a resolve()d model, on device (checked)."""
    from tinyllm.devices import select_device
    from tinyllm.package import load_package

    loaded = load_package(resolved.path, device=str(select_device(device, key="--device")))
    loaded.source = resolved
    if compile:
        loaded.compile()
    return loaded


def moves(uri: str) -> bool:
    """Whether the version a URI names can change: an alias or /latest."""
    return uri.startswith("models:/") and ("@" in uri or uri.endswith("/latest"))


def recorded_test_bits(loaded, tracking_uri: str | None = None) -> float | None:
    """The test bits/char recorded for a loaded model: the registered version's tag, the run's
    metric, the package's meta or the evaluation beside it; None when none holds it."""
    from tinyllm.tracking.runs import eval_metric
    from tinyllm.tracking.store import TEST_BITS_TAG

    resolved = loaded.source
    try:
        store = open_store(tracking_uri)[0] if resolved.name or resolved.run_id else None
        if store is not None and resolved.name and resolved.version:
            tags = store.client.get_model_version(resolved.name, resolved.version).tags
            if tags.get(TEST_BITS_TAG):
                return float(tags[TEST_BITS_TAG])
        if store is not None and resolved.run_id:
            metric = store.client.get_run(resolved.run_id).data.metrics.get(
                eval_metric(TEST, "bits_per_char"))
            if metric is not None:
                return float(metric)
        if TEST_BITS_TAG in loaded.meta:
            return float(loaded.meta[TEST_BITS_TAG])
        metrics = evaluation_of(resolved.path)
        if metrics.is_file():
            return json.loads(metrics.read_text())[TEST]["loss"] / math.log(2)
    except Exception as exc:  # a missing figure must not stop a chat
        log.debug("no test bits/char: %s", exc)
    return None


def title_of(resolved) -> str:
    if resolved.name and resolved.version:
        pinned = f"models:/{resolved.name}/{resolved.version}"
        return f"{resolved.name} version {resolved.version}" + (
            f" ({resolved.uri})" if resolved.uri != pinned else "")
    return resolved.uri


def pinned_uri(resolved) -> str:
    """The URI that names exactly this model, e.g. models:/tiny/3 for models:/tiny@champion."""
    if resolved.name and resolved.version:
        return f"models:/{resolved.name}/{resolved.version}"
    return resolved.uri
