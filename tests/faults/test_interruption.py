"""Killed training loses nothing: SIGKILL resumes to the same weights, SIGTERM checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

SCRIPT = textwrap.dedent("""
    import sys
    from tinyllm import workflow
    from tinyllm.config import params_from_dict
    from tinyllm.errors import exit_on_error
    from tinyllm.logs import setup_logging
    sys.path.insert(0, {tests!r})
    from tiny_project import tiny_params

    def main():
        setup_logging()
        params = params_from_dict(tiny_params({corpus!r}, **{{
            "train.max_steps": 300, "train.checkpoint_interval": 20, "train.eval_interval": 100,
            "model.dropout": 0.1, "tracking.enabled": False}}))
        layout = workflow.Layout({root!r})
        workflow.prepare(params, layout)
        workflow.tokenize(params, layout)
        workflow.train(params, layout)

    exit_on_error(main)
""")


def start_training(root: Path, corpus: Path) -> subprocess.Popen:
    code = SCRIPT.format(tests=str(Path(__file__).parents[1]),
                         corpus=str(corpus), root=str(root))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(process: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def weights(root: Path) -> dict:
    return torch.load(root / "models/model/weights.pt", weights_only=True)


def test_sigkill_then_rerun_resumes_and_ends_with_identical_weights(tmp_path, corpus_dir):
    clean = start_training(tmp_path / "clean", corpus_dir)
    assert clean.wait(timeout=300) == 0, clean.communicate()

    killed = start_training(tmp_path / "killed", corpus_dir)
    checkpoint = tmp_path / "killed/models/checkpoints/last.pt"
    wait_for_checkpoint(killed, checkpoint)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed/models/model").exists()

    resumed = start_training(tmp_path / "killed", corpus_dir)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from" in err and "at step 0 " not in err
    reference, result = weights(tmp_path / "clean"), weights(tmp_path / "killed")
    assert reference.keys() == result.keys()
    assert all(torch.equal(reference[k], result[k]) for k in reference)


def test_sigterm_writes_a_checkpoint_and_exits_non_zero_with_one_line(tmp_path, corpus_dir):
    process = start_training(tmp_path, corpus_dir)
    wait_for_checkpoint(process, tmp_path / "models/checkpoints/last.pt")
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: training interrupted by signal 15 at step ")
    assert "checkpoint written to" in last
    state = torch.load(tmp_path / "models/checkpoints/last.pt", weights_only=True)
    assert f"at step {state['step']};" in last
