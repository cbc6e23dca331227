"""`tinyllm serve` as clients see it: the official openai client, raw HTTP and SSE, bad requests,
caps, disconnects and SIGTERM, against a real server process serving a tiny model package."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
import torch
from click.testing import CliRunner
from tiny_project import untrained_package

from tinyllm.cli import cli
from tinyllm.config import SamplingConfig
from tinyllm.generate import stream_tokens
from tinyllm.model import GPT, GPTConfig
from tinyllm.package import FORMAT_1_BLOCK
from tinyllm.serving import launch
from tinyllm.serving.batching import (
    SHUTDOWN,
    Decoder,
    Sequence,
    SlotCache,
    decode_step,
    transposed_weights,
)
from tinyllm.serving.launch import free_port, stop

TINYLLM = str(Path(sys.executable).with_name("tinyllm"))
BAD = [  # (body changes, status, param, part of the message)
    ({"top_p": 0}, 400, "top_p", "top_p must be > 0.0, got 0.0"),
    ({"temperature": -1}, 400, "temperature", "temperature must be >= 0.0, got -1.0"),
    ({"max_tokens": 0}, 400, "max_tokens", "max_tokens must be >= 1, got 0"),
    ({"max_tokens": 10**8}, 400, "max_tokens", "max_tokens must be <= 100000"),
    ({"seed": 2**64}, 400, "seed", "seed must be <="),
    ({"top_k": "many"}, 400, "top_k", "top_k"),
    ({"bogus": 1}, 400, "bogus", "unknown field 'bogus'"),
    ({"model": None}, 400, "model", "missing field 'model'"),
    ({"model": "gpt-4"}, 404, "model", "model 'gpt-4' is not served here"),
    ({"prompt": "x" * 5_000_000}, 400, "prompt", "this server takes at most"),
    ({"prompt": "x" * 17_000_000}, 413, None, "this server takes at most 16777216"),
    ({"n": 0}, 400, "n", "n must be between"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
]


def start(package: Path, *options: str) -> tuple[subprocess.Popen, str, Path]:
    """`tinyllm serve` of package, up and answering /health; its output in a temporary log."""
    log = Path(tempfile.mkstemp(prefix="tinyllm-serve-", suffix=".log")[1])
    process, url = launch.start([TINYLLM, "serve", "--model-uri", str(package), *options], log)
    launch.wait_until_up(f"{url}/health", process, log)
    return process, url, log


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return untrained_package(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(package):
    process, url, _ = start(package, "--max-tokens-limit", "100000", "--workers", "1")
    yield url
    stop(process)


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def generate(package: Path, *args: str) -> list[str]:
    """What `tinyllm generate --json` prints for the same request: its texts."""
    result = CliRunner().invoke(cli, ["generate", "--model-uri", str(package), "--json", *args])
    assert result.exit_code == 0, result.output
    return [item["text"] for item in json.loads(result.stdout)]


def post(url: str, path: str, body: bytes | dict) -> tuple[int, dict | str, str]:
    """(status, parsed JSON or raw text, content type) for a raw HTTP POST."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request("POST", path, data, {"Content-Type": "application/json"})
    reply = connection.getresponse()
    raw = reply.read().decode()
    kind = reply.getheader("Content-Type", "")
    connection.close()
    return reply.status, (json.loads(raw) if kind.startswith("application/json") else raw), kind


def test_a_seeded_completion_is_generates_text_byte_for_byte_streamed_or_not(client, package):
    expected = generate(package, "--prompt", "ROMEO:", "--seed", "7", "--max-tokens", "40",
                        "--top-k", "5", "--min-p", "0.05", "--num-samples", "2")
    options = {"model": "tiny", "prompt": "ROMEO:", "seed": 7, "max_tokens": 40,
               "extra_body": {"top_k": 5, "min_p": 0.05}}
    whole = client.completions.create(**options, n=2)
    assert [c.text for c in whole.choices] == expected  # choice i uses seed + i
    assert whole.model == str(package)  # names what it served
    assert whole.usage.completion_tokens == 80 and whole.usage.prompt_tokens == 12
    deltas = [c.text for chunk in client.completions.create(**options, stream=True)
              for c in chunk.choices]
    assert "".join(deltas) == expected[0]
    # Text arrives as it is made: what came since the last wake-up is one piece, so a busy
    # machine may send 40 characters at once, but not a thousand.
    longer = client.completions.create(**{**options, "max_tokens": 1000}, stream=True)
    assert len([c.text for chunk in longer for c in chunk.choices if c.text]) > 1


