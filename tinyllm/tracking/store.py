"""The MLflow store: where runs are stored, opened and checked once (what a run records is
runs.py's job, reading models registry.py's).

Default store: sqlite:///<project root>/mlflow.db with artifacts in <project root>/mlruns, which is
what `mlflow ui` started in the project root shows. MLFLOW_TRACKING_URI (and MLFLOW_REGISTRY_URI)
point elsewhere, e.g. a team server. The project root is DVC_ROOT when DVC runs a stage (also in
`dvc exp run --temp/--queue` workspaces), so no run is lost in a temporary directory.

mlflow.db records artifact locations as absolute paths. When the project is copied, moved or
renamed, reading a model finds its files in this project's mlruns/ anyway (Store.artifacts_here);
`tinyllm rehome` rewrites the recorded locations (rehome_artifacts) so that MLflow's own tools
(mlflow ui, mlflow models serve) and new runs use this folder too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tinyllm.errors import TinyLLMError, first_line, user_error_message
from tinyllm.io import exclusive_lock

log = logging.getLogger(__name__)

# Copying a model's files out of a local store is instant: MLflow's download bar is noise, in the
# CLI and in the Python API (tinyllm.load_model) alike. Setting the variable turns it back on.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# The experiment tag MLflow 3's UI reads to open an experiment on its runs (model training).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# The registered version's tag (and older packages' meta key) holding its test bits/char, which
# `tinyllm models` and chat's banner show without opening the run.
TEST_BITS_TAG = "test_bits_per_char"


# --- the store ----------------------------------------------------------------------------------

def project_root() -> Path:
    """DVC_ROOT when DVC runs us, else the nearest directory above cwd holding .dvc/, else cwd."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for directory in (here, *here.parents):
        if (directory / ".dvc").is_dir():
            return directory
    return here


def choose_tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{project_root() / 'mlflow.db'}")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when a tracking server cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
                if reply.status != 200:
                    raise TinyLLMError(f"MLflow tracking server {uri} answered /health with "
                                       f"HTTP {reply.status}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TinyLLMError(f"MLflow tracking server {uri} is unreachable ({reason})") from None
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).parent
        if not parent.is_dir():
            raise TinyLLMError(f"MLflow tracking URI {uri}: directory {parent} does not exist")
    elif uri.startswith("file:") or "://" not in uri:
        pass
    elif not re.match(r"^(postgresql|mysql|mssql|databricks)", uri):
        raise TinyLLMError(f"unsupported MLflow tracking URI {uri}")


REHOME_COMMAND = "tinyllm rehome"
# Where MLflow's sqlite schema keeps artifact locations: (table, column).
ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("model_versions", "source"), ("model_versions", "storage_location"),
                    ("logged_models", "artifact_location"))


def local_path(location: str) -> Path | None:
    """The local path of a file: URI or an absolute path; None for any other location."""
    from urllib.parse import unquote, urlparse

    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    return Path(location) if location.startswith("/") else None


def foreign_mlruns(location: str, home: Path) -> tuple[Path, tuple[str, ...]] | None:
    """(the mlruns folder, the parts below it) of a local location outside home under a folder
    named mlruns (a store made where the project was before); None for any other location."""
    path = local_path(location)
    if path is None or path.resolve().is_relative_to(home) or "mlruns" not in path.parts:
        return None
    last = len(path.parts) - 1 - path.parts[::-1].index("mlruns")
    return Path(*path.parts[:last + 1]), path.parts[last + 1:]


def rehomed(location: str, home: Path) -> str | None:
    """A foreign location (see foreign_mlruns) at the same place under home/mlruns, in the same
    form (file: URI or path); None for any other location."""
    foreign = foreign_mlruns(location, home)
    if foreign is None:
        return None
    moved = home.joinpath("mlruns", *foreign[1])
    return moved.as_uri() if location.startswith("file:") else str(moved)


def rehome_artifacts(store: Store) -> dict[str, int]:
    """Rewrite every foreign artifact location a local mlflow.db records (a project copied,
    moved or renamed) to this project's mlruns/, so MLflow's own tools find the files here.
    Returns {old mlruns folder: locations rewritten}."""
    import sqlite3

    if not store.is_local_sqlite:
        raise TinyLLMError(f"{REHOME_COMMAND} rewrites a local sqlite store; {store.uri} is not "
                           "one")
    if not (store.home / "mlruns").is_dir():
        raise TinyLLMError(f"{store.home / 'mlruns'} does not exist: copy the project's mlruns/ "
                           f"beside {store.home / 'mlflow.db'}, then run `{REHOME_COMMAND}`")
    database = store.uri.removeprefix("sqlite:///")
    rewritten: dict[str, int] = {}
    with (exclusive_lock(f"{database}.lock"), contextlib.closing(sqlite3.connect(database)) as db,
          db):  # one transaction: all locations or none
        for table, column in ARTIFACT_COLUMNS:
            for row, location in db.execute(f"SELECT rowid, {column} FROM {table}").fetchall():
                foreign = location and foreign_mlruns(location, store.home)
                if foreign:
                    db.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                               (rehomed(location, store.home), row))
                    rewritten[str(foreign[0])] = rewritten.get(str(foreign[0]), 0) + 1
    return rewritten


