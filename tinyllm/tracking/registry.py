"""The model registry and model URIs: which package a model URI (discovery.MODEL_URI_FORMS)
names, downloaded when it must be."""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tinyllm.errors import TinyLLMError, first_line
from tinyllm.tracking.store import REHOME_COMMAND, TEST_BITS_TAG, Store, foreign_mlruns, local_path


@dataclass
class ResolvedModel:
    path: Path  # the local model package directory
    uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))$")


def _missing(exc) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def registry_versions(store: Store, name: str) -> tuple[list, dict[str, str]]:
    """The versions of a registered model, oldest first, and its aliases (alias -> version)."""
    from mlflow.exceptions import MlflowException

    try:
        model = store.client.get_registered_model(name)
    except MlflowException as exc:
        if not _missing(exc):
            raise TinyLLMError(f"cannot read model '{name}' from {store.uri}: {exc}") from None
        names = sorted(m.name for m in store.client.search_registered_models())
        listed = ", ".join(names) if names else "none (run `dvc repro` to register one)"
        raise TinyLLMError(f"no registered model named '{name}' in {store.uri}; "
                           f"registered models: {listed}") from None
    versions = sorted(store.client.search_model_versions(f"name='{name}'"),
                      key=lambda v: int(v.version))
    aliases = getattr(model, "aliases", {}) or {}
    return versions, {alias: str(aliases[alias]) for alias in sorted(aliases)}


@dataclass(frozen=True)
class VersionRow:
    """One registered version as `tinyllm models` lists it; None where the store has no value."""

    name: str
    version: str
    aliases: tuple[str, ...]
    test_bits_per_char: float | None
    parameters: int | None
    created_ms: int | None
    run_id: str | None


def version_rows(store: Store, name: str | None = None) -> list[VersionRow]:
    """Every registered version (only NAME's, if given; an unknown NAME is an error listing the
    models there are) by name and version, with its aliases and its run's parameter count."""
    if name:
        versions, _ = registry_versions(store, name)
        registered = [store.client.get_registered_model(name)]
    else:
        versions = store.client.search_model_versions()
        registered = store.client.search_registered_models(max_results=1000)
    aliases: dict[tuple[str, str], list[str]] = {}  # versions found by search carry none
    for model in registered:
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault((model.name, str(version)), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: (v.name, int(v.version))):
        bits = v.tags.get(TEST_BITS_TAG)
        rows.append(VersionRow(v.name, str(v.version),
                               tuple(sorted(aliases.get((v.name, str(v.version)), []))),
                               float(bits) if bits else None, _parameters(store, v.run_id),
                               v.creation_timestamp, v.run_id or None))
    return rows


def _parameters(store: Store, run_id: str | None) -> int | None:
    """The model size its training run logged; None when there is no run or it is gone."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        value = store.client.get_run(run_id).data.params.get("derived.parameters")
    except MlflowException:
        return None
    return int(value) if value and value.isdigit() else None


def _version_for(store: Store, uri: str, name: str, version: str | None, alias: str | None):
    from mlflow.exceptions import MlflowException

    versions, aliases = registry_versions(store, name)
    if not versions:
        raise TinyLLMError(f"registered model '{name}' has no versions")
    if alias:
        try:
            return store.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            raise TinyLLMError(f"model '{name}' has no alias '{alias}' ({uri}); aliases: "
                               f"{', '.join(aliases) or 'none'}") from None
    if version == "latest":
        return versions[-1]
    match = [v for v in versions if str(v.version) == version]
    if not match:
        raise TinyLLMError(f"model '{name}' has no version '{version}' ({uri}); versions: "
                           f"{', '.join(str(v.version) for v in versions)}")
    return match[0]


def _package_in(directory: Path, uri: str) -> Path:
    """The model package in a downloaded artifact: itself, or inside a pyfunc's artifacts/."""
    candidates = [directory, *sorted((directory / "artifacts").glob("*"))]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise TinyLLMError(f"{uri} does not contain a tinyllm model package")


