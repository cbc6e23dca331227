"""`tinyllm chat`: model discovery, piped (scriptable) sessions, slash commands, and a real
terminal session driven through a pseudo-terminal."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pexpect
import pytest
import yaml

from tinyllm.package import load_package
from tinyllm.tracking.store import Store

SHORT = ["--max-tokens", "12"]


def continuation(tiny_model, prompt: str, **settings) -> str:
    sampling = {"max_tokens": 12, "temperature": 0.8, "top_k": 0, "top_p": 1.0,
                "seed": 1337, **settings}
    return load_package(tiny_model.package).generate(prompt, **sampling)


def write_params(name: str, alias: str = "champion") -> None:
    Path("params.yaml").write_text(yaml.safe_dump(
        {"tracking": {"registry_name": name, "champion_alias": alias}}))


# --- piped sessions -------------------------------------------------------------------------

def test_piped_prompts_give_only_continuations_on_stdout(invoke, tiny_model):
    result = invoke("chat", "--model-uri", tiny_model.package, "--seed", "1", *SHORT,
                    input="ROMEO:\n\nJULIET:\n")
    assert result.exit_code == 0, result.stderr
    expected = [continuation(tiny_model, p, seed=s) for p, s in (("ROMEO:", 1), ("JULIET:", 2))]
    assert result.stdout == "".join(text + "\n" for text in expected)
    assert "tinyllm chat:" in result.stderr  # the banner goes to stderr when piped


def test_json_mode_prints_one_line_per_prompt_in_a_real_pipe(tiny_model):
    """Continuations hold newlines; --json keeps each answer on its own line, flushed as soon
    as it is ready (the first answer arrives while the pipe is still open)."""
    chat = subprocess.Popen([tiny_model.command, "chat", "--model-uri", str(tiny_model.package),
                             "--json", "--seed", "3", "--max-tokens", "40"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=tiny_model.env())
    try:
        chat.stdin.write("ROMEO:\n")
        chat.stdin.flush()
        first = json.loads(chat.stdout.readline())  # before stdin is closed: flushed
        chat.stdin.write("/freq 2\n\nJULIET: é\n")
        out, err = chat.communicate(timeout=120)
    finally:
        chat.kill()
    assert chat.returncode == 0, err
    second = json.loads(out)  # one line left
    expected = continuation(tiny_model, "ROMEO:", seed=3, max_tokens=40)
    assert first == {"prompt": "ROMEO:", "text": expected, "seed": 3}
    assert "\n" in expected  # what plain piped output cannot tell apart
    assert second == {"prompt": "JULIET: é", "seed": 4, "text": continuation(
        tiny_model, "JULIET: é", seed=4, max_tokens=40, frequency_penalty=2.0)}
    assert "frequency-penalty 2" in err and "characters outside the vocabulary" in err


def test_slash_commands_change_settings_and_never_fail(invoke, tiny_model):
    script = ["/temp 0", "ROMEO:", "/temp 11", "/topk x", "/tokens", "/bogus", "/seed 5",
              "/topp 0.9", "/settings", "/reset", "ROMEO:", "/help", "/quit", "JULIET:"]
    result = invoke("chat", "--model-uri", tiny_model.package, *SHORT,
                    input="\n".join(script) + "\n")
    assert result.exit_code == 0
    greedy = continuation(tiny_model, "ROMEO:", temperature=0)
    assert result.stdout == f"{greedy}\n{continuation(tiny_model, 'ROMEO:')}\n"  # no JULIET
    for message in ("temperature 0,", "/temp: temperature must be <= 10.0, got 11.0",
                    "/topk: 'x' is not an integer", "/tokens needs a value",
                    "unknown command /bogus", "top-p 0.9, min-p off, max-tokens 12, seed 5",
                    "settings reset: temperature 0.8", "/quit, /exit"):
        assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_each_prompt_gets_its_own_draw_and_seed_restarts_the_sequence(invoke, tiny_model):
    session = "ROMEO:\nROMEO:\n/seed 7\nROMEO:\nROMEO:\n"
    result = invoke("chat", "--model-uri", tiny_model.package, *SHORT, input=session)
    draws = [continuation(tiny_model, "ROMEO:", seed=s) for s in (1337, 1338, 7, 8)]
    assert result.stdout == "".join(f"{text}\n" for text in draws)
    assert len(set(draws)) == 4  # the same prompt twice no longer begins alike
    again = invoke("chat", "--model-uri", tiny_model.package, *SHORT, input=session)
    assert again.stdout == result.stdout  # a session is reproducible from its seed


def test_unknown_characters_and_long_prompts_are_explained(invoke, tiny_model):
    long_prompt = "ROMEO: love " * 5  # 60 characters; the context is 16
    result = invoke("chat", "--model-uri", tiny_model.package, *SHORT,
                    input=f"ROMEO: é€\n{long_prompt}\n")
    assert result.exit_code == 0
    assert "2 characters outside the vocabulary were replaced" in result.stderr
    assert "'é'×1" in result.stderr
    assert "the prompt is 60 characters long; the model sees only its last 16" in result.stderr
    assert len(result.stdout.splitlines()) >= 2


# --- which model ----------------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["models:/tiny/1", "models:/tiny/latest", "models:/tiny@champion",
                                 "run"])
def test_every_uri_form_loads(invoke, tiny_model, uri):
    if uri == "run":
        store = Store(tiny_model.uri)
        uri = f"runs:/{store.client.get_model_version('tiny', '1').run_id}/model"
    result = invoke("chat", "--model-uri", uri, *SHORT, input="ROMEO:\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == continuation(tiny_model, "ROMEO:") + "\n"
    assert "bits/char" in result.stderr  # from the version tag or the run's metric


def test_without_uri_the_champion_of_params_yaml_model_is_used(invoke, tiny_model):
    write_params("tiny")
    result = invoke("chat", *SHORT, input="ROMEO:\n")
    assert result.exit_code == 0, result.stderr
    assert "using models:/tiny@champion: the 'champion' alias of 'tiny'" in result.stderr
    assert "tinyllm chat: tiny version 1" in result.stderr
    assert result.stdout == continuation(tiny_model, "ROMEO:") + "\n"


def test_without_a_champion_the_latest_version_is_used(invoke):
    write_params("tiny", alias="best")
    result = invoke("chat", *SHORT, input="")
    assert result.exit_code == 0, result.stderr
    assert "using models:/tiny/latest: 'tiny' (./params.yaml) has no 'best' alias" in (
        result.stderr)


def test_without_a_registered_model_the_local_package_is_used(invoke, tiny_model):
    shutil.copytree(tiny_model.package, "models/model")
    result = invoke("chat", *SHORT, input="ROMEO:\n")  # no params.yaml: 'shakespeare'
    assert result.exit_code == 0, result.stderr
    assert "using models/model: no registered model 'shakespeare'" in result.stderr
    assert result.stdout == continuation(tiny_model, "ROMEO:") + "\n"


def test_no_store_yet_is_not_created_by_looking(invoke, error_line, tiny_model, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    line = error_line(invoke("chat", input=""))
    assert "no MLflow store at sqlite:///" in line and "dvc repro" in line
    line = error_line(invoke("chat", "--model-uri", "models:/tiny/1", input=""))
    assert "cannot load models:/tiny/1: no MLflow store" in line and "dvc repro" in line
    shutil.copytree(tiny_model.package, "models/model")
    result = invoke("chat", *SHORT, input="ROMEO:\n")
    assert result.exit_code == 0
    assert "using models/model: no MLflow store at" in result.stderr
    assert not Path("mlflow.db").exists()


@pytest.mark.parametrize("uri, expected", [
    ("models:/nope/1", "no registered model named 'nope' in sqlite:///"),
    ("models:/tiny/9", "model 'tiny' has no version '9' (models:/tiny/9); versions: 1"),
    ("models:/tiny@best", "model 'tiny' has no alias 'best' (models:/tiny@best); aliases: "
                          "champion"),
    ("runs:/0123abc/model", "cannot use runs:/0123abc/model: no such run"),
    ("s3://bucket/model", "unsupported model URI"),
])
def test_unknown_models_name_what_exists(invoke, error_line, uri, expected):
    line = error_line(invoke("chat", "--model-uri", uri, input=""))
    assert expected in line
    if "nope" in uri:
        assert "tiny" in line.split("registered models: ")[1].split(", ")


def test_unreachable_server_is_named(invoke, error_line):
    result = invoke("--tracking-uri", "http://127.0.0.1:9", "chat", input="")
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in error_line(result)


# --- real processes -------------------------------------------------------------------------

def test_piped_into_the_installed_command(tiny_model, tmp_path):
    write_params("tiny")
    done = subprocess.run([tiny_model.command, "chat", "--seed", "1", *SHORT],
                          input="ROMEO:\n", capture_output=True, text=True, timeout=120,
                          env=tiny_model.env())
    assert done.returncode == 0, done.stderr
    assert done.stdout == continuation(tiny_model, "ROMEO:", seed=1) + "\n"
    assert "using models:/tiny@champion" in done.stderr


def test_undecodable_bytes_in_piped_prompts_are_replaced_not_a_traceback(tiny_model):
    done = subprocess.run([tiny_model.command, "chat", "--model-uri", str(tiny_model.package),
                           *SHORT], input=b"ROMEO: \xff\n", capture_output=True, timeout=120,
                          env=tiny_model.env())
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr
    assert "1 characters outside the vocabulary were replaced" in done.stderr.decode()
    assert done.stdout.decode() == continuation(tiny_model, "ROMEO: \ufffd") + "\n"


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "weights.pt").write_bytes((p / "weights.pt").read_bytes()[:500]),
     "truncated or corrupt"),
    (lambda p: (p / "config.json").write_text(
        (p / "config.json").read_text().replace('"format_version": 2', '"format_version": 9')),
     "unsupported format_version 9"),
])
def test_a_damaged_package_is_one_error_line(invoke, error_line, tiny_model, tmp_path, damage,
                                             message):
    copy = shutil.copytree(tiny_model.package, tmp_path / "damaged")
    damage(copy)
    assert message in error_line(invoke("chat", "--model-uri", copy, input="ROMEO:\n"))


def default_sigint() -> None:
    """Ctrl-C as a terminal gives it, even where the tests run with SIGINT ignored (a shell's
    background job, e.g. `nohup make test &`): ignoring is inherited, and would be the chat's."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_terminal_session(tiny_model, tmp_path):
    """Banner, /temp 0, a prompt interrupted by Ctrl-C mid-generation, /quit: exit 0."""
    child = pexpect.spawn(tiny_model.command, ["chat", "--model-uri", "models:/tiny@champion",
                                               "--max-tokens", "100000"],
                          env=tiny_model.env(HOME=str(tmp_path), TERM="dumb"),
                          encoding="utf-8", timeout=90, dimensions=(40, 200),
                          preexec_fn=default_sigint)
    try:
        child.expect("tinyllm chat: tiny version 1")
        child.expect("13,9|parameters")
        child.expect("> ")
        child.sendline("/temp 0")
        child.expect("temperature 0, top-k off")
        child.expect("> ")
        child.sendline("ROMEO:")
        child.expect("ROMEO:")  # the terminal's echo of the prompt
        child.expect(r"(?s).{40}")  # generation is running, 100000 characters to go
        child.sendintr()
        child.expect(r"\(stopped\)")
        child.expect("> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    history = (tmp_path / ".tinyllm_history").read_text()
    assert "/temp 0" in history and "ROMEO:" in history


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_is_one_error_line(invoke, error_line, tiny_model):
    result = invoke("chat", "--model-uri", tiny_model.package, "--device", "cuda", input="")
    assert error_line(result) == "error: --device is 'cuda' but no CUDA device is available"