class Store:
    """An MLflow client bound to one tracking/registry URI, checked before use."""

    def __init__(self, uri: str | None = None):
        import mlflow

        self.uri = choose_tracking_uri(uri)
        check_reachable(self.uri)
        self.registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or self.uri
        # Two pipelines starting together (`dvc queue start -j 2`) would both create or
        # upgrade a new sqlite store's tables and one would fail ("table already exists"):
        # one process at a time opens it.
        lock = (exclusive_lock(f"{self.uri.removeprefix('sqlite:///')}.lock")
                if self.is_local_sqlite else contextlib.nullcontext())
        with lock:
            # Open both stores now: creates a new sqlite store's tables, and a damaged or
            # misconfigured database fails here, before any training.
            try:
                self.client = mlflow.MlflowClient(self.uri, self.registry_uri)
                self.client.search_experiments(max_results=1)
                self.client.search_registered_models(max_results=1)
            except Exception as exc:
                if user_error_message(exc) is None:
                    raise
                raise TinyLLMError(f"MLflow store {self.uri} cannot be opened: "
                                   f"{first_line(exc)}") from None

    @property
    def is_local_sqlite(self) -> bool:
        return self.uri.startswith("sqlite:///")

    @property
    def home(self) -> Path:
        """The directory of a local mlflow.db: its artifacts belong in home/mlruns."""
        return Path(self.uri.removeprefix("sqlite:///")).parent.resolve()

    def check_artifacts_beside(self, artifact_uri: str, what: str) -> None:
        """Refuse to write artifacts outside the directory of a local mlflow.db.

        mlflow.db records absolute artifact paths, so a copied or moved project would otherwise
        log its runs into the original's mlruns/.
        """
        if not (self.is_local_sqlite and artifact_uri.startswith("file:")):
            return
        location = local_path(artifact_uri).resolve()
        if not location.is_relative_to(self.home):
            raise TinyLLMError(
                f"{what} in {self.uri} keeps its artifacts in {location}, outside "
                f"{self.home}: this project was copied or moved; run `{REHOME_COMMAND}` in "
                f"{self.home} to point mlflow.db at {self.home / 'mlruns'}")

    def artifacts_here(self, artifact_uri: str) -> str:
        """artifact_uri, or its copy in this project's mlruns/ when a local mlflow.db was made
        where the project was before (copied, moved or renamed) and the copy is there."""
        moved = rehomed(artifact_uri, self.home) if self.is_local_sqlite else None
        if moved is None or not local_path(moved).exists():
            return artifact_uri
        if not getattr(self, "_told_moved", False):
            self._told_moved = True
            log.warning("%s records artifacts in %s, where the project was before; reading "
                        "them from %s (run `%s` so that mlflow ui and mlflow models serve do "
                        "too)", self.uri, foreign_mlruns(artifact_uri, self.home)[0],
                        self.home / "mlruns", REHOME_COMMAND)
        return moved

    def experiment_id(self, name: str) -> str:
        """The experiment's id, creating it (artifacts beside mlflow.db) if it is new.

        It is marked as model training (EXPERIMENT_KIND), so `mlflow ui` opens it on its runs,
        not on MLflow 3's GenAI traces overview.
        """
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            location = None
            if self.is_local_sqlite:
                location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
            try:
                return self.client.create_experiment(name, artifact_location=location,
                                                     tags=dict([EXPERIMENT_KIND]))
            except MlflowException:  # created meanwhile by a parallel run
                found = self.client.get_experiment_by_name(name)
        self.check_artifacts_beside(found.artifact_location, f"MLflow experiment '{name}'")
        if EXPERIMENT_KIND[0] not in found.tags:  # made before we marked experiments
            self.client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
        return found.experiment_id


# --- reading the store ------------------------------------------------------------------------

LOCAL_UI = "http://127.0.0.1:5000/"  # where `mlflow ui` serves a local store by default
LOCAL_UI_NOTE = "after `mlflow ui` in the project root"


def ui_address(store: Store, route: str, query: dict[str, str] | None = None) -> str:
    """The address of an `mlflow ui` page (route, then the query's settings), opening on its
    model-training layout.

    MLflow 3.17's UI ignores EXPERIMENT_KIND: every page (runs, a run, a model version) takes
    its layout from the address's workflowType, else from the GenAI / Model training switch at
    the top left, which the browser remembers, else GenAI.
    """
    from urllib.parse import quote

    settings = {**(query or {}), "workflowType": "machine_learning"}
    page = f"#/{route}?" + "&".join(f"{key}={quote(value, safe='[],')}"
                                    for key, value in settings.items())
    if store.uri.startswith(("http://", "https://")):
        return f"{store.uri.rstrip('/')}/{page}"
    return f"{LOCAL_UI}{page}"


def ui_note(store: Store) -> str | None:
    """What a user must do before ui_address opens: start `mlflow ui` for a local store."""
    return None if store.uri.startswith(("http://", "https://")) else LOCAL_UI_NOTE


def ui_page(store: Store, route: str, query: dict[str, str] | None = None) -> str:
    """ui_address, with what to do first when the store is local (for a terminal)."""
    note = ui_note(store)
    return ui_address(store, route, query) + (f" ({note})" if note else "")


def run_route(experiment_id: str, run_id: str) -> str:
    """The `mlflow ui` route of a run's page."""
    return f"experiments/{experiment_id}/runs/{run_id}"


def compare_page(store: Store, runs: list, metric: str) -> str:
    """Where a browser draws one metric's curves of several runs (mlflow ui's metric view).

    MLflow's Compare page takes no metric in its address (its plots open on the first metric the
    runs share, often a system one); the metric view it links each metric to does.
    """
    import json

    def listed(values) -> str:
        return json.dumps(list(values), separators=(",", ":"))

    return ui_page(store, "metric", {
        "runs": listed(run.info.run_id for run in runs), "metric": json.dumps(metric),
        "experiments": listed(sorted({run.info.experiment_id for run in runs})),
        "plot_metric_keys": listed([metric]), "x_axis": "step"})


def runs_page(store: Store, experiment: str) -> str:
    """Where a browser shows the experiment's runs."""
    return ui_page(store, f"experiments/{store.experiment_id(experiment)}")