def test_chat_messages_become_a_documented_prompt(client, package):
    messages = [{"role": "system", "content": "A play."},
                {"role": "user", "name": "ROMEO", "content": "But soft"}]
    prompt = "SYSTEM:\nA play.\n\nROMEO:\nBut soft\n\nASSISTANT:\n"
    [expected] = generate(package, "--prompt", prompt, "--seed", "3", "--max-tokens", "30")
    reply = client.chat.completions.create(model="tiny", messages=messages, seed=3,
                                           max_tokens=30)
    assert reply.choices[0].message.content == expected
    stream = client.chat.completions.create(model="tiny", messages=messages, seed=3,
                                            max_tokens=30, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == 30


def test_sse_content_type_and_framing(server):
    status, text, kind = post(server, "/v1/completions", {
        "model": "tiny", "prompt": "ROMEO:", "max_tokens": 5, "stream": True, "stop": "\n"})
    assert status == 200 and kind.startswith("text/event-stream")
    events = text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: {") and "\n" not in event
        assert json.loads(event[len("data: "):])["object"] == "text_completion"


def test_stop_strings_end_the_text_before_them(client, package):
    [full] = generate(package, "--prompt", "ROMEO:", "--seed", "1", "--max-tokens", "60")
    stop = full[10:12]
    reply = client.completions.create(model="tiny", prompt="ROMEO:", seed=1, max_tokens=60,
                                      stop=[stop])
    assert reply.choices[0].text == full[:full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("change, status, param, message", BAD)
def test_bad_requests_get_a_4xx_in_openais_shape_naming_the_field(server, change, status,
                                                                   param, message):
    body = {"model": "tiny", "prompt": "ROMEO:", **change}
    body = {k: v for k, v in body.items() if v is not None}
    got, reply, _ = post(server, "/v1/completions", body)
    assert got == status
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["param"] == param and message in reply["error"]["message"]


def test_attention_is_each_heads_weights_and_bad_texts_are_a_4xx_naming_the_field(server):
    status, reply, _ = post(server, "/v1/attention", {"model": "tiny", "text": "ROMEO: Bu"})
    assert status == 200 and reply["tokens"] == list("ROMEO: Bu")
    assert [len(row) for row in reply["weights"][0][1]] == list(range(1, 10))  # 1 layer, 2 heads
    for change, status, param, message in [
            ({"text": "x" * 17}, 400, "text", "attention takes at most 16 (the model's context"),
            ({"text": ""}, 400, "text", "at least 1 character"),
            ({"text": None}, 400, "text", "missing field 'text'"),
            ({"text": 5}, 400, "text", "valid string"),
            ({"model": "gpt-4"}, 404, "model", "not served here")]:
        body = {k: v for k, v in {"model": "tiny", "text": "R", **change}.items()
                if v is not None}
        got, reply, _ = post(server, "/v1/attention", body)
        assert (got, reply["error"]["param"]) == (status, param)
        assert message in reply["error"]["message"]


def test_malformed_json_and_bad_chat_messages(server, client):
    status, reply, _ = post(server, "/v1/chat/completions", b'{"model": "tiny", "messages": [')
    assert status == 400 and reply["error"]["message"].startswith("malformed JSON")
    status, reply, _ = post(server, "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "robot", "content": "hi"}]})
    assert status == 400 and reply["error"]["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError, match=r"top_p must be > 0\.0"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       top_p=0)
    assert [m.id for m in client.models.list()] == ["tiny"]  # still serving


def active(url: str) -> int:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
        return json.loads(reply.read())["active"]


def test_a_client_that_disconnects_mid_stream_stops_its_generation(server):
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/completions", json.dumps({
        "model": "tiny", "prompt": "ROMEO:", "max_tokens": 100000, "stream": True}),
        {"Content-Type": "application/json"})
    reply = connection.getresponse()
    assert reply.readline().startswith(b"data: ")
    assert active(server) == 1
    connection.close()  # minutes of generation left
    deadline = time.monotonic() + 10
    while active(server):
        assert time.monotonic() < deadline, "the generation kept running"
        time.sleep(0.1)


def worker_processes(pid: int) -> list[int]:
    """The worker processes `tinyllm serve` (pid) spawned, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_request_time_is_capped_and_sigterm_ends_the_server_at_once(package, workers):
    """A second SIGTERM while the workers stop (a supervisor insisting, Ctrl-C twice) changes
    nothing: a clean exit, no error line or traceback."""
    process, url, log = start(package, "--max-tokens-limit", "100000", "--request-seconds", "1",
                         "--workers", str(workers))
    try:
        spawned = worker_processes(process.pid)
        assert len(spawned) == workers
        started = time.monotonic()
        status, reply, _ = post(url, "/v1/completions", {"model": "tiny", "prompt": "R",
                                                         "max_tokens": 100000})
        assert status == 200 and time.monotonic() - started < 10
        assert reply["choices"][0]["finish_reason"] == "length"
        assert 0 < len(reply["choices"][0]["text"]) < 100000

        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("POST", "/v1/completions", json.dumps({
            "model": "tiny", "prompt": "R", "max_tokens": 100000, "stream": True}),
            {"Content-Type": "application/json"})
        streamed = connection.getresponse()
        assert streamed.readline().startswith(b"data: ")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        # cut short, which a reply that reached its limit ("length") is not
        assert b'"finish_reason": "abort"' in streamed.read()
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert not re.search("error|Traceback", log.read_text()), log.read_text()
        assert not [p for p in spawned if Path(f"/proc/{p}").exists()]  # none left behind
        connection.close()
    finally:
        stop(process)


def test_batched_decoding_gives_each_sequence_exactly_its_text_alone():
    """Sequences of different lengths, settings and start times (some in lockstep, attending
    together) share the decoder's steps, and each gets what stream_tokens gives it alone (the
    window slides past the context too)."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=40, context_length=16, n_layer=2, n_head=2, d_model=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    jobs = [([1 + i % 7] * (3 if i < 5 else i % 5), SamplingConfig(max_tokens=20 + 7 * i, seed=i,
                                                   temperature=(0.0, 0.7, 1.2)[i % 3],
                                                   top_k=(0, 5)[i % 2], min_p=(0.0, 0.1)[i % 2]))
            for i in range(10)]
    expected = [list(stream_tokens(model, ids, settings)) for ids, settings in jobs]
    decoder = Decoder(model, max_batch=6)
    got: list[list[int]] = [[] for _ in jobs]
    for i, (ids, settings) in enumerate(jobs):
        decoder.submit(Sequence(ids, settings, lambda t, i=i: got[i].append(t)))
        time.sleep(0.003 * (i % 3) if i >= 5 else 0)  # the first five run in lockstep
    deadline = time.monotonic() + 60
    while not all(out and isinstance(out[-1], str) for out in got):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    decoder.stop()
    assert [out[:-1] for out in got] == expected
    assert {out[-1] for out in got} == {"length"}



