"""`tinyllm serve`: an OpenAI-compatible HTTP server for a model, streaming included.

    GET  /v1/models              the model served (its id is what requests name as `model`)
    POST /v1/completions         prompt -> continuation
    POST /v1/chat/completions    messages -> reply; see chat_prompt for how they become a prompt

Requests take the sampling settings of tinyllm.config.SamplingConfig under the same names and
defaults (max_tokens, temperature, top_k, top_p, min_p, seed), plus stop, n and stream. With
`stream: true` the reply is server-sent events, `data: {json}` chunks ending in `data: [DONE]`.
usage counts characters. Every response names the exact model version (`models:/NAME/VERSION`).

Concurrent requests share one model through tinyllm.batching.Decoder: one forward pass per step
for every sequence in flight, each giving exactly what `tinyllm generate` gives alone. When the
alias (or /latest) a server serves moves, tinyllm.serving hands each worker the new version, and
new requests get it without a restart. Bad requests get a 4xx in OpenAI's error shape
naming the field; SIGTERM ends whatever is in flight and exits within seconds.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException

from tinyllm.balancing import SharedLoads
from tinyllm.batching import CANCELLED, Decoder, Sequence
from tinyllm.config import SEED_MAX, SamplingConfig
from tinyllm.discovery import load_resolved, pinned_uri
from tinyllm.errors import TinyLLMError
from tinyllm.generate import StopFilter, prompt_ids
from tinyllm.serving import Limits

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A 4xx in OpenAI's error shape."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --- requests -----------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: int = 1
    user: str | None = None  # accepted and ignored, as clients often send it


# The sampling fields, derived from the one definition (names, types, defaults, help).
_Sampled = create_model(
    "Sampled", __base__=_Common,
    **{f.name: (int if f.type == "int" else float,
                Field(f.default, description=f.metadata["help"]))
       for f in fields(SamplingConfig)})


class CompletionRequest(_Sampled):
    prompt: str | list[str]


class Message(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str
    name: str | None = None


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)


def chat_prompt(messages: list[Message]) -> str:
    """Messages as a script the character model continues: each one becomes `SPEAKER:\\n` plus
    its content and a blank line, the speaker being its name (e.g. ROMEO) or else its role in
    capitals; the prompt ends with `ASSISTANT:\\n` for the reply."""
    lines = [f"{m.name or m.role.upper()}:\n{m.content}\n\n" for m in messages]
    return "".join(lines) + "ASSISTANT:\n"


def settings_of(body: _Common, limits: Limits) -> SamplingConfig:
    values = {f.name: getattr(body, f.name) for f in fields(SamplingConfig)}
    try:
        settings = SamplingConfig(**values)
    except TinyLLMError as exc:
        raise RequestError(str(exc), exc.key) from None
    if settings.max_tokens > limits.max_tokens:
        raise RequestError(f"max_tokens must be <= {limits.max_tokens} on this server, got "
                           f"{settings.max_tokens}", "max_tokens")
    if not 1 <= body.n <= limits.max_n:
        raise RequestError(f"n must be between 1 and {limits.max_n}, got {body.n}", "n")
    if settings.seed + body.n - 1 > SEED_MAX:
        raise RequestError(f"seed + n - 1 must be <= {SEED_MAX}", "seed")
    return settings


def stops_of(body: _Common) -> list[str]:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4:
        raise RequestError("stop takes at most 4 strings", "stop")
    return stops


# --- the model served ---------------------------------------------------------------------------

@dataclass
class Served:
    """One loaded model version and the decoder its requests share."""

    loaded: Any  # tinyllm.package.LoadedModel
    decoder: Decoder

    @property
    def id(self) -> str:
        source = self.loaded.source
        return source.name or Path(source.uri).name

    @property
    def uri(self) -> str:
        return pinned_uri(self.loaded.source)


class Models:
    """The model a server serves: a resolved model, then each newer version it is given (an
    alias or /latest that moved)."""

    def __init__(self, resolved, device: str = "cpu", max_batch: int = 64):
        self.device, self.max_batch = device, max_batch
        self.after_step = lambda: None
        self.current = self._serve(load_resolved(resolved, device))
        # the names a request may give: the model's, and the URI asked for (e.g. an alias)
        self.names = {self.current.id, resolved.uri}

    def _serve(self, loaded) -> Served:
        decoder = Decoder(loaded.model, self.max_batch)
        decoder.after_step = lambda: self.after_step()
        return Served(loaded, decoder)

    def swap(self, resolved) -> None:
        """Serve resolved from the next request on; requests in flight finish on the old one."""
        old, self.current = self.current, self._serve(load_resolved(resolved, self.device))
        old.decoder.retire()

    def check_name(self, name: str) -> Served:
        served = self.current
        if name not in self.names | {served.uri}:
            raise RequestError(f"model '{name}' is not served here; this server serves "
                               f"'{served.id}' ({served.uri})", "model", 404,
                               "model_not_found")
        return served

    def stop(self) -> None:
        self.current.decoder.stop()


# --- one request's generations ------------------------------------------------------------------

class Job:
    """The choices of one request, generated by the shared decoder, read here as they come."""

    def __init__(self, served: Served, prompts: list[str], settings: SamplingConfig, n: int,
                 stops: list[str], deadline: float, wake):
        self.served, self.wake = served, wake
        self.ready = asyncio.Event()
        self.events: collections.deque = collections.deque()
        self.prompt_chars = sum(len(p) for p in prompts) * n
        self.filters = [StopFilter(stops) for _ in range(len(prompts) * n)]
        self.finish: list[str | None] = [None] * len(self.filters)
        self.sequences = []
        ids = [prompt_ids(served.loaded.tokenizer, p) for p in prompts]
        for index in range(len(self.filters)):
            emit = self._emitter(index)
            self.sequences.append(served.decoder.submit(Sequence(
                ids[index // n], replace(settings, seed=settings.seed + index % n), emit,
                deadline)))

    def _emitter(self, index: int):
        def emit(item):  # in the decoder thread
            self.events.append((index, item))
            self.wake(self)
        return emit

    def cancel(self) -> None:
        for sequence in self.sequences:
            sequence.cancel()

    @property
    def done(self) -> bool:
        return all(self.finish)

    async def pieces(self, request: Request | None = None) -> AsyncIterator[tuple[int, str]]:
        """(choice index, text) as generated; text '' marks the choice's end (see finish)."""
        decode = self.served.loaded.tokenizer.decode
        while not self.done:
            if request is None:  # streaming: Starlette cancels us when the client goes
                await self.ready.wait()
            else:
                try:
                    await asyncio.wait_for(self.ready.wait(), 1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        self.cancel()
                        return
                    continue
            self.ready.clear()
            texts, ended = self._drain(decode)
            for index, text in texts.items():  # all that came since the last wake, at once
                if text:
                    yield index, text
            for index in ended:
                yield index, ""

    def _drain(self, decode) -> tuple[dict[int, str], list[int]]:
        """The text each choice got from the decoder's events so far, and the choices that
        ended (finish says why)."""
        texts: dict[int, str] = collections.defaultdict(str)
        ended = []
        while self.events:
            index, item = self.events.popleft()
            if self.finish[index] or item == CANCELLED:
                continue
            pieces = self.filters[index]
            if isinstance(item, str):  # the sequence ended: length, time or shutdown
                texts[index] += pieces.flush()
                self.finish[index] = "length"
            else:
                texts[index] += pieces.push(decode([item]))
                if pieces.stopped:
                    self.sequences[index].cancel()
                    self.finish[index] = "stop"
            if self.finish[index]:
                ended.append(index)
        return texts, ended

    def usage(self) -> dict:
        completion = sum(len(f.text) for f in self.filters)
        return {"prompt_tokens": self.prompt_chars, "completion_tokens": completion,
                "total_tokens": self.prompt_chars + completion}


# --- the app ------------------------------------------------------------------------------------

def _validation_error(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                    for p in first.get("loc", ()) if p != "body").lstrip(".") or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        message = f"malformed JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
        param = None
    elif kind == "extra_forbidden":
        message = f"unknown field '{param}'"
    elif kind == "missing":
        message = f"missing field '{param}'"
    elif kind == "model_attributes_type" or not param:
        message = f"the body must be a JSON object: {first.get('msg')}"
    else:
        message = f"{param}: {first.get('msg')}"
    return JSONResponse(error_body(message, param), status_code=400)


class BoundedBody:
    """A 413 for a request whose Content-Length is over max_bytes, before its body is read.

    Plain ASGI: Starlette's @app.middleware("http") would also relay every streamed chunk of
    every response through a task and a memory stream, a large share of a busy server's time.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        size = dict(scope.get("headers", ())).get(b"content-length", b"")
        if scope["type"] == "http" and size.isdigit() and int(size) > self.max_bytes:
            message = (f"the request body is {int(size)} bytes; this server takes at most "
                       f"{self.max_bytes}")
            await JSONResponse(error_body(message), 413)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(models: Models, limits: Limits) -> FastAPI:
    app = FastAPI(title="tinyllm", docs_url=None, redoc_url=None)
    waiting: set[Job] = set()
    loop_box: dict[str, asyncio.AbstractEventLoop] = {}

    def wake(job: Job) -> None:  # decoder thread: note it; after_step wakes them all at once
        waiting.add(job)

    def wake_all() -> None:  # event loop
        while waiting:
            waiting.pop().ready.set()

    def after_step() -> None:  # decoder thread, once per step
        loop = loop_box.get("loop")
        if loop is not None and waiting:
            loop.call_soon_threadsafe(wake_all)

    models.after_step = after_step

    @app.on_event("startup")
    async def remember_loop() -> None:
        loop_box["loop"] = asyncio.get_running_loop()

    @app.exception_handler(RequestError)
    async def request_error(_, exc: RequestError):
        return JSONResponse(error_body(exc.message, exc.param, exc.code), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        return _validation_error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(_, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail)), exc.status_code)

    @app.exception_handler(Exception)
    async def bug(_, exc: Exception):  # never a traceback to a client
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}",
                                       kind="server_error"), 500)

    app.add_middleware(BoundedBody, max_bytes=limits.max_body_bytes)

    @app.get("/health")
    async def health():
        """For load balancers and tests: up, what it serves, sequences in flight."""
        served = models.current
        return {"status": "ok", "model": served.uri, "active": served.decoder.in_flight}

    @app.get("/v1/models")
    async def list_models():
        served = models.current
        return {"object": "list", "data": [
            {"id": served.id, "object": "model", "created": 0, "owned_by": "tinyllm",
             "version": served.uri}]}

    def start(body: _Common, prompts: list[str], param: str) -> Job:
        served = models.check_name(body.model)
        settings = settings_of(body, limits)
        for prompt in prompts:
            if len(prompt) > limits.max_prompt_chars:
                raise RequestError(f"{param} is {len(prompt)} characters; this server takes "
                                   f"at most {limits.max_prompt_chars}", param)
        return Job(served, prompts, settings, body.n, stops_of(body),
                   time.monotonic() + limits.request_seconds, wake)

    async def reply(job: Job, body: _Common, request: Request, kind: str, chunk, whole):
        """The whole response, or with stream its server-sent events; kind: OpenAI's object
        name (chunks add `.chunk` for chat)."""
        head = {"id": uuid.uuid4().hex[:24], "created": int(time.time()),
                "model": job.served.uri}
        if not body.stream:
            texts = [""] * len(job.filters)
            async for index, piece in job.pieces(request):
                texts[index] += piece
            choices = [whole(i, text, job.finish[i]) for i, text in enumerate(texts)]
            return {**head, "object": kind, "choices": choices, "usage": job.usage()}

        async def events():
            head["object"] = f"{kind}.chunk" if kind == "chat.completion" else kind
            try:
                for index in range(len(job.filters)):
                    first = chunk(index, None, None)
                    if first is not None:
                        yield f"data: {json.dumps({**head, 'choices': [first]})}\n\n"
                async for index, piece in job.pieces():
                    done = job.finish[index] if not piece else None
                    data = {**head, "choices": [chunk(index, piece, done)]}
                    yield f"data: {json.dumps(data)}\n\n"
                if body.stream_options and body.stream_options.include_usage:
                    yield f"data: {json.dumps({**head, 'choices': [], 'usage': job.usage()})}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # the client went away (or we are done): stop its generations
                job.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise RequestError("prompt must not be an empty list", "prompt")
        job = start(body, prompts, "prompt")

        def chunk(index, piece, finish):
            if piece is None:
                return None
            return {"index": index, "text": piece, "finish_reason": finish, "logprobs": None}

        def whole(index, text, finish):
            return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}

        return await reply(job, body, request, "text_completion", chunk, whole)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        job = start(body, [chat_prompt(body.messages)], "messages")

        def chunk(index, piece, finish):
            if piece is None:  # the opening chunk names the role
                delta = {"role": "assistant", "content": ""}
            else:
                delta = {"content": piece} if piece else {}
            return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}

        def whole(index, text, finish):
            return {"index": index, "message": {"role": "assistant", "content": text},
                    "finish_reason": finish, "logprobs": None}

        return await reply(job, body, request, "chat.completion", chunk, whole)

    return app


class _Server(uvicorn.Server):
    """uvicorn that, on SIGTERM/SIGINT, first ends every generation in flight."""

    def __init__(self, config: uvicorn.Config, on_exit):
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


def describe(models: Models) -> str:
    """What a server serves, for its start-up line."""
    return f"{models.current.uri} (model '{models.current.id}')"


def load(resolved, device: str) -> Models:
    """The model to serve, its decoder started."""
    import torch

    torch.set_num_threads(1)  # one small matmul at a time: more threads only contend
    return Models(resolved, device)


def run(models: Models, limits: Limits, listener: socket.socket, loads: SharedLoads) -> None:
    """Serve models over HTTP on listener (a bound socket, shared by the workers whose open
    connections loads counts) until SIGTERM/SIGINT."""
    config = uvicorn.Config(create_app(models, limits), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2, lifespan="on")
    try:
        _Server(config, models.stop).run(sockets=[loads.listener(listener)])
    finally:
        models.stop()
