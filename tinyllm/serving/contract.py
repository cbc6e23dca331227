"""The OpenAPI document of `tinyllm serve`: what FastAPI derives from the request models (their
fields, descriptions, ranges and nulls come from SamplingConfig and requests.py), plus what it
cannot know: this server's Limits, every status the server answers with OpenAI's error shape,
the streamed media type and the replies' shapes. Generated clients and fuzzers read it."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tinyllm.serving.limits import Limits
from tinyllm.serving.requests import default_max_tokens

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string", "description": "What is wrong, naming the field."},
        "type": {"type": "string", "enum": ["invalid_request_error", "server_error"]},
        "param": {"type": ["string", "null"], "description": "The request field at fault."},
        "code": {"type": ["string", "null"]}}}}}
# status -> when the server answers it
BODY_ERRORS = {
    400: "A bad request: a field's value, malformed JSON, an empty body or invalid UTF-8.",
    408: "The body did not arrive in time.",
    413: "The body is over the server's cap.",
    415: "The body was not sent as application/json."}
MODEL_ERRORS = {404: "The model named is not served here.",
                503: "The version the model names cannot be loaded here now (the message says "
                     "why; the server goes on serving the others)."}
GENERATION_ERRORS = {**BODY_ERRORS, **MODEL_ERRORS,
                     500: "Generation failed in the server (which goes on serving)."}
FINISH_REASON = {"type": ["string", "null"], "enum": ["stop", "length", "abort", None],
                 "description": "stop: a stop string came; length: max_tokens or the server's "
                                "time cap; abort: cut short by the server stopping."}
LOGPROBS = {"type": ["object", "null"], "description": "With logprobs asked for."}
USAGE = {"type": "object", "description": "Counted in characters.", "properties": {
    name: {"type": "integer", "minimum": 0}
    for name in ("prompt_tokens", "completion_tokens", "total_tokens")}}


def reply(kind: str, choice: dict) -> dict:
    """A generation reply's schema: kind (its `object`) and the shape of each choice."""
    return {"type": "object", "required": ["id", "object", "created", "model", "seed", "choices"],
            "properties": {
                "id": {"type": "string"}, "object": {"type": "string", "enum": [kind]},
                "created": {"type": "integer"},
                "model": {"type": "string", "description": "The exact version served."},
                "seed": {"type": "integer", "description": "Send it back to replay the reply "
                                                           "(choice i used seed + i)."},
                "choices": {"type": "array", "items": {
                    "type": "object", "required": ["index", "finish_reason"],
                    "properties": {"index": {"type": "integer"}, "finish_reason": FINISH_REASON,
                                   "logprobs": LOGPROBS, **choice}}},
                "usage": USAGE}}


COMPLETION = reply("text_completion", {"text": {"type": "string"}})
MESSAGE = {"type": "object", "properties": {
    "role": {"type": "string", "enum": ["assistant"]}, "content": {"type": "string"}}}
CHAT = reply("chat.completion", {"message": MESSAGE})
CHAT_CHUNK = reply("chat.completion.chunk", {"delta": MESSAGE})


def events(chunk: dict) -> dict:
    """One server-sent event of a streamed reply (as OpenAPI 3.1 describes a stream: each
    event; 3.2 would call it itemSchema): its data is a chunk, an error, or [DONE] at the end."""
    return {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
        {"type": "string", "contentMediaType": "application/json",
         "contentSchema": {"oneOf": [chunk, ERROR]}}, {"const": "[DONE]"}],
        "description": "A chunk (the reply's shape with the text since the last one), or an "
                       "error if generation failed; the last event is `[DONE]`."}}}
RESPONSE = {"type": "object", "required": ["id", "object", "status", "model", "output"],
            "properties": {
                "id": {"type": "string"}, "object": {"type": "string", "enum": ["response"]},
                "status": {"type": "string", "enum": ["completed", "incomplete"],
                           "description": "incomplete: max_output_tokens or the time cap."},
                "model": {"type": "string", "description": "The exact version served."},
                "seed": {"type": "integer", "description": "Send it back to replay it."},
                "output": {"type": "array", "items": {"type": "object", "properties": {
                    "type": {"type": "string", "enum": ["message"]},
                    "content": {"type": "array", "items": {"type": "object", "properties": {
                        "type": {"type": "string", "enum": ["output_text"]},
                        "text": {"type": "string"}}}}}}}}}
RESPONSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "event": {"type": "string"}, "data": {
        "type": "string", "contentMediaType": "application/json",
        "contentSchema": {"type": "object", "required": ["type"]},
        "description": "response.created, response.output_item.added, "
                       "response.content_part.added, response.output_text.delta (each piece), "
                       "their .done events, response.completed; or error."}}}
MODEL = {"type": "object", "required": ["id", "object"], "properties": {
    "id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]},
    "created": {"type": "integer"}, "owned_by": {"type": "string"},
    "version": {"type": "string", "description": "The exact version it names now."},
    "served_as": {"type": "string", "description": "The URI it names: an alias or /latest is "
                                                   "followed to each new version."},
    "aliases": {"type": "array", "items": {"type": "string"},
                "description": "The registry's aliases of that version."},
    "run_id": {"type": ["string", "null"], "description": "The MLflow run that trained it."},
    "run_page": {"type": ["string", "null"], "description": "That run's page in mlflow ui."},
    "run_page_note": {"type": ["string", "null"],
                      "description": "What to do before run_page opens."}}}
HEALTH = {"type": "object", "required": ["status", "model", "active"], "properties": {
    "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"],
               "description": "degraded: a generation failed in the last minute (it serves "
                              "on); unavailable: it cannot generate."},
    "model": {"type": "string"}, "active": {"type": "integer", "minimum": 0},
    "failures": {"type": "integer", "minimum": 0},
    "last_failure": {"type": ["string", "null"]}}}
ATTENTION = {"type": "object", "required": ["object", "model", "tokens", "weights"],
             "properties": {
                 "object": {"type": "string", "enum": ["attention"]},
                 "model": {"type": "string", "description": "The exact version served."},
                 "tokens": {"type": "array", "items": {"type": "string"},
                            "description": "The characters the model read."},
                 "weights": {"type": "array", "description": (
                     "[layer][head][i][j]: how much character i looked at character j <= i "
                     "(each row sums to 1, to 4 decimals)."), "items": {"type": "array",
                     "items": {"type": "array", "items": {"type": "array", "items": {
                         "type": "number", "minimum": 0, "maximum": 1}}}}}}}
TOKENIZER_INFO = {"type": "object", "required": ["bos_token", "eos_token"], "properties": {
    "tokenizer_class": {"type": "string"},
    "bos_token": {"type": "string", "description": "What a text starts after: the harness "
                                                   "scores its first character after it."},
    "eos_token": {"type": "null"}, "pad_token": {"type": "null"},
    "unk_token": {"type": "string", "description": "A character the model never saw."},
    "vocab_size": {"type": "integer", "minimum": 1},
    "model_max_length": {"type": "integer", "minimum": 1,
                         "description": "The model's context length."}}}
IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}}
TOKENIZED = {"type": "object", "required": ["count", "tokens"], "properties": {
    "count": {"type": "integer", "minimum": 0}, "max_model_len": {"type": "integer"},
    "tokens": IDS}}
DETOKENIZED = {"type": "object", "required": ["prompt"], "properties": {
    "prompt": {"type": "string"}}}
