"""MLflow: where runs are stored, what a run records, the model registry, and model URIs.

Default store: sqlite:///<project root>/mlflow.db with artifacts in <project root>/mlruns, which is
what `mlflow ui` started in the project root shows. MLFLOW_TRACKING_URI (and MLFLOW_REGISTRY_URI)
point elsewhere, e.g. a team server. The project root is DVC_ROOT when DVC runs a stage (also in
`dvc exp run --temp/--queue` workspaces), so no run is lost in a temporary directory.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

from tinyllm.config import SamplingConfig
from tinyllm.errors import TinyLLMError, first_line, user_error_message
from tinyllm.io import atomic_write_json, exclusive_lock
from tinyllm.train import StepMetrics

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # name of the logged MLflow Model
PACKAGE_ARTIFACT = "package"  # the model package inside the MLflow Model's artifacts
PYFUNC_CODE = Path(__file__).with_name("mlflow_model.py")
# The experiment tag MLflow 3's UI reads to open an experiment on its runs (model training).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
TRAINING_SAMPLES = "training_samples.json"  # MLflow table of samples taken while training
PACKAGE_CODE = Path(__file__).parent  # tinyllm's source, logged with the model (code_paths)
STEP_METRICS = ("train_loss", "val_loss", "lr", "tokens_per_sec", "grad_norm")


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


def tracking_uri(explicit: str | None = None) -> str:
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


class Store:
    """An MLflow client bound to one tracking/registry URI, checked before use."""

    def __init__(self, uri: str | None = None):
        import mlflow

        self.uri = tracking_uri(uri)
        check_reachable(self.uri)
        self.registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or self.uri
        # mlflow.set_*_uri also write MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI into os.environ;
        # put them back, or the next Store in this process (another URI) would inherit them.
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.registry_uri)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
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

    def check_artifacts_beside(self, artifact_uri: str, what: str) -> None:
        """Refuse to write artifacts outside the directory of a local mlflow.db.

        mlflow.db records absolute artifact paths, so a copied or moved project would otherwise
        log its runs into the original's mlruns/.
        """
        if not (self.is_local_sqlite and artifact_uri.startswith("file:")):
            return
        from urllib.parse import unquote, urlparse

        home = Path(self.uri.removeprefix("sqlite:///")).parent.resolve()
        location = Path(unquote(urlparse(artifact_uri).path)).resolve()
        if not location.is_relative_to(home):
            raise TinyLLMError(
                f"{what} in {self.uri} keeps its artifacts in {location}, outside {home}: "
                f"this project was copied or moved; move {home / 'mlflow.db'} and "
                f"{home / 'mlruns'} aside to start a new store here, or work in the original")

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


# --- one run per pipeline execution -------------------------------------------------------------

def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def git_commit(root: Path) -> str | None:
    return os.environ.get("DVC_EXP_BASELINE_REV") or _git(root, "rev-parse", "HEAD")


def source_tags(root: Path) -> dict[str, str]:
    """MLflow's standard tags that its UI's Source, Version and User columns show: the DVC stage
    (`dvc.yaml:train`) or command (`tinyllm train`), the git commit, branch and remote."""
    import getpass

    stage = os.environ.get("DVC_STAGE")
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:2]]).strip()
    tags = {"mlflow.source.type": "LOCAL",
            "mlflow.source.name": f"dvc.yaml:{stage}" if stage else command or "python"}
    with contextlib.suppress(Exception):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    git = {"commit": git_commit(root),
           "branch": _git(root, "symbolic-ref", "--short", "-q", "HEAD"),
           "repoURL": _git(root, "config", "--get", "remote.origin.url")}
    tags.update({f"mlflow.source.git.{key}": value for key, value in git.items() if value})
    return tags


def run_name(prefix: str, d_model: int, n_layer: int, flat_params: dict) -> str:
    """The DVC experiment name when DVC runs one, else e.g. shakespeare-d256-l6-1a2b3c."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    digest = hashlib.sha256(json.dumps(flat_params, sort_keys=True, default=str).encode())
    return f"{prefix}-d{d_model}-l{n_layer}-{digest.hexdigest()[:6]}"