def test_a_sequence_whose_reader_is_behind_waits_then_gets_exactly_its_text():
    """A slow reader's sequence draws nothing while its reader is behind (the others go on),
    then resumes where it was: the text it would have had."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=40, context_length=16, n_layer=1, n_head=2, d_model=32))
    settings = [SamplingConfig(max_tokens=30, seed=i, temperature=0.9) for i in range(2)]
    expected = [list(stream_tokens(model, [1, 2], s)) for s in settings]
    behind = [True]
    got: list[list] = [[], []]
    decoder = Decoder(model, max_batch=4)
    decoder.submit(Sequence([1, 2], settings[0], got[0].append, behind=lambda: behind[0]))
    decoder.submit(Sequence([1, 2], settings[1], got[1].append))
    deadline = time.monotonic() + 30
    while not (got[1] and isinstance(got[1][-1], str)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert got[0] == [] and decoder.in_flight == 1
    behind[0] = False
    while not (got[0] and isinstance(got[0][-1], str)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    decoder.stop()
    assert [out[:-1] for out in got] == expected and got[0][-1] == "length"


@pytest.mark.parametrize("block", [FORMAT_1_BLOCK, {}], ids=["gpt2", "default"])
def test_a_shared_decoding_step_computes_each_row_bit_for_bit_as_alone(block):
    """decode_step over sequences at eight different positions: each row's logits equal the
    model's single-sequence pass exactly, step after step (not merely close: sampled text must
    not change with what else is being served), whichever block (rotary positions per row)."""
    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=60, context_length=64, n_layer=2, n_head=4,
                          d_model=64, **block)).eval()
    shared = model.new_cache(10)
    slots = [9, 0, 4, 2, 7, 1, 5, 3]  # any slots, in any order
    caches = [SlotCache(shared.keys, shared.values, slot) for slot in slots]
    alone = [model.new_cache(1) for _ in slots]
    prompts = [torch.randint(1, 60, (1, 1 + 6 * i)) for i in range(len(slots))]
    with torch.inference_mode():
        for prompt, cache, own in zip(prompts, caches, alone, strict=True):
            model(prompt, cache=cache)
            model(prompt, cache=own)
        tokens = [int(p[0, -1]) for p in prompts]
        for _ in range(10):
            rows = decode_step(model, transposed_weights(model), tokens, caches, shared.keys,
                               shared.values)
            for row, token, own in zip(rows, tokens, alone, strict=True):
                logits, _ = model(torch.tensor([[token]]), cache=own)
                assert torch.equal(row, logits[0, -1])
            tokens = [int(r.argmax()) for r in rows]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_error_line_before_any_loading(package, workers):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run([TINYLLM, "serve", "--model-uri", str(package), "--port",
                                 str(port), "--workers", workers], capture_output=True,
                                text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_a_model_that_cannot_load_is_one_error_line_and_no_worker_outlives_it(package, tmp_path,
                                                                              fault):
    """Missing: the server's process cannot find it (while its first worker imports torch).
    Corrupt: the worker cannot load it."""
    import os
    import shutil

    model = tmp_path / "model"
    expected = f"error: model directory not found: {model}"
    if fault == "corrupt":
        shutil.copytree(package, model)
        (model / "weights.pt").write_text("not weights")
        expected = f"error: refusing to load {model / 'weights.pt'}: "
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        server = subprocess.Popen([TINYLLM, "serve", "--model-uri", str(model), "--port",
                                   str(free_port()), "--workers", "2"], stdout=out, stderr=err,
                                  start_new_session=True)  # files: a stray worker holds no pipe
        assert server.wait(timeout=120) == 1
    error = (tmp_path / "err").read_text()
    assert (tmp_path / "out").read_text() == ""
    assert error.startswith(expected) and len(error.splitlines()) == 1
    deadline = time.monotonic() + 10  # nothing left in the server's process group (its
    while True:  # multiprocessing helper ends once the server is gone)
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a process of the server outlived it"
        time.sleep(0.1)


@pytest.mark.parametrize("workers", ["0", "-1", str(2**64), "many"])
def test_a_bad_workers_count_is_one_error_line_naming_the_option(workers):
    """Option checks need no server process: `tinyllm` in-process, on a port in use so that a
    count let through fails fast instead of serving."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(cli, ["serve", "--workers", workers, "--port", port])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: Invalid value for '--workers': ")
    assert len(result.stderr.splitlines()) == 1


