"""The FastAPI app a `tinyllm serve` worker runs: OpenAI's /v1/models, /v1/completions and
/v1/chat/completions, whole or streamed as server-sent events. What a request may ask and what it
gets back is docs/serving.md; here are the routes, the error handlers and the replies' shapes.

Every request shares the worker's one batching.Decoder (a failed generation is a 500, or an
error event when streamed, while the worker serves on); bodies are read within limits by
intake.py; the OpenAPI document is contract.py's; every error leaves in OpenAI's error shape,
never as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tinyllm.serving import contract, echo, playground, responses, tokenizing
from tinyllm.serving.attention import attention_weights
from tinyllm.serving.balancing import SharedLoads
from tinyllm.serving.intake import Intake, timed_protocol
from tinyllm.serving.jobs import Job, Piece, chat_logprobs, completion_logprobs
from tinyllm.serving.limits import Limits
from tinyllm.serving.requests import (
    AttentionRequest,
    BaseRequest,
    ChatRequest,
    CompletionRequest,
    RequestError,
    SampledRequest,
    chat_prompt,
    check_attention_text,
    error_body,
    settings_of,
    stops_of,
)
from tinyllm.serving.responses import ResponsesRequest
from tinyllm.serving.served import ServedModel

log = logging.getLogger(__name__)
DEGRADED_SECONDS = 60.0  # /health says degraded this long after a generation failed

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


def create_app(model: ServedModel, limits: Limits) -> FastAPI:
    """The HTTP app: errors in OpenAI's shape, the info routes and the two generation routes."""
    wakeups = Wakeups()
    model.after_step = wakeups.after_step
    app = FastAPI(title="tinyllm", docs_url=None, redoc_url=None, lifespan=wakeups.lifespan)
    add_error_handlers(app)
    add_info_routes(app, model)
    generation = Generation(model, limits, wakeups)
    add_generation_routes(app, generation)
    add_responses_route(app, generation)
    add_attention_route(app, model, limits)
    tokenizing.install(app, generation)  # lm-evaluation-harness's remote tokenizer
    posts = frozenset(r.path for r in app.routes if "POST" in getattr(r, "methods", ()))
    app.add_middleware(Intake, limits=limits, paths=posts)
    contract.install(app, limits, model.names,
                     model.current.loaded.model.config.context_length)
    playground.install(app)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error a client meets is OpenAI's error object; never a traceback."""

    @app.exception_handler(RequestError)
    async def request_error(_, exc: RequestError):
        kind = "server_error" if exc.status >= 500 else "invalid_request_error"
        return JSONResponse(error_body(exc.message, exc.param, exc.code, kind), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        return _validation_error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(_, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail)), exc.status_code,
                            exc.headers)  # a 405's Allow

    @app.exception_handler(Exception)
    async def bug(_, exc: Exception):
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}",
                                       kind="server_error"), 500)


def add_info_routes(app: FastAPI, model: ServedModel) -> None:
    @app.get("/health")
    async def health():
        """For load balancers and tests: up, what it serves, sequences in flight, and whether
        generation failed lately (degraded; it still serves) or cannot run (a 503)."""
        served = model.current
        decoder = served.decoder
        failures = decoder.failures
        status = "ok"
        if time.monotonic() - failures.last_at < DEGRADED_SECONDS:
            status = "degraded"
        if not decoder.running:
            status = "unavailable"
        body = {"status": status, "model": served.uri, "active": decoder.in_flight,
                "failures": failures.count, "last_failure": failures.last_error}
        return JSONResponse(body, 503 if status == "unavailable" else 200)

    @app.get("/v1/models")
    async def list_models():
        """The model served, then the other versions and aliases of a registered one; each
        id is what a request names as `model`."""
        return {"object": "list", "data": model.objects()}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str):
        """A model GET /v1/models lists, by its id or its URI; else a 404."""
        return model.object(model_id)


