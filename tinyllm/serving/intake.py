"""What a request must be before the app sees it, so that no client holds a worker's socket or
memory for long: its headers within Limits.header_seconds, and a POST body within
max_body_bytes (however it is sent: with a Content-Length or chunked, counted as it arrives)
and body_seconds, that is JSON: `Content-Type: application/json`, UTF-8, not nested too deep.
Each problem is a 4xx in OpenAI's error shape naming it.

uvicorn bounds the size of headers (h11's 16 KB) and the idle time between requests
(timeout_keep_alive), but not the time a client takes to send them, nor a body's size or time.
"""

from __future__ import annotations

import asyncio
import json

import h11
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from tinyllm.serving.limits import Limits
from tinyllm.serving.requests import error_body


class BodyError(Exception):
    """close: end the connection after the answer, rather than read and drop the rest of a
    body (unbounded when chunked or slow; a declared Content-Length is drained, which clients
    that send it whole before reading the answer need)."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


def timed_protocol(header_seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers have not all come
    header_seconds after it opened or after its previous response (a client sending them a
    byte at a time would otherwise hold it for ever)."""

    class TimedH11Protocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline = self.loop.call_later(header_seconds, self._headers_due)

        def _headers_due(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no request came in time: nothing to answer

    return TimedH11Protocol


class Intake:
    """ASGI middleware reading the body of each POST to one of paths (the routes that take
    JSON) within the limits and checking that it is JSON, then handing it to the app; any
    other request is the app's (a 404, a 405). Plain ASGI: Starlette's @app.middleware("http")
    would also relay every streamed chunk of every response through a task and a memory
    stream."""

    def __init__(self, app, limits: Limits, paths: frozenset[str]):
        self.app, self.limits, self.paths = app, limits, paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or (
                scope["path"] not in self.paths):
            await self.app(scope, receive, send)
            return
        try:
            headers = dict(scope["headers"])
            body = await asyncio.wait_for(self._read(headers, receive), self.limits.body_seconds)
            check_json(headers.get(b"content-type"), body)
        except asyncio.TimeoutError:
            await _refuse(scope, receive, send, BodyError(
                408, f"the request body did not arrive within {self.limits.body_seconds:g} s",
                close=True))
            return
        except BodyError as exc:
            await _refuse(scope, receive, send, exc)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, headers: dict, receive) -> bytes:
        cap = self.limits.max_body_bytes
        size = headers.get(b"content-length", b"")
        if size.isdigit() and int(size) > cap:  # refused before reading any of it
            raise BodyError(413, f"the request body is {int(size)} bytes; this server takes at "
                                 f"most {cap}")
        parts, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BodyError(400, "the client went away while sending the body", close=True)
            parts.append(message.get("body", b""))
            total += len(parts[-1])
            if total > cap:
                raise BodyError(413, f"the request body is over {cap} bytes; this server takes "
                                     f"at most {cap}", close=True)
            if not message.get("more_body", False):
                return b"".join(parts)


def check_json(content_type: bytes | None, body: bytes) -> None:
    """BodyError naming what keeps body from being a JSON document the app can read."""
    kind = (content_type or b"").split(b";")[0].strip().lower().decode("latin-1")
    if kind != "application/json" and not kind.endswith("+json"):
        got = f"got {kind!r}" if kind else "the request has none"
        raise BodyError(415, f"Content-Type must be application/json ({got})")
    if not body.strip():
        raise BodyError(400, "the request body is empty; send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(400, f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BodyError(400, "the JSON is nested too deep") from None


async def _refuse(scope, receive, send, error: BodyError) -> None:
    headers = {"Connection": "close"} if error.close else None
    await JSONResponse(error_body(error.message), error.status, headers)(scope, receive, send)


def _replay(body: bytes, receive):
    """An ASGI receive giving the body read, then what the client sends (its disconnect)."""
    given = False

    async def replayed():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