def start_run(store: Store, experiment: str, name: str, params: dict, facts: dict,
              parent: str | None = None) -> str:
    """Open a run and record every params.yaml key and the derived facts as MLflow params."""
    from mlflow.entities import Param

    tags = {"mlflow.runName": name, "tinyllm.source": "pipeline",
            **source_tags(project_root())}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = store.client.create_run(store.experiment_id(experiment), run_name=name, tags=tags)
    values = {**params, **{f"derived.{k}": v for k, v in facts.items()}}
    entries = [Param(k, str(v)[:6000]) for k, v in values.items()]
    for i in range(0, len(entries), 100):
        store.client.log_batch(run.info.run_id, params=entries[i:i + 100])
    return run.info.run_id


def log_datasets(store: Store, run_id: str, splits: dict[str, Path], name: str) -> None:
    """Record the prepared splits a run trains on as its dataset inputs (name, digest, source,
    characters), which the runs list shows in its Dataset column."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for context, path in splits.items():
        text = Path(path).read_text(encoding="utf-8")
        dataset = Dataset(name=f"{name}-{context}", source_type="local",
                          digest=hashlib.sha256(text.encode()).hexdigest()[:16],
                          source=json.dumps({"uri": str(path)}),
                          profile=json.dumps({"characters": len(text)}))
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    store.client.log_inputs(run_id, datasets=inputs)


def system_metrics(store: Store, run_id: str, interval: float = 10.0):
    """MLflow's monitor of CPU, memory, disk, network (and an NVIDIA GPU's use and memory)
    every `interval` seconds into the run's System metrics; call .finish() to stop it."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop chatter
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, tracking_uri=store.uri)
    monitor.start()
    return monitor


def sample_logger(store: Store, run_id: str):
    """Rows of samples taken while training -> the run's table `training_samples.json`
    (appended to at each evaluation; the run page's Artifacts tab shows it as a table)."""
    def log_rows(rows: list[dict]) -> None:
        store.client.log_table(run_id, data={k: [r[k] for r in rows]
                                             for k in ("step", "prompt", "text")},
                               artifact_file=TRAINING_SAMPLES)
    return log_rows


class StepLogger:
    """A training callback buffering step metrics and sending them in batches (fast on sqlite)."""

    def __init__(self, store: Store, run_id: str, flush_every: int = 100):
        self.store, self.run_id, self.flush_every = store, run_id, flush_every
        self.buffer: list = []

    def add(self, step: int, values: dict) -> None:
        from mlflow.entities import Metric

        stamp = int(values.get("timestamp_ms") or 0)
        for key in STEP_METRICS:
            if values.get(key) is not None:
                self.buffer.append(Metric(key, float(values[key]), stamp, step))

    def __call__(self, m: StepMetrics) -> None:
        import time

        self.add(m.step, {**m.__dict__, "timestamp_ms": time.time() * 1000})
        if m.val_loss is not None or len(self.buffer) >= self.flush_every * len(STEP_METRICS):
            self.flush()

    def replay(self, history: Iterable[dict]) -> None:
        """Log steps trained before a resume, so the resumed run's curves are whole."""
        for entry in history:
            self.add(entry["step"], entry)
        self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.buffer), 1000):
            self.store.client.log_batch(self.run_id, metrics=self.buffer[i:i + 1000])
        self.buffer = []


def end_run(store: Store, run_id: str, status: str = "FINISHED") -> None:
    store.client.set_terminated(run_id, status)


def write_handoff(path: Path, store: Store, run_id: str, experiment: str) -> None:
    atomic_write_json(path, {"run_id": run_id, "tracking_uri": store.uri,
                             "experiment": experiment})