def _download(artifact_uri: str, uri: str, store: Store) -> Path:
    import mlflow

    path = local_path(artifact_uri)
    if path is not None and not path.exists():
        moved = store.is_local_sqlite and foreign_mlruns(artifact_uri, store.home)
        hint = (f"; {store.uri} was made in {moved[0].parent} and {store.home / 'mlruns'} has "
                f"no copy either: copy {moved[0]} there, then run `{REHOME_COMMAND}`"
                if moved else "")
        raise TinyLLMError(f"cannot download {uri}: {path} does not exist{hint}")
    destination = Path(tempfile.mkdtemp(prefix="tinyllm-model-"))
    atexit.register(shutil.rmtree, destination, ignore_errors=True)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri,
                                                    dst_path=str(destination),
                                                    tracking_uri=store.uri)
    except Exception as exc:  # MLflow raises several types for a missing artifact
        raise TinyLLMError(f"cannot download {uri}: {first_line(exc)}") from None
    return _package_in(Path(local), uri)


def _run_source(store: Store, run, uri: str, inner: str) -> str:
    """What to download for runs:/RUN/INNER: the URI, or in a moved project (Store.artifacts_here)
    this project's copy of the run's artifact INNER or of the run's logged model named so."""
    locations = [f"{run.info.artifact_uri.rstrip('/')}/{inner}".rstrip("/")]
    name, _, rest = inner.partition("/")
    if store.is_local_sqlite and name and "'" not in name:
        models = store.client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{name}'")
        locations += [f"{m.artifact_location.rstrip('/')}/{rest}".rstrip("/") for m in models
                      if m.source_run_id == run.info.run_id]
    moved = [here for here in map(store.artifacts_here, locations) if here not in locations]
    return moved[0] if moved else uri


def resolve_model_uri(uri: str, store: Store | None = None) -> ResolvedModel:
    """The local package directory a model URI (discovery.MODEL_URI_FORMS) names."""
    if "://" not in uri and ":/" not in uri:
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise TinyLLMError(f"model directory not found: {uri}")
        return ResolvedModel(path=_package_in(path, uri), uri=uri)
    if uri.startswith("models:/"):
        match = _MODELS_URI.match(uri)
        if not match:
            raise TinyLLMError(f"malformed model URI {uri!r}; expected models:/NAME/VERSION, "
                               "models:/NAME@ALIAS or models:/NAME/latest")
        store = store or Store()
        mv = _version_for(store, uri, match["name"], match["version"], match["alias"])
        source = store.client.get_model_version_download_uri(match["name"], mv.version)
        path = _download(store.artifacts_here(source), uri, store)
        return ResolvedModel(path=path, uri=uri, name=match["name"], version=str(mv.version),
                             run_id=mv.run_id)
    if uri.startswith("runs:/"):
        match = re.match(r"^runs:/(?P<run>[0-9a-zA-Z]+)(?:/(?P<path>.*))?$", uri)
        if not match:
            raise TinyLLMError(f"malformed run URI {uri!r}; expected runs:/RUN_ID/PATH")
        inner = match["path"] or ""
        if any(part == ".." for part in inner.split("/")) or inner.startswith("/"):
            raise TinyLLMError(f"model URI {uri!r} points outside its run's artifacts")
        store = store or Store()
        from mlflow.exceptions import MlflowException

        try:
            run = store.client.get_run(match["run"])
        except MlflowException as exc:
            reason = "no such run" if _missing(exc) else first_line(exc)
            raise TinyLLMError(f"cannot use {uri}: {reason} in {store.uri}") from None
        path = _download(_run_source(store, run, uri, inner), uri, store)
        return ResolvedModel(path=path, uri=uri, run_id=match["run"])
    raise TinyLLMError(f"unsupported model URI {uri!r}; use models:/NAME/VERSION, "
                       "models:/NAME@ALIAS, models:/NAME/latest, runs:/RUN_ID/PATH or a directory")
