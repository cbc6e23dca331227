"""What a pipeline run records in MLflow, through one object: a TrackedRun (or a NullRun).

`training_run` and `evaluation_run` open it once per step; the step logs through it, registers
the model through it, and leaves the `with` block, which ends the run FINISHED, or KILLED when it
was interrupted (Ctrl-C, SIGTERM) or FAILED on an error; a run whose process was killed outright
ends KILLED when the next step opens a run (end_abandoned_runs). One model is one run: a resumed
training reopens the run its checkpoint names, and evaluate logs into train's run. Every call
goes through the run's own MlflowClient, bound to its store: nothing sets MLflow's process-global
tracking URI or active run, so two stores in one process never mix. With tracking off (or on ranks
other than 0 under torchrun) a NullRun takes the same calls and records nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

from tinyllm.config import Params, SamplingConfig, TrackingConfig
from tinyllm.errors import TinyLLMError
from tinyllm.io import atomic_write_json, file_sha256
from tinyllm.tracking.store import TEST_BITS_TAG, Store, project_root

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # name of the logged MLflow Model
PACKAGE_ARTIFACT = "package"  # the model package inside the MLflow Model's artifacts
PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")
PACKAGE_CODE = Path(__file__).parents[1]  # tinyllm's source, logged with the model (code_paths)
TRAINING_SAMPLES = "training_samples.json"  # MLflow table of samples taken while training
# The curves every step logs: history key (steps.csv's column) -> MLflow metric. The losses share
# the prefix "loss/": mlflow ui draws a prefix's section ("loss": train, val) before its "Model
# metrics", so a run page and the runs' chart view lead with the loss curves.
STEP_METRICS = {"train_loss": "loss/train", "val_loss": "loss/val", "lr": "lr",
                "tokens_per_sec": "tokens_per_sec", "grad_norm": "grad_norm"}
VAL_LOSS = STEP_METRICS["val_loss"]  # what a compare link opens on (store.compare_page)
EVAL_METRIC_PREFIX = "eval_"  # eval_test_loss, eval_val_bits_per_char, ...


def eval_metric(split: str, measure: str) -> str:
    """The MLflow metric evaluate logs for one measure of a split (evaluation.scoring's keys)."""
    return f"{EVAL_METRIC_PREFIX}{split}_{measure}"


# --- names and tags -----------------------------------------------------------------------------

def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


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
    git = {"commit": os.environ.get("DVC_EXP_BASELINE_REV") or _git(root, "rev-parse", "HEAD"),
           "branch": _git(root, "symbolic-ref", "--short", "-q", "HEAD"),
           "repoURL": _git(root, "config", "--get", "remote.origin.url")}
    tags.update({f"mlflow.source.git.{key}": value for key, value in git.items() if value})
    return tags


NAME_LENGTH = 200  # a run name's changed keys stop here ("+N more"); MLflow holds 250 characters
UNNAMED = ("data.corpus", "tracking.")  # the registry name and the experiment say these


def baseline_params(root: Path) -> dict:
    """The params a run's name is told against: params.yaml as committed (at the commit a DVC
    experiment started from, else HEAD), like `dvc exp show` and `dvc params diff`; {} (the
    defaults) outside git or when that file is missing or unreadable."""
    import yaml

    rev = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    text = _git(root, "show", f"{rev}:./params.yaml")
    with contextlib.suppress(yaml.YAMLError):
        committed = yaml.safe_load(text or "")
        if isinstance(committed, dict):
            return committed
    return {}


def _shown(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    return "[…]" if isinstance(value, list) else str(value)


def run_name(params: Params) -> str:
    """What a run is, for mlflow ui's Run Name column: the registry name, then each key whose
    value differs from the committed params.yaml (baseline_params), then the DVC experiment's
    name when DVC runs one, e.g. `shakespeare train.seed=2 (sappy-lair)`. TrackedRun.start
    makes it unique in its experiment (`shakespeare #2`)."""
    from tinyllm.config import changed_keys

    try:
        changed = changed_keys(params, baseline_params(project_root()))
    except TinyLLMError:  # a committed params.yaml that no longer validates: the defaults
        changed = changed_keys(params, {})
    shown = [f"{key}={_shown(value)}" for key, value in changed.items()
             if not key.startswith(UNNAMED)]
    parts = [params.tracking.registry_name]
    for i, part in enumerate(shown):
        if len(" ".join([*parts, part])) > NAME_LENGTH:
            parts.append(f"+{len(shown) - i} more")
            break
        parts.append(part)
    if os.environ.get("DVC_EXP_NAME"):
        parts.append(f"({os.environ['DVC_EXP_NAME']})")
    return " ".join(parts)


def unique_name(store: Store, experiment_id: str, name: str) -> str:
    """name, or `name #N` when runs of the experiment hold it already (N: one past the last)."""
    pattern = name.replace("\\", "_").replace("'", "_")  # LIKE's any-character, not escaped
    numbered = re.compile(re.escape(name) + r" #(\d+)")
    taken = []
    for run in store.client.search_runs([experiment_id], f"attributes.run_name LIKE '{pattern}%'",
                                        max_results=50_000):
        match = numbered.fullmatch(run.info.run_name or "")
        if match or run.info.run_name == name:
            taken.append(int(match[1]) if match else 1)
    return f"{name} #{max(taken) + 1}" if taken else name


# --- opening a run ------------------------------------------------------------------------------

def _owner() -> dict[str, str]:
    """Tags naming the process that holds a run RUNNING."""
    import socket

    return {"tinyllm.host": socket.gethostname(), "tinyllm.pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def end_abandoned_runs(store: Store, experiment: str) -> None:
    """Runs left RUNNING by a process of this machine that is gone (SIGKILL, a lost machine)
    end KILLED, so a killed pipeline never leaves a run RUNNING once the next one starts."""
    host = _owner()["tinyllm.host"]
    for run in store.client.search_runs([store.experiment_id(experiment)],
                                        "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        pid = tags.get("tinyllm.pid", "")
        if tags.get("tinyllm.host") == host and pid.isdigit() and not _alive(int(pid)):
            store.client.set_terminated(run.info.run_id, "KILLED")
            log.info("MLflow run %s was left RUNNING by process %s, which is gone: ended it "
                     "KILLED", run.info.run_id, pid)


def training_run(params: Params, name: str, facts: dict, tracking_uri: str | None = None,
                 enabled: bool = True, resume: str | None = None) -> TrackedRun | NullRun:
    """The run training logs into: `resume` (the run an interrupted training's checkpoint names)
    reopened when the store still has it, so one model is one run; else a new run holding every
    params.yaml key and the derived facts. A NullRun when tracking is off. The store is checked
    here, before any training."""
    if not (enabled and params.tracking.enabled):
        return NullRun()
    store, experiment = Store(tracking_uri), params.tracking.experiment
    end_abandoned_runs(store, experiment)
    interrupted = _stored_run(store, resume, experiment) if resume else None
    if interrupted is not None:
        log.info("MLflow run %s (%s) continues", interrupted.info.run_name, resume)
        return TrackedRun.reopen(store, interrupted, experiment)
    if resume:
        log.warning("MLflow run %s of the checkpoint is not in %s; starting a new run", resume,
                    store.uri)
    return TrackedRun.start(store, experiment, name, params.flat(), facts)


def evaluation_run(params: Params, handoff: Path, name: str,
                   tracking_uri: str | None = None) -> TrackedRun | NullRun:
    """The run evaluate logs into, so every run's params are the ones that made its artifacts.

    Train's run (named in the handoff) when it holds no evaluation yet: train then evaluate in one
    pipeline execution. When evaluate runs again alone (only evaluate.* changed), a new run
    nested under train's, with the params of this evaluation. A fresh run when train's is gone
    from the store or tracking was off during train.
    """
    if not params.tracking.enabled:
        return NullRun()
    store, experiment = Store(tracking_uri), params.tracking.experiment
    end_abandoned_runs(store, experiment)
    run_id = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        run_id = json.loads(handoff.read_text()).get("run_id")
    if not run_id:
        return TrackedRun.start(store, experiment, name, params.flat(), {})
    train_run = _stored_run(store, run_id, experiment)
    if train_run is None:
        log.warning("MLflow run %s from %s is not in %s; starting a fresh run",
                    run_id, handoff, store.uri)
        return TrackedRun.start(store, experiment, name, params.flat(), {})
    if not any(key.startswith(EVAL_METRIC_PREFIX) for key in train_run.data.metrics):
        return TrackedRun.reopen(store, train_run, experiment)
    log.info("MLflow run %s holds an earlier evaluation; this one is a new run nested under it",
             run_id)
    return TrackedRun.start(store, experiment, name, params.flat(), {}, parent=run_id)


def _stored_run(store: Store, run_id: str, experiment: str):
    """The MLflow run run_id when this store holds it, undeleted, in the experiment; else None.
    A run whose artifacts are in another project's folder is an error (Store's)."""
    from mlflow.exceptions import MlflowException

    try:
        run = store.client.get_run(run_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage == "deleted" or (
            run.info.experiment_id != store.experiment_id(experiment)):
        return None
    store.check_artifacts_beside(run.info.artifact_uri, f"MLflow run {run_id}")
    return run


# --- the run ------------------------------------------------------------------------------------

@dataclass
class Registration:
    name: str
    version: str
    created: bool  # False: identical weights were registered before, that version is reused
    champion: bool  # the champion alias points at this version now


class TrackedRun:
    """One MLflow run and everything a pipeline step records in it (see the module's doc)."""

    def __init__(self, store: Store, run_id: str, experiment: str, logged_through: int = 0):
        """logged_through: the last step whose curves the (reopened) run holds already."""
        self.store, self.id, self.experiment = store, run_id, experiment
        self.steps = StepLogger(store, run_id, logged_through)
        self.callbacks = [self.steps]  # training callbacks: the step metrics

    @classmethod
    def start(cls, store: Store, experiment: str, name: str, params: dict, facts: dict,
              parent: str | None = None) -> TrackedRun:
        """Open a run and record the params and the derived facts as MLflow params."""
        tags = {"mlflow.runName": name, "tinyllm.source": "pipeline",
                **source_tags(project_root()), **_owner()}
        if os.environ.get("DVC_EXP_NAME"):
            tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
        if parent:
            tags["mlflow.parentRunId"] = parent
        experiment_id = store.experiment_id(experiment)
        name = unique_name(store, experiment_id, name)
        tags["mlflow.runName"] = name
        run = store.client.create_run(experiment_id, run_name=name, tags=tags)
        tracked = cls(store, run.info.run_id, experiment)
        tracked.log_params({**params, **{f"derived.{k}": v for k, v in facts.items()}})
        log.info("MLflow run %s (%s) in %s", name, tracked.id, store.uri)
        return tracked

    @classmethod
    def reopen(cls, store: Store, run, experiment: str) -> TrackedRun:
        """A stored run (an mlflow Run) RUNNING again under this process, to log more into:
        an interrupted training's, or train's for its evaluation. Its params stay as logged."""
        run_id = run.info.run_id
        logged = store.client.get_metric_history(run_id, STEP_METRICS["train_loss"])
        store.client.update_run(run_id, status="RUNNING")
        reopened = cls(store, run_id, experiment, max((m.step for m in logged), default=0))
        reopened.set_tags(_owner())
        return reopened

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, kind, error, _traceback) -> None:
        interrupted = isinstance(error, KeyboardInterrupt) or getattr(error, "exit_code", 0) >= 128
        status = "FINISHED" if kind is None else "KILLED" if interrupted else "FAILED"
        try:
            self.steps.flush()  # the curves up to a failure stay in the run
        except Exception:
            if kind is None:
                raise
        finally:
            self.store.client.set_terminated(self.id, status)

    def log_params(self, values: dict) -> None:
        from mlflow.entities import Param

        entries = [Param(k, str(v)[:6000]) for k, v in values.items()]
        for i in range(0, len(entries), 100):
            self.store.client.log_batch(self.id, params=entries[i:i + 100])

    def log_metrics(self, values: dict) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.store.client.log_batch(self.id, metrics=[
            Metric(key, float(value), stamp, 0) for key, value in values.items()])

    def set_tags(self, values: dict) -> None:
        from mlflow.entities import RunTag

        self.store.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in values.items()])

    def log_artifacts(self, files: Iterable[Path], folder: str | None = None) -> None:
        for file in files:
            if Path(file).exists():
                self.store.client.log_artifact(self.id, str(file), folder)

    def log_datasets(self, splits: dict[str, Path], name: str) -> None:
        """Record the prepared splits a run trains on as its dataset inputs (name, digest,
        source, characters), which the runs list shows in its Dataset column."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for context, path in splits.items():
            text = Path(path).read_text(encoding="utf-8")
            dataset = Dataset(name=f"{name}-{context}", source_type="local",
                              digest=hashlib.sha256(text.encode()).hexdigest()[:16],
                              source=json.dumps({"uri": str(path)}),
                              profile=json.dumps({"characters": len(text)}))
            inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
        self.store.client.log_inputs(self.id, datasets=inputs)

    def log_samples(self, rows: list[dict]) -> None:
        """Rows of samples taken while training -> the run's table TRAINING_SAMPLES (appended to
        at each evaluation; the run page's Artifacts tab shows it as a table). A reopened run
        holds the rows up to the step it has logged already."""
        rows = [row for row in rows if row["step"] > self.steps.logged_through]
        if not rows:
            return
        self.store.client.log_table(self.id, data={k: [r[k] for r in rows]
                                                   for k in ("step", "prompt", "text")},
                                    artifact_file=TRAINING_SAMPLES)

    @contextlib.contextmanager
    def system_metrics(self, interval: float = 10.0):
        """MLflow's monitor of CPU, memory, disk, network (and an NVIDIA GPU's use and memory)
        every `interval` seconds into the run's System metrics, while the block runs."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop chatter
        monitor = SystemMetricsMonitor(self.id, sampling_interval=interval, resume_logging=True,
                                       tracking_uri=self.store.uri)  # a reopened run's go on
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def write_handoff(self, path: Path) -> None:
        """Tell the evaluate step (another process under DVC) which run to log into."""
        atomic_write_json(path, {"run_id": self.id, "tracking_uri": self.store.uri,
                                 "experiment": self.experiment})

    def runs_page(self) -> str:
        from tinyllm.tracking.store import runs_page

        return runs_page(self.store, self.experiment)

    def ui_page(self, route: str) -> str:
        from tinyllm.tracking.store import ui_page

        return ui_page(self.store, route)

    def register(self, package_dir: Path, name: str, test_loss: float,
                 test_bits_per_char: float, data_fingerprint: str,
                 alias: str = TrackingConfig.champion_alias) -> Registration:
        """Log the package as a pyfunc MLflow Model and register it, unless these exact weights
        are registered already; move the alias when the test loss beats the current holder's."""
        client = self.store.client
        weights_hash = file_sha256(package_dir / "weights.pt")
        existing = [v for v in client.search_model_versions(f"name='{name}'")
                    if v.tags.get("weights_sha256") == weights_hash]
        if existing:
            version, created = existing[0], False
            log.info("weights already registered as %s version %s; not registering again",
                     name, version.version)
        else:
            model_id, source = self._log_model(package_dir)
            _ensure_registered_model(client, name)
            version = client.create_model_version(
                name, source=source, run_id=self.id, model_id=model_id, tags={
                    "run_id": self.id, "weights_sha256": weights_hash,
                    "data_fingerprint": data_fingerprint, "test_loss": f"{test_loss:.6f}",
                    TEST_BITS_TAG: f"{test_bits_per_char:.6f}"})
            created = True
        champion = move_alias_if_better(self.store, name, alias, version.version, test_loss)
        return Registration(name, str(version.version), created, champion)

    def _log_model(self, package_dir: Path) -> tuple[str, str]:
        """The package as this run's logged pyfunc model (MLflow 3's LoggedModel), carrying
        tinyllm's code: its id and artifact location (the registry's source: a models:/ID source
        would be looked up in MLflow's default store, not necessarily this one)."""
        import mlflow
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        client = self.store.client
        run = client.get_run(self.id)
        # The run's params and source tags, as log_model gives them: the model list's "Logged
        # from" column and the model page's parameters show them.
        model = client.create_logged_model(
            run.info.experiment_id, name=MODEL_ARTIFACT, source_run_id=self.id,
            tags=source_tags(project_root()), params=run.data.params)
        client.log_outputs(self.id, [LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's hints about type hints
            local = Path(tmp) / MODEL_ARTIFACT
            mlflow.pyfunc.save_model(
                str(local), python_model=str(PYFUNC_CODE),
                mlflow_model=Model(artifact_path=model.artifact_location,
                                   model_uuid=model.model_id, run_id=self.id,
                                   model_id=model.model_id),
                artifacts={PACKAGE_ARTIFACT: str(package_dir)}, signature=signature(),
                code_paths=[str(PACKAGE_CODE)], pip_requirements=model_requirements())
            client.log_model_artifacts(model.model_id, str(local))
        client.finalize_logged_model(model.model_id, "READY")
        return model.model_id, model.artifact_location


class NullRun:
    """Tracking off: a TrackedRun's calls, recording nothing."""

    id = None  # no MLflow run
    callbacks: tuple = ()

    def __enter__(self) -> NullRun:
        return self

    def __exit__(self, *_exc) -> None:
        return None

    def log_params(self, values: dict) -> None: ...
    def log_metrics(self, values: dict) -> None: ...
    def set_tags(self, values: dict) -> None: ...
    def log_artifacts(self, files: Iterable[Path], folder: str | None = None) -> None: ...
    def log_datasets(self, splits: dict[str, Path], name: str) -> None: ...
    def log_samples(self, rows: list[dict]) -> None: ...

    def system_metrics(self):
        return contextlib.nullcontext()

    def write_handoff(self, path: Path) -> None:
        atomic_write_json(path, {"run_id": None})

    def register(self, *_args, **_kwargs) -> None:
        return None


class StepLogger:
    """A training callback buffering step metrics and sending them in batches (fast on sqlite).

    Every step is logged once. Given the run so far on start (a checkpoint's, on resume), it logs
    those steps too, so a resumed run's curves are whole; a reopened MLflow run holds the steps up
    to logged_through already, and those are skipped, retrained ones included. Each step's
    history entry keeps the time it was logged at, so a step logged again from a checkpoint has
    its first time.
    """

    def __init__(self, store: Store, run_id: str, logged_through: int = 0,
                 flush_every: int = 100):
        self.store, self.run_id, self.flush_every = store, run_id, flush_every
        self.logged_through = logged_through
        self.buffer: list = []
        self.history: list[dict] = []

    def add(self, entry: dict) -> None:
        from mlflow.entities import Metric

        if entry["step"] <= self.logged_through:
            return
        stamp = int(entry.get("timestamp_ms") or 0)
        for key, metric in STEP_METRICS.items():
            if entry.get(key) is not None:
                self.buffer.append(Metric(metric, float(entry[key]), stamp, entry["step"]))

    def on_start(self, history: list[dict], model) -> None:
        self.history = history
        for entry in history:
            self.add(entry)
        self.flush()

    def __call__(self, m) -> None:
        entry = self.history[-1]  # m's: the loop appends it before calling back
        entry["timestamp_ms"] = int(time.time() * 1000)
        self.add(entry)
        if m.val_loss is not None or len(self.buffer) >= self.flush_every * len(STEP_METRICS):
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.buffer), 1000):
            self.store.client.log_batch(self.run_id, metrics=self.buffer[i:i + 1000])
        self.buffer = []


# --- the registered model -----------------------------------------------------------------------

def signature():
    """Prompts in, continuations out; params: every sampling setting with its default, but
    the seed's is none (MLflow fills in defaults): an unseeded request draws a fresh one."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),  # prompts: a list of strings or one column
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(f.name, "long" if f.type == "int" else "double",
                                      None if f.name == "seed" else f.default)
                            for f in fields(SamplingConfig)]))


def model_requirements() -> list[str]:
    """What loading the logged model needs besides its bundled tinyllm code (and MLflow, which
    MLflow adds itself), pinned to the versions it was logged with. Never the bare `tinyllm`:
    that name on PyPI is an unrelated project."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "numpy", "pyyaml")]


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


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