EVAL_METRIC_PREFIX = "eval_"  # eval_test_loss, eval_val_bits_per_char, ...


def evaluation_run(store: Store, handoff: Path, experiment: str, name: str,
                   params: dict) -> str:
    """The run evaluate logs into, so every run's params are the ones that made its artifacts.

    Train's run (named in the handoff) when it holds no evaluation yet: train then evaluate in one
    pipeline execution. When evaluate runs again alone (only evaluate.* changed), a new run
    nested under train's, with the params of this evaluation. A fresh run when train's is gone
    from the store or tracking was off during train.
    """
    from mlflow.exceptions import MlflowException

    run_id = None
    if handoff.exists():
        try:
            run_id = json.loads(handoff.read_text()).get("run_id")
        except ValueError:
            run_id = None
    if run_id:
        try:
            train_run = store.client.get_run(run_id)
        except MlflowException:
            train_run = None
        if train_run is None or train_run.info.lifecycle_stage == "deleted":
            log.warning("MLflow run %s from %s is not in %s; starting a fresh run",
                        run_id, handoff, store.uri)
        else:
            store.check_artifacts_beside(train_run.info.artifact_uri, f"MLflow run {run_id}")
            if not any(key.startswith(EVAL_METRIC_PREFIX) for key in train_run.data.metrics):
                store.client.update_run(run_id, status="RUNNING")
                return run_id
            log.info("MLflow run %s holds an earlier evaluation; this one is a new run nested "
                     "under it", run_id)
            return start_run(store, experiment, name, params, {}, parent=run_id)
    return start_run(store, experiment, name, params, {})


def runs_page(store: Store, experiment: str) -> str:
    """Where a browser shows the experiment's runs: MLflow 3 opens experiments on its GenAI
    view unless the address (or the switch at the top left) asks for model training."""
    page = f"#/experiments/{store.experiment_id(experiment)}?workflowType=machine_learning"
    if store.uri.startswith(("http://", "https://")):
        return f"{store.uri.rstrip('/')}/{page}"
    return f"http://127.0.0.1:5000/{page} (after `mlflow ui` in the project root)"


def log_artifacts(store: Store, run_id: str, files: Iterable[Path], folder: str | None = None):
    for file in files:
        if Path(file).exists():
            store.client.log_artifact(run_id, str(file), folder)


# --- the registered model -----------------------------------------------------------------------

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def signature():
    """Prompts in, continuations out; params: every sampling setting with its default."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),  # prompts: a list of strings or one column
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(f.name, "long" if f.type == "int" else "double", f.default)
                            for f in fields(SamplingConfig)]))


def model_requirements() -> list[str]:
    """What loading the logged model needs besides its bundled tinyllm code (and MLflow, which
    MLflow adds itself), pinned to the versions it was logged with. Never the bare `tinyllm`:
    that name on PyPI is an unrelated project."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "numpy", "pyyaml")]


@dataclass
class Registration:
    name: str
    version: str
    created: bool  # False: identical weights were registered before, that version is reused
    champion: bool  # the champion alias points at this version now


def register_package(store: Store, run_id: str, package_dir: Path, name: str, test_loss: float,
                     test_bits_per_char: float, data_fingerprint: str,
                     alias: str = "champion") -> Registration:
    """Log the package as a pyfunc MLflow Model and register it, unless these exact weights are
    registered already; move the alias when the test loss beats the current holder's."""
    import mlflow

    weights_hash = file_sha256(package_dir / "weights.pt")
    existing = [v for v in store.client.search_model_versions(f"name='{name}'")
                if v.tags.get("weights_sha256") == weights_hash]
    if existing:
        version = existing[0]
        created = False
        log.info("weights already registered as %s version %s; not registering again",
                 name, version.version)
    else:
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's hints about type hints
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT, python_model=str(PYFUNC_CODE),
                artifacts={PACKAGE_ARTIFACT: str(package_dir)}, signature=signature(),
                code_paths=[str(PACKAGE_CODE)], pip_requirements=model_requirements())
        version = mlflow.register_model(info.model_uri, name, tags={
            "run_id": run_id, "weights_sha256": weights_hash,
            "data_fingerprint": data_fingerprint, "test_loss": f"{test_loss:.6f}",
            "test_bits_per_char": f"{test_bits_per_char:.6f}"})
        created = True
    champion = move_alias_if_better(store, name, alias, version.version, test_loss)
    return Registration(name, str(version.version), created, champion)


