"""The registered MLflow Model carries tinyllm's code: it loads where tinyllm is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import mlflow

from tinyllm import workflow

# Runs in `python -S` (no site module, so no .pth file: no editable install of tinyllm) with only
# site-packages minus every tinyllm entry on sys.path, in an empty working directory.
CHILD = """
import importlib.util, json, sys
sys.path[:0] = [sys.argv[1]]
assert importlib.util.find_spec("tinyllm") is None, "tinyllm must not be importable here"
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[2])
params = {"max_tokens": 12, "temperature": 0.0}
stream = "".join(model.predict_stream(["ROMEO:"], params=params))
print(json.dumps({"predict": model.predict(["ROMEO:", "JULIET:"], params=params),
                  "stream": stream, "tinyllm": importlib.util.find_spec("tinyllm").origin}))
"""


def site_without_tinyllm(directory: Path) -> Path:
    """A directory of links to every site-packages entry except tinyllm's own."""
    directory.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if "tinyllm" not in entry.name.lower():
            (directory / entry.name).symlink_to(entry)
    return directory


def test_registered_model_loads_and_predicts_without_tinyllm_installed(tmp_path, make_params,
                                                                        monkeypatch, new_store):
    uri = new_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = make_params()
    layout = workflow.Layout(tmp_path / "project")
    workflow.build(params, layout)
    import tinyllm

    expected = tinyllm.load_model("models:/tiny/1").generate("ROMEO:", max_tokens=12,
                                                              temperature=0)

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1")
    child = subprocess.run([sys.executable, "-S", "-c", CHILD,
                            str(site_without_tinyllm(tmp_path / "site")), "models:/tiny/1"],
                           cwd=empty, env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["predict"][0] == expected and result["stream"] == expected
    assert "/code/tinyllm/" in result["tinyllm"]  # the copy logged with the model

    # Where tinyllm is installed, its Python API copies the model out without MLflow's bar.
    load = "import tinyllm; tinyllm.load_model('models:/tiny/1')"
    api = subprocess.run([sys.executable, "-c", load], cwd=empty, env=env, capture_output=True,
                         text=True, timeout=120)
    assert api.returncode == 0, api.stderr[-3000:]
    assert "Downloading artifacts" not in api.stderr

    model_dir = mlflow.artifacts.download_artifacts("models:/tiny/1", dst_path=str(tmp_path / "m"))
    requirements = (Path(model_dir) / "requirements.txt").read_text().split()
    names = [r.split("==")[0].lower() for r in requirements]
    assert "tinyllm" not in names
    assert {"torch", "numpy", "pyyaml"} <= set(names)
    assert all("==" in r for r in requirements if r.split("==")[0].lower() != "mlflow")