@dataclass
class Generation:
    """What both generation routes share: checking a request into a Job, and the reply."""

    model: ServedModel
    limits: Limits
    wakeups: Wakeups

    async def start(self, body: SampledRequest, prompts: list[str], param: str,
                    top_logprobs: int | None) -> Job:
        served = await self.model.served(body.model)
        settings = settings_of(body, self.limits)
        self.check_lengths(prompts, param)
        return Job(served, prompts, settings, body.n, stops_of(body),
                   time.monotonic() + self.limits.request_seconds, self.wakeups.wake,
                   top_logprobs)

    def check_lengths(self, prompts: list[str], param: str) -> None:
        for prompt in prompts:
            if len(prompt) > self.limits.max_prompt_chars:
                raise RequestError(f"{param} is {len(prompt)} characters; this server takes "
                                   f"at most {self.limits.max_prompt_chars}", param)

    async def score(self, body: CompletionRequest, prompts: list[str], top: int | None) -> dict:
        """echo with max_tokens 0: each prompt back, scored when logprobs asks; no
        generation. Scoring runs outside the event loop (a long text takes a while)."""
        served = await self.model.served(body.model)
        settings = settings_of(body.model_copy(update={"max_tokens": 1}), self.limits)
        self.check_lengths(prompts, "prompt")
        logprobs = [None] * len(prompts)
        if top is not None:
            logprobs = await asyncio.to_thread(
                lambda: [echo.scored(served.loaded, p, top) for p in prompts])
        choices = [{"index": i * body.n + j, "text": prompt, "finish_reason": "length",
                    "logprobs": logprobs[i]}
                   for i, prompt in enumerate(prompts) for j in range(body.n)]
        size = sum(len(p) for p in prompts) * body.n
        usage = {"prompt_tokens": size, "completion_tokens": 0, "total_tokens": size}
        return {**reply_head(served, settings.seed), "object": "text_completion",
                "choices": choices, "usage": usage}

    async def reply(self, job: Job, body: BaseRequest, request: Request, kind: str, chunk, whole):
        """The whole response, or with stream its server-sent events; kind: OpenAI's object
        name (chunks add `.chunk` for chat). Each names the model version and the seed, which
        replays the reply (choice i used seed + i)."""
        head = reply_head(job.served, job.settings.seed)
        if not body.stream:
            texts, draws = [""] * len(job.filters), [[] for _ in job.filters]
            async for piece in job.pieces(request):
                texts[piece.index] += piece.text
                draws[piece.index] += piece.draws
            if job.error:
                return JSONResponse(_failed(job), 500)
            choices = [whole(Piece(i, text, 0, draws[i]), job.finish[i])
                       for i, text in enumerate(texts)]
            return {**head, "object": kind, "choices": choices, "usage": job.usage()}
        head["object"] = f"{kind}.chunk" if kind == "chat.completion" else kind
        return StreamingResponse(_events(job, body, head, chunk), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


async def _events(job: Job, body: BaseRequest, head: dict, chunk) -> AsyncIterator[str]:
    """A streamed reply's server-sent events: opening chunks, the pieces, usage, [DONE]."""
    try:
        for index in range(len(job.filters)):
            first = chunk(Piece(index, "", 0, []), None, opening=True)
            if first is not None:
                yield f"data: {json.dumps({**head, 'choices': [first]})}\n\n"
        async for piece in job.pieces():
            done = job.finish[piece.index] if not piece.text else None
            if job.error:  # OpenAI's clients raise on an error event
                yield f"data: {json.dumps(_failed(job))}\n\n"
                return
            yield f"data: {json.dumps({**head, 'choices': [chunk(piece, done)]})}\n\n"
        if body.stream_options and body.stream_options.include_usage:
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': job.usage()})}\n\n"
        yield "data: [DONE]\n\n"
    finally:  # the client went away (or we are done): stop its generations
        job.cancel()


def _failed(job: Job) -> dict:
    return error_body(f"generation failed in the server ({job.error}); the server goes on "
                      "serving, so the request may be sent again", kind="server_error")


def reply_head(served, seed: int) -> dict:
    """What every reply and chunk starts with: its id, time, the exact model version served and
    the seed that replays it."""
    return {"id": uuid.uuid4().hex[:24], "created": int(time.time()), "model": served.uri,
            "seed": seed}


def add_generation_routes(app: FastAPI, generation: Generation) -> None:
    """/v1/completions and /v1/chat/completions: each shapes the pieces of a Job its way."""

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        top = body.top_logprobs_wanted()
        if body.echo and body.stream:
            raise RequestError("echo cannot be streamed here; send stream: false", "echo")
        if body.echo_only():
            return await generation.score(body, prompts, top)
        job = await generation.start(body, prompts, "prompt", top)
        loaded = job.served.loaded
        echoed = {}  # prompt -> its scores, with echo and logprobs
        if body.echo and top is not None:
            echoed = await asyncio.to_thread(
                lambda: {p: echo.scored(loaded, p, top) for p in set(prompts)})

        def whole(piece: Piece, finish, opening: bool = False):
            if opening:
                return None
            prompt = job.prompts[piece.index]
            logprobs = None if top is None else completion_logprobs(
                loaded.tokenizer.decode, piece.draws, len(prompt) + piece.start)
            text = prompt + piece.text if body.echo else piece.text
            if echoed:
                logprobs = echo.joined(echoed[prompt], logprobs)
            return {"index": piece.index, "text": text, "finish_reason": finish,
                    "logprobs": logprobs}

        return await generation.reply(job, body, request, "text_completion", whole, whole)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        top = body.top_logprobs_wanted()
        job = await generation.start(body, [chat_prompt(body.messages)], "messages", top)
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


def add_responses_route(app: FastAPI, generation: Generation) -> None:
    """/v1/responses: the Responses API over the same Job (responses.py shapes it)."""

    @app.post("/v1/responses")
    async def create_response(body: ResponsesRequest, request: Request):
        if body.n != 1:
            raise RequestError("n must be 1 here: a response has one output", "n")
        job = await generation.start(body, [chat_prompt(body.messages())], "input", None)
        if body.stream:
            return StreamingResponse(responses.events(job, body, _failed),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        text = ""
        async for piece in job.pieces(request):
            text += piece.text
        if job.error:
            return JSONResponse(_failed(job), 500)
        return responses.response(job, body, responses.new_ids(), text)


def add_attention_route(app: FastAPI, model: ServedModel, limits: Limits) -> None:
    """/v1/attention: each layer's and head's attention over a short text, for the
    playground's heat maps."""

    @app.post("/v1/attention")
    async def attention(body: AttentionRequest):
        served = await model.served(body.model)
        loaded = served.loaded
        check_attention_text(body.text, loaded.model.config.context_length, limits)
        ids = [int(i) for i in loaded.tokenizer.encode(body.text)]
        if not ids:
            raise RequestError("text has no character this model knows", "text")
        weights = await asyncio.to_thread(attention_weights, loaded.model, ids)
        rows = [[[[round(w, 4) for w in row[:i + 1]] for i, row in enumerate(head)]
                 for head in layer] for layer in weights.tolist()]
        return {"object": "attention", "model": served.uri,
                "tokens": [loaded.tokenizer.decode([i]) for i in ids], "weights": rows}


class _Server(uvicorn.Server):
    """uvicorn that, on SIGTERM/SIGINT, first ends every generation in flight."""

    def __init__(self, config: uvicorn.Config, on_exit):
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


def describe(model: ServedModel) -> str:
    """What a server serves, for its start-up line."""
    return f"{model.current.uri} (model '{model.current.id}')"


def load(resolved, device: str, catalog, resolve) -> ServedModel:
    """The model to serve, its decoder started; the catalog's other versions loaded when a
    request names one (resolve: ServedModel's)."""
    import torch

    torch.set_num_threads(1)  # one small matmul at a time: more threads only contend
    return ServedModel(resolved, device, catalog=catalog, resolve=resolve)


def run(model: ServedModel, limits: Limits, listener: socket.socket, loads: SharedLoads) -> None:
    """Serve the model over HTTP on listener (a bound socket, shared by the workers whose open
    connections loads counts) until SIGTERM/SIGINT."""
    config = uvicorn.Config(create_app(model, limits), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2, lifespan="on",
                            http=timed_protocol(limits.header_seconds))
    try:
        _Server(config, model.stop).run(sockets=[loads.listener(listener)])
    finally:
        model.stop()
