"""What a request must be before the app sees it (tinyllm/serving/intake.py), over real sockets:
slow headers and slow bodies are cut off, the body cap holds for chunked bodies too, and a body
that is not JSON gets a message naming why. uvicorn in a thread serving the app under small
limits, so that every limit is reached in a fraction of a second."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time

import pytest
import uvicorn
from tiny_project import untrained_package

from tinyllm.serving.app import create_app
from tinyllm.serving.intake import timed_protocol
from tinyllm.serving.launch import free_port
from tinyllm.serving.limits import Limits
from tinyllm.serving.served import ServedModel
from tinyllm.tracking import discovery

LIMITS = Limits(max_body_bytes=4096, header_seconds=0.5, body_seconds=0.5)
HEAD = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@contextlib.contextmanager
def serving(package, limits: Limits):
    """(host, port) of `tinyllm serve`'s app for package under limits, uvicorn in a thread."""
    models = ServedModel(discovery.resolve(str(package)))
    port = free_port()
    config = uvicorn.Config(create_app(models, limits), port=port, log_level="warning",
                            http=timed_protocol(limits.header_seconds))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(10)
        models.stop()


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    with serving(untrained_package(tmp_path_factory.mktemp("in")), LIMITS) as found:
        yield found


def exchange(address, parts: list[bytes], pause: float = 0.0) -> tuple[bytes, float]:
    """Send parts (pause seconds apart) on a new connection, then read until the server closes
    it: what it answered, and how long after the first part it closed."""
    with socket.create_connection(address, timeout=10) as connection:
        started = time.monotonic()
        for part in parts:
            try:
                connection.sendall(part)
            except OSError:  # the server closed it meanwhile
                break
            time.sleep(pause)
        reply = b""
        try:
            while chunk := connection.recv(65536):
                reply += chunk
        except ConnectionResetError:  # closed with bytes of ours unread: a reset after its reply
            pass
        return reply, time.monotonic() - started


def error_of(reply: bytes) -> tuple[int, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]["message"]


def test_headers_sent_a_byte_at_a_time_are_cut_off(address):
    reply, seconds = exchange(address, [bytes([c]) for c in HEAD.encode()], pause=0.1)
    assert reply == b"" and seconds < 0.5 + 1.0  # closed, with nothing to answer


def test_a_body_slower_than_its_content_length_gets_a_408(address):
    reply, seconds = exchange(address, [f"{HEAD}Content-Length: 100\r\n\r\n{{".encode()])
    assert error_of(reply) == (408, "the request body did not arrive within 0.5 s")
    assert seconds < 0.5 + 1.0


def test_the_body_cap_holds_for_a_chunked_body(address):
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
    reply, _ = exchange(address, [f"{HEAD}Transfer-Encoding: chunked\r\n\r\n".encode(),
                                  *[chunk] * 5, b"0\r\n\r\n"])
    assert error_of(reply) == (413, "the request body is over 4096 bytes; this server takes at "
                                    "most 4096")


@pytest.mark.parametrize("headers, body, status, message", [
    ("", b"", 400, "the request body is empty; send a JSON object"),
    ("", b'{"model": "tiny", "prompt": "\xff"}', 400, "the body is not valid UTF-8 (byte 29)"),
    ("", b"[" * 2000 + b"]" * 2000, 400, "the JSON is nested too deep"),  # a bare parse error
    ("", b'{"model": ', 400, "malformed JSON: Expecting value: line 1 column 11 (char 10)"),
])
def test_a_body_that_is_no_json_gets_a_message_naming_why(address, headers, body, status,
                                                         message):
    head = f"{HEAD}{headers}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    assert error_of(exchange(address, [head.encode() + body])[0]) == (status, message)


@pytest.mark.parametrize("option, named", [
    ([], "got 'application/x-www-form-urlencoded'"),  # plain curl -d
    (["-H", "Content-Type: text/plain"], "got 'text/plain'"),
    (["-H", "Content-Type:"], "the request has none"),
])
def test_a_json_body_sent_as_something_else_is_told_to_say_application_json(address, option,
                                                                            named):
    url = f"http://{address[0]}:{address[1]}/v1/completions"
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", url, *option, "-d",
                          '{"model": "tiny", "prompt": "A"}'], capture_output=True, text=True,
                         timeout=30).stdout
    body, status = out.rsplit("\n", 1)
    assert status == "415"
    assert json.loads(body)["error"]["message"] == f"Content-Type must be application/json " \
                                                   f"({named})"
