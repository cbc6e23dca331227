"""`tinyllm serve`: an OpenAI-compatible HTTP server for a model, streaming included.

    GET  /v1/models              the model served (its id is what requests name as `model`)
    POST /v1/completions         prompt -> continuation
    POST /v1/chat/completions    messages -> reply; see chat_prompt for how they become a prompt

Requests take the sampling settings of tinyllm.config.SamplingConfig under the same names and
defaults (max_tokens, temperature, top_k, top_p, min_p, frequency_penalty, presence_penalty,
seed), plus stop, n, stream and logprobs (chat: logprobs and top_logprobs). They speak the
dialect OpenAI's clients send: null for any field means its default, chat's
max_completion_tokens is max_tokens, content may be a list of text parts, user is ignored, and
a field that cannot be honoured (tools, images, JSON modes) is refused naming it unless its
value asks for nothing (`tools: []`, `response_format: {"type": "text"}`). A request without
a seed draws a fresh one; every response (and every streamed chunk) names it as `seed`, so
sending it back replays the reply. Log-probabilities are those of the distribution each
character was drawn from (tinyllm.generate.sampling_logits: after the penalties, the temperature
and top-k/top-p/min-p; at temperature 0 the model's own, penalised), so a character those
filters removed is never listed. With `stream: true` the reply is server-sent events,
`data: {json}` chunks ending in `data: [DONE]`. usage counts characters. Every response names
the exact model version (`models:/NAME/VERSION`).

Concurrent requests share one model through batching.Decoder: one forward pass per step
for every sequence in flight, each giving exactly what `tinyllm generate` gives alone. When the
alias (or /latest) a server serves moves, workers.py hands each worker the new version, and
new requests get it without a restart. Bad requests get a 4xx in OpenAI's error shape
naming the field; SIGTERM ends whatever is in flight and exits within seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException

from tinyllm.config import SEED_MAX, Limits, SamplingConfig
from tinyllm.errors import TinyLLMError
from tinyllm.generate import Draw, StopFilter, prompt_ids
from tinyllm.serving.balancing import SharedLoads
from tinyllm.serving.batching import CANCELLED, Decoder, Sequence
from tinyllm.tracking.discovery import load_resolved, pinned_uri

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

MAX_TOP_LOGPROBS = 20  # OpenAI's cap on top_logprobs
FRESH_SEEDS = 2**32  # an unseeded request draws its seed below this (exact in any JSON reader)
NO_TOOLS = "this server's model only continues text; it has no tools or functions"


def refused(field: str, message: str) -> PydanticCustomError:
    """A validation error that _validation_error turns into a 400 `FIELD: message`, FIELD
    named in full (field is relative to where it was raised)."""
    return PydanticCustomError("tinyllm_refused", message, {"field": field})


class _Strict(BaseModel):
    """A request object as OpenAI clients send it. null for any field means its default; a
    field in UNSUPPORTED is dropped when its value asks for nothing, else refused naming it;
    any other unknown field is refused."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "5" is no number, 1 no bool
    # field -> (the values that ask for nothing, why any other cannot be honoured)
    UNSUPPORTED: ClassVar[dict[str, tuple[list, str]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _as_clients_send_it(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {key: value for key, value in data.items() if value is not None}
        for name, (nothing, why) in cls.UNSUPPORTED.items():
            if name in data and data.pop(name) not in nothing:
                raise refused(name, f"not supported ({why})")
        return data


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: int = 1
    user: str | None = None  # accepted and ignored, as clients often send it
    UNSUPPORTED: ClassVar[dict[str, tuple[list, str]]] = {
        "logit_bias": ([{}], "the model's tokens are characters, not a tokenizer's ids"),
        "response_format": ([{"type": "text"}], 'only {"type": "text"} is; the model cannot '
                                                "be held to JSON")}

    def param(self, name: str) -> str:
        """The request field a sampling setting came from."""
        return name


# The sampling fields, derived from the one definition (names, types, defaults, help). An
# omitted (or null) seed draws a fresh one; each response names the seed it used.
_Sampled = create_model(
    "Sampled", __base__=_Common,
    **{f.name: (int if f.type == "int" else float,
                Field(f.default, description=f.metadata["help"]))
       for f in fields(SamplingConfig) if f.name != "seed"},
    seed=(int | None, Field(None, description="Random seed; omitted or null: a fresh one. The "
                                              "response's seed replays the reply.")))


class CompletionRequest(_Sampled):
    prompt: str | list[str]
    logprobs: int | None = None  # how many of the most likely characters to list per position
    UNSUPPORTED: ClassVar[dict[str, tuple[list, str]]] = {
        **_Common.UNSUPPORTED, "echo": ([False], "the reply never repeats the prompt"),
        "best_of": ([1], "use n"), "suffix": ([""], "the model only continues text")}

    @field_validator("prompt", mode="before")
    @classmethod
    def _no_token_ids(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and prompt and all(isinstance(p, (int, list))
                                                       for p in prompt):
            raise refused("", "token ids are not supported (send text: this model's tokens "
                              "are its own characters)")
        return prompt

    def top_logprobs_wanted(self) -> int | None:
        return _check_top_logprobs(self.logprobs, "logprobs")


def _check_top_logprobs(value: int | None, param: str) -> int | None:
    if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
        raise RequestError(f"{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {value}",
                           param)
    return value


class Message(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str
    name: str | None = None
    UNSUPPORTED: ClassVar[dict[str, tuple[list, str]]] = {
        "tool_calls": ([[]], NO_TOOLS), "function_call": ([], NO_TOOLS),
        "refusal": ([""], "the model never refuses")}

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, content: Any) -> Any:
        """Content as a list of text parts ({"type": "text", "text": ...}) is their texts, one
        line each; any other kind of part (an image, audio, a file) is refused."""
        if not isinstance(content, list):
            return content
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise refused(f"[{j}].type", f"parts of type {kind!r} are not supported "
                                             "(this model reads text only)")
            if set(part) != {"type", "text"} or not isinstance(part["text"], str):
                raise refused(f"[{j}]", 'a text part is {"type": "text", "text": "..."}')
            texts.append(part["text"])
        return "\n".join(texts)


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = None  # with logprobs: the most likely characters per position
    UNSUPPORTED: ClassVar[dict[str, tuple[list, str]]] = {
        **_Common.UNSUPPORTED, "tools": ([[]], NO_TOOLS), "functions": ([[]], NO_TOOLS),
        "tool_choice": (["none"], NO_TOOLS), "function_call": (["none"], NO_TOOLS),
        "parallel_tool_calls": ([True, False], NO_TOOLS),
        "modalities": ([["text"]], "the model writes text only"),
        "audio": ([], "the model writes text only")}

    @model_validator(mode="after")
    def _one_max_tokens(self) -> ChatRequest:
        if self.max_completion_tokens is not None:
            if "max_tokens" in self.model_fields_set and (
                    self.max_tokens != self.max_completion_tokens):
                raise refused("max_completion_tokens", "differs from max_tokens; give one "
                              "(max_completion_tokens is the newer name for it)")
            self.max_tokens = self.max_completion_tokens
        return self

    def param(self, name: str) -> str:
        renamed = name == "max_tokens" and self.max_completion_tokens is not None
        return "max_completion_tokens" if renamed else name

    def top_logprobs_wanted(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
        top = _check_top_logprobs(self.top_logprobs, "top_logprobs")
        return (top or 0) if self.logprobs else None


def chat_prompt(messages: list[Message]) -> str:
    """Messages as a script the character model continues: each one becomes `SPEAKER:\\n` plus
    its content and a blank line, the speaker being its name (e.g. ROMEO) or else its role in
    capitals; the prompt ends with `ASSISTANT:\\n` for the reply."""
    lines = [f"{m.name or m.role.upper()}:\n{m.content}\n\n" for m in messages]
    return "".join(lines) + "ASSISTANT:\n"


def settings_of(body: _Sampled, limits: Limits) -> SamplingConfig:
    """The request's sampling settings, an unseeded one with a fresh seed; errors name the
    request's own field (max_completion_tokens when it gave that)."""
    values = {f.name: getattr(body, f.name) for f in fields(SamplingConfig)}
    if values["seed"] is None:
        values["seed"] = secrets.randbelow(FRESH_SEEDS)
    if values["max_tokens"] > limits.max_tokens:  # the server's cap, however large the value
        raise RequestError(f"{body.param('max_tokens')} must be <= {limits.max_tokens} on this "
                           f"server, got {values['max_tokens']}", body.param("max_tokens"))
    try:
        settings = SamplingConfig(**values)
    except TinyLLMError as exc:
        raise RequestError(str(exc).replace(exc.key, body.param(exc.key), 1),
                           body.param(exc.key)) from None
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
    """The choices of one request, generated by the shared decoder, read here as they come.
    top_logprobs: a number when the request asked for log-probabilities (each token then comes
    as a tinyllm.generate.Draw)."""

    def __init__(self, served: Served, prompts: list[str], settings: SamplingConfig, n: int,
                 stops: list[str], deadline: float, wake, top_logprobs: int | None = None):
        self.served, self.wake, self.settings = served, wake, settings
        self.ready = asyncio.Event()
        self.events: collections.deque = collections.deque()
        self.prompts = [p for p in prompts for _ in range(n)]  # each choice's
        self.filters = [StopFilter(stops) for _ in self.prompts]
        self.finish: list[str | None] = [None] * len(self.filters)
        self.draws: list[list[Draw]] = [[] for _ in self.filters]  # with top_logprobs
        self.sent = [0] * len(self.filters)  # characters each choice has handed out
        self.sequences = []
        ids = [prompt_ids(served.loaded.tokenizer, p) for p in prompts]
        for index in range(len(self.filters)):
            emit = self._emitter(index)
            self.sequences.append(served.decoder.submit(Sequence(
                ids[index // n], replace(settings, seed=settings.seed + index % n), emit,
                deadline, top_logprobs)))

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

    async def pieces(self, request: Request | None = None) -> AsyncIterator[Piece]:
        """Each choice's text as generated; a Piece with text '' marks its end (see finish)."""
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
                    start = self.sent[index]
                    self.sent[index] += len(text)  # a character is a token: one Draw each
                    yield Piece(index, text, start, self.draws[index][start:self.sent[index]])
            for index in ended:
                yield Piece(index, "", self.sent[index], [])

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
                if isinstance(item, Draw):
                    self.draws[index].append(item)
                    item = item.token
                texts[index] += pieces.push(decode([item]))
                if pieces.stopped:
                    self.sequences[index].cancel()
                    self.finish[index] = "stop"
            if self.finish[index]:
                ended.append(index)
        return texts, ended

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(len(f.text) for f in self.filters)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}


@dataclass
class Piece:
    """Text one choice generated: from character `start` of its reply on, with a Draw per
    character when the request asked for log-probabilities."""

    index: int
    text: str
    start: int
    draws: list[Draw]


def _entry(decode, token: int, logprob: float) -> dict:
    text = decode([token])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(decode, draws: list[Draw]) -> dict:
    """OpenAI's chat `logprobs` for draws: each character with its log-probability, its UTF-8
    bytes and the most likely characters at its position."""
    return {"content": [{**_entry(decode, d.token, d.logprob),
                         "top_logprobs": [_entry(decode, *best) for best in d.top]}
                        for d in draws], "refusal": None}


def completion_logprobs(decode, draws: list[Draw], offset: int) -> dict:
    """The legacy completions' `logprobs` for draws: tokens, their log-probabilities, the most
    likely ones at each position (with the chosen one) and text_offset, the position of each
    character in prompt + reply text (offset: where the first one is)."""
    tops = []
    for d in draws:
        top = {decode([token]): logprob for token, logprob in d.top}
        top.setdefault(decode([d.token]), d.logprob)
        tops.append(top)
    return {"tokens": [decode([d.token]) for d in draws],
            "token_logprobs": [d.logprob for d in draws], "top_logprobs": tops,
            "text_offset": list(range(offset, offset + len(draws)))}


# --- the app ------------------------------------------------------------------------------------

UNION_MEMBERS = re.compile(r"^(str|int|float|bool|.*\[.*\])$")  # pydantic's tags in a loc


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    loc = [p for p in first.get("loc", ()) if p != "body" and not (
        isinstance(p, str) and UNION_MEMBERS.match(p))]  # `prompt`, not `prompt.str`
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    kind = first.get("type", "")
    if kind == "tinyllm_refused":  # see refused(): the field is relative to where it was raised
        param = ".".join(filter(None, [param, first["ctx"]["field"]])).replace(".[", "[")
        return JSONResponse(error_body(f"{param}: {first['msg']}", param), status_code=400)
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
        given = first.get("input")
        shown = f", got {json.dumps(given)[:40]}" if isinstance(given, (str, int, float)) else ""
        message = f"{param}: {first.get('msg')}{shown}"
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


class Wakeups:
    """Wakes the requests whose jobs the decoder thread fed: each job is noted as it is fed,
    and once per decoder step all of them are woken in one call onto the event loop."""

    def __init__(self):
        self.waiting: set[Job] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    def wake(self, job: Job) -> None:  # decoder thread
        self.waiting.add(job)

    def after_step(self) -> None:  # decoder thread, once per step
        if self.loop is not None and self.waiting:
            self.loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:  # event loop
        while self.waiting:
            self.waiting.pop().ready.set()

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: FastAPI):
        """The app's lifespan: the event loop the decoder thread wakes requests on."""
        self.loop = asyncio.get_running_loop()
        yield


def create_app(models: Models, limits: Limits) -> FastAPI:
    """The HTTP app: errors in OpenAI's shape, the info routes and the two generation routes."""
    wakeups = Wakeups()
    models.after_step = wakeups.after_step
    app = FastAPI(title="tinyllm", docs_url=None, redoc_url=None, lifespan=wakeups.lifespan)
    add_error_handlers(app)
    app.add_middleware(BoundedBody, max_bytes=limits.max_body_bytes)
    add_info_routes(app, models)
    add_generation_routes(app, Generation(models, limits, wakeups))
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error a client meets is OpenAI's error object; never a traceback."""

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
    async def bug(_, exc: Exception):
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}",
                                       kind="server_error"), 500)


def add_info_routes(app: FastAPI, models: Models) -> None:
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


@dataclass
class Generation:
    """What both generation routes share: checking a request into a Job, and the reply."""

    models: Models
    limits: Limits
    wakeups: Wakeups

    def start(self, body: _Sampled, prompts: list[str], param: str,
              top_logprobs: int | None) -> Job:
        served = self.models.check_name(body.model)
        settings = settings_of(body, self.limits)
        for prompt in prompts:
            if len(prompt) > self.limits.max_prompt_chars:
                raise RequestError(f"{param} is {len(prompt)} characters; this server takes "
                                   f"at most {self.limits.max_prompt_chars}", param)
        return Job(served, prompts, settings, body.n, stops_of(body),
                   time.monotonic() + self.limits.request_seconds, self.wakeups.wake,
                   top_logprobs)

    async def reply(self, job: Job, body: _Common, request: Request, kind: str, chunk, whole):
        """The whole response, or with stream its server-sent events; kind: OpenAI's object
        name (chunks add `.chunk` for chat). Each names the model version and the seed, which
        replays the reply (choice i used seed + i)."""
        head = {"id": uuid.uuid4().hex[:24], "created": int(time.time()),
                "model": job.served.uri, "seed": job.settings.seed}
        if not body.stream:
            texts, draws = [""] * len(job.filters), [[] for _ in job.filters]
            async for piece in job.pieces(request):
                texts[piece.index] += piece.text
                draws[piece.index] += piece.draws
            choices = [whole(Piece(i, text, 0, draws[i]), job.finish[i])
                       for i, text in enumerate(texts)]
            return {**head, "object": kind, "choices": choices, "usage": job.usage()}
        head["object"] = f"{kind}.chunk" if kind == "chat.completion" else kind
        return StreamingResponse(_events(job, body, head, chunk), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


async def _events(job: Job, body: _Common, head: dict, chunk) -> AsyncIterator[str]:
    """A streamed reply's server-sent events: opening chunks, the pieces, usage, [DONE]."""
    try:
        for index in range(len(job.filters)):
            first = chunk(Piece(index, "", 0, []), None, opening=True)
            if first is not None:
                yield f"data: {json.dumps({**head, 'choices': [first]})}\n\n"
        async for piece in job.pieces():
            done = job.finish[piece.index] if not piece.text else None
            yield f"data: {json.dumps({**head, 'choices': [chunk(piece, done)]})}\n\n"
        if body.stream_options and body.stream_options.include_usage:
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': job.usage()})}\n\n"
        yield "data: [DONE]\n\n"
    finally:  # the client went away (or we are done): stop its generations
        job.cancel()


def add_generation_routes(app: FastAPI, generation: Generation) -> None:
    """/v1/completions and /v1/chat/completions: each shapes the pieces of a Job its way."""

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise RequestError("prompt must not be an empty list", "prompt")
        top = body.top_logprobs_wanted()
        job = generation.start(body, prompts, "prompt", top)
        decode = job.served.loaded.tokenizer.decode

        def whole(piece: Piece, finish, opening: bool = False):
            if opening:
                return None
            logprobs = None if top is None else completion_logprobs(
                decode, piece.draws, len(job.prompts[piece.index]) + piece.start)
            return {"index": piece.index, "text": piece.text, "finish_reason": finish,
                    "logprobs": logprobs}

        return await generation.reply(job, body, request, "text_completion", whole, whole)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        top = body.top_logprobs_wanted()
        job = generation.start(body, [chat_prompt(body.messages)], "messages", top)
        decode = job.served.loaded.tokenizer.decode

        def logprobs(piece: Piece):
            return None if top is None else chat_logprobs(decode, piece.draws)

        def chunk(piece: Piece, finish, opening: bool = False):
            if opening:  # the opening chunk names the role
                delta = {"role": "assistant", "content": ""}
            else:
                delta = {"content": piece.text} if piece.text else {}
            return {"index": piece.index, "delta": delta, "finish_reason": finish,
                    "logprobs": None if opening or not piece.text else logprobs(piece)}

        def whole(piece: Piece, finish):
            return {"index": piece.index, "message": {"role": "assistant", "content": piece.text},
                    "finish_reason": finish, "logprobs": logprobs(piece)}

        return await generation.reply(job, body, request, "chat.completion", chunk, whole)


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
