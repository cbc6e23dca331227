"""The group: help, version, quick start-up, and errors as one line without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tinyllm import __version__


@pytest.mark.parametrize("command", [[], ["chat"], ["generate"], ["train"], ["models"]])
def test_every_command_has_help(invoke, command):
    for flag in ("--help", "-h"):
        result = invoke(*command, flag)
        assert result.exit_code == 0
        assert result.stdout.startswith("Usage: ")


def test_version(invoke):
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"tinyllm {__version__}"


def test_help_imports_nothing_heavy():
    """`tinyllm --help` must answer at once: no torch, MLflow or pipeline on the way."""
    code = ("import sys\nfrom tinyllm.cli import cli\n"
            "cli.main(['--help'], standalone_mode=False)\n"
            "heavy = ('torch', 'mlflow', 'numpy', 'rich', 'tinyllm.tracking.store',"
            " 'tinyllm.package', 'tinyllm.workflow')\n"
            "print('HEAVY', sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize("args, mentions, code", [
    (["chat", "--temperature", "11"], "--temperature", 1),  # sampling values: exit 1 as
    (["chat", "--top-p", "0"], "--top-p", 1),  # any bad value (see tests/test_sampling.py)
    (["chat", "--top-k", "-1"], "--top-k", 1),
    (["generate", "--max-tokens", "0", "--prompt", "x"], "--max-tokens", 1),
    (["chat", "--seed", "-3"], "--seed", 1),
    (["generate", "--seed", str(2**64), "--prompt", "x"], "--seed", 1),
    (["chat", "--device", "tpu"], "--device", 2),
    (["chat", "--nope"], "--nope", 2),
    (["fly"], "fly", 2),
    (["generate"], "--prompt", 2),
])
def test_bad_options_are_one_error_line(invoke, error_line, args, mentions, code):
    result = invoke(*args)
    assert result.exit_code == code
    line = error_line(result)
    assert mentions in line
    assert len(result.stderr.strip().splitlines()) == 1


def test_errors_have_a_traceback_only_with_verbose(invoke, error_line):
    quiet = invoke("chat", "--model-uri", "no/such/dir")
    assert error_line(quiet) == "error: model directory not found: no/such/dir"
    loud = invoke("-v", "chat", "--model-uri", "no/such/dir")
    assert loud.exit_code == 1
    assert "Traceback" in loud.stderr
    assert loud.stderr.strip().endswith("error: model directory not found: no/such/dir")