def health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_generation_that_fails_is_an_error_the_client_sees_and_the_worker_serves_on(
        package, tmp_path):
    """A failure injected into the decoder: a package whose unknown-character embedding is NaN,
    so a prompt with a character the model never saw gives NaN logits (the model is broken for
    it; no temperature is). That request gets a 500, or an error event when streamed; a stream
    in flight on the same worker goes on; /health says degraded; the next request is served,
    on the slot the failed one held too. The temperature that once killed a worker is served."""
    from tinyllm.package import load_package, save_package
    from tinyllm.tokenizer import UNKNOWN_ID

    loaded = load_package(package)
    with torch.no_grad():
        loaded.model.tok_emb.weight[UNKNOWN_ID] = float("nan")
    broken = save_package(tmp_path / "tiny", loaded.model, loaded.tokenizer, {})
    process, url, _ = start(broken, "--workers", "1")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    try:
        assert health(url) == (200, {"status": "ok", "model": str(broken), "active": 0,
                                     "failures": 0, "last_failure": None})
        going = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=2000,
                                          stream=True, seed=1)
        first = next(iter(going))
        status, reply, _ = post(url, "/v1/completions", {"model": "tiny", "prompt": "Z€",
                                                         "max_tokens": 5})
        assert status == 500 and reply["error"]["type"] == "server_error"
        assert "the model's logits hold NaN" in reply["error"]["message"]
        with pytest.raises(openai.APIError, match="generation failed in the server"):
            list(client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Z"}], stream=True))
        for temperature in (1e-45, 1e-300, 5e-324):  # batched with the stream still going
            reply = client.completions.create(model="tiny", prompt="A", max_tokens=5,
                                              temperature=temperature)
            assert len(reply.choices[0].text) == 5 and reply.choices[0].finish_reason == "length"
        assert health(url)[1]["active"] == 1  # the stream was still going
        rest = [c for chunk in going for c in chunk.choices]
        assert len(first.choices[0].text + "".join(c.text for c in rest)) == 2000
        assert rest[-1].finish_reason == "length"
        status, state = health(url)
        assert status == 200 and state["status"] == "degraded" and state["failures"] == 2
        assert "NaN" in state["last_failure"]
    finally:
        stop(process)


def test_a_decoding_step_that_fails_ends_its_sequences_and_the_next_ones_are_served():
    """A failure injected into the decoder's forward pass (the whole step, not one draw): its
    sequences end with FAILED and the error, and the decoder thread serves the next ones."""
    from tinyllm.serving.batching import FAILED

    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=30, context_length=16, n_layer=1, n_head=2, d_model=16))

    class FailsOnce:
        def __init__(self):
            self.failed = False

        def __getattr__(self, name):
            return getattr(model, name)

        def __call__(self, *args, **kwargs):
            if not self.failed:
                self.failed = True
                raise RuntimeError("injected")
            return model(*args, **kwargs)

    decoder = Decoder(model, max_batch=4)
    decoder.model = FailsOnce()
    settings = SamplingConfig(max_tokens=12, seed=4)
    got: list[list] = [[], []]
    failed = decoder.submit(Sequence([1, 2], settings, got[0].append))
    deadline = time.monotonic() + 30
    while not got[0]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    decoder.submit(Sequence([1, 2], settings, got[1].append))
    while not got[1] or got[1][-1] != "length":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    decoder.stop()
    assert got[0] == [FAILED] and failed.error == "RuntimeError: injected"
    assert got[1][:-1] == list(stream_tokens(model, [1, 2], settings))
    assert decoder.failures.count == 1


def test_a_retired_decoder_finishes_its_work_and_tells_later_requests_it_has_shut_down(model):
    """A version dropped (or replaced) while a request picked it: the request ends, never hangs."""
    decoder = Decoder(model, max_batch=2)
    settings = SamplingConfig(max_tokens=5, seed=1)
    before: list = []
    decoder.submit(Sequence([1, 2], settings, before.append))
    decoder.retire()
    decoder.thread.join(timeout=30)
    assert not decoder.thread.is_alive()
    assert before == [*stream_tokens(model, [1, 2], settings), "length"]
    after: list = []
    decoder.submit(Sequence([1, 2], settings, after.append))
    assert after == [SHUTDOWN]