def move_alias_if_better(store: Store, name: str, alias: str, version: str,
                         test_loss: float) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        holder = store.client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None
    if holder is not None and str(holder.version) == str(version):
        return True
    held_loss = float(holder.tags.get("test_loss", "inf")) if holder is not None else None
    if held_loss is None or test_loss < held_loss:
        store.client.set_registered_model_alias(name, alias, version)
        log.info("alias %s of %s -> version %s (test loss %.4f beats %s)", alias, name, version,
                 test_loss, "none" if held_loss is None else f"{held_loss:.4f}")
        return True
    return False


# --- model URIs ---------------------------------------------------------------------------------

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


def _registry_versions(store: Store, name: str) -> tuple[list, list[str]]:
    """The versions of a registered model, oldest first, and its aliases."""
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
    return versions, sorted(getattr(model, "aliases", {}) or {})


def _version_for(store: Store, uri: str, name: str, version: str | None, alias: str | None):
    from mlflow.exceptions import MlflowException

    versions, aliases = _registry_versions(store, name)
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


def registered_version(uri: str, store: Store) -> str:
    """The version a models:/ URI names now: an alias or /latest moves when models register."""
    match = _MODELS_URI.match(uri)
    if not match:
        raise TinyLLMError(f"malformed model URI {uri!r}; expected models:/NAME/VERSION, "
                           "models:/NAME@ALIAS or models:/NAME/latest")
    return str(_version_for(store, uri, match["name"], match["version"], match["alias"]).version)


def _package_in(directory: Path, uri: str) -> Path:
    """The model package in a downloaded artifact: itself, or inside a pyfunc's artifacts/."""
    candidates = [directory, *sorted((directory / "artifacts").glob("*"))]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise TinyLLMError(f"{uri} does not contain a tinyllm model package")


def _download(artifact_uri: str, uri: str, store: Store) -> Path:
    import mlflow

    destination = Path(tempfile.mkdtemp(prefix="tinyllm-model-"))
    atexit.register(shutil.rmtree, destination, ignore_errors=True)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri,
                                                    dst_path=str(destination),
                                                    tracking_uri=store.uri)
    except Exception as exc:  # MLflow raises several types for a missing artifact
        raise TinyLLMError(f"cannot download {uri}: {first_line(exc)[:200]}") from None
    return _package_in(Path(local), uri)


def resolve_model_uri(uri: str, store: Store | None = None) -> ResolvedModel:
    """A local package directory for models:/NAME/VERSION, models:/NAME@ALIAS,
    models:/NAME/latest, runs:/RUN_ID/PATH, or a local directory."""
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
        path = _download(f"models:/{match['name']}/{mv.version}", uri, store)
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
            store.client.get_run(match["run"])
        except MlflowException as exc:
            reason = "no such run" if _missing(exc) else first_line(exc)
            raise TinyLLMError(f"cannot use {uri}: {reason} in {store.uri}") from None
        path = _download(uri, uri, store)
        return ResolvedModel(path=path, uri=uri, run_id=match["run"])
    raise TinyLLMError(f"unsupported model URI {uri!r}; use models:/NAME/VERSION, "
                       "models:/NAME@ALIAS, models:/NAME/latest, runs:/RUN_ID/PATH or a directory")