# path -> its replies: status -> (description, JSON schema, and for a stream its schema)
REPLIES = {
    "/health": {200: ("Up.", HEALTH, None), 503: ("It cannot generate.", HEALTH, None)},
    "/v1/models": {200: ("The model served (first), then the other versions and aliases of a "
                         "registered model.", {"type": "object", "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": MODEL}}}, None)},
    "/v1/models/{model_id}": {200: ("The model named.", MODEL, None)},
    "/v1/completions": {200: ("The continuation(s).", COMPLETION, events(COMPLETION))},
    "/v1/chat/completions": {200: ("The reply(ies).", CHAT, events(CHAT_CHUNK))},
    "/v1/responses": {200: ("The response.", RESPONSE, RESPONSE_EVENT)},
    "/v1/attention": {200: ("Each layer's and head's attention.", ATTENTION, None)},
    "/tokenizer_info": {200: ("The served model's tokenizer.", TOKENIZER_INFO, None)},
    "/tokenize": {200: ("The text's ids, one a character.", TOKENIZED, None)},
    "/detokenize": {200: ("The ids' text.", DETOKENIZED, None)},
}
ERRORS = {"/v1/completions": GENERATION_ERRORS, "/v1/chat/completions": GENERATION_ERRORS,
          "/v1/responses": GENERATION_ERRORS,
          "/v1/attention": {**BODY_ERRORS, **MODEL_ERRORS},
          "/v1/models/{model_id}": {404: MODEL_ERRORS[404]},
          "/tokenize": {**BODY_ERRORS, **MODEL_ERRORS},
          "/detokenize": {**BODY_ERRORS, **MODEL_ERRORS}}


REQUESTS = ("CompletionRequest", "ChatRequest", "ResponsesRequest")  # the generation routes
NAMED = (*REQUESTS, "AttentionRequest")  # the requests that name the model
MAY_NAME = ("TokenizeRequest", "DetokenizeRequest")  # the requests that may name it


def install(app: FastAPI, limits: Limits, names, context_length: int) -> None:
    """Serve the document below as the app's /openapi.json; names(): those a request's `model`
    may give now (ServedModel.names: a registered model's versions come and go, and the
    document follows); context_length: the served model's window, which bounds
    /v1/attention's text."""
    made_for: list[set[str]] = []

    def openapi() -> dict:
        now = names()
        if app.openapi_schema is None or made_for != [now]:
            app.openapi_schema = document(app, limits, now, context_length)
            made_for[:] = [now]
        return app.openapi_schema

    app.openapi = openapi


def document(app: FastAPI, limits: Limits, names: set[str], context_length: int) -> dict:
    found = get_openapi(title=app.title, version=app.version, routes=app.routes,
                        description=(app.description or None))
    schemas = found["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):  # 422 never happens: errors are 400
        schemas.pop(name, None)
    for path, operations in found["paths"].items():
        for operation in operations.values():
            operation["responses"] = responses(path)
    _server_limits(schemas, limits)
    schemas["AttentionRequest"]["properties"]["text"]["maxLength"] = min(
        context_length, limits.max_attention_chars)
    for name in NAMED:
        schemas[name]["properties"]["model"]["enum"] = sorted(names)
    for name in MAY_NAME:
        schemas[name]["properties"]["model"]["enum"] = [*sorted(names), None]
    return found


def responses(path: str) -> dict:
    found = {}
    for status, (description, schema, stream) in REPLIES.get(path, {}).items():
        content = {"application/json": {"schema": schema}}
        if stream:
            content["text/event-stream"] = {"schema": stream}
        found[str(status)] = {"description": description, "content": content}
    for status, description in ERRORS.get(path, {}).items():
        found[str(status)] = {"description": description,
                              "content": {"application/json": {"schema": ERROR}}}
    return found


def _server_limits(schemas: dict, limits: Limits) -> None:
    """The caps of this server (its options) on the request fields."""
    for name in REQUESTS:
        fields = schemas[name]["properties"]
        fields["n"]["maximum"] = 1 if name == "ResponsesRequest" else limits.max_n
        fields["max_tokens"]["default"] = default_max_tokens(limits)
        for capped in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            if capped in fields:
                fields[capped]["maximum"] = min(fields[capped].get("maximum", limits.max_tokens),
                                                limits.max_tokens)
    prompt = schemas["CompletionRequest"]["properties"]["prompt"]
    text, texts = prompt["anyOf"]
    text["maxLength"] = texts["items"]["maxLength"] = limits.max_prompt_chars
    schemas["TokenizeRequest"]["properties"]["prompt"]["maxLength"] = limits.max_prompt_chars
    schemas["DetokenizeRequest"]["properties"]["tokens"]["maxItems"] = limits.max_prompt_chars
