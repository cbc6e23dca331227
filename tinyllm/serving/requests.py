"""The OpenAI request schemas tinyllm serve accepts, and what a request asks for: the prompt,
its sampling settings and stop strings. A field that cannot be honoured is refused naming it."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

from tinyllm.config import SEED_MAX, SamplingConfig
from tinyllm.errors import TinyLLMError
from tinyllm.serving.limits import Limits, fresh_seed


class RequestError(Exception):
    """A 4xx in OpenAI's error shape naming the field at fault; or a 503 when what a request
    named cannot be served now."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


MODEL_FIELD = ("A model id GET /v1/models lists (the model served, or another version or alias "
               "of a registered one), or its models:/ URI.")
MAX_TOP_LOGPROBS = 20  # OpenAI's cap on top_logprobs
MAX_STOPS = 4  # OpenAI's cap on stop strings
TOP_LOGPROBS = {"minimum": 0, "maximum": MAX_TOP_LOGPROBS}


NO_TOOLS = "this server's model only continues text; it has no tools or functions"


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer as JSON Schema has it: 5.0 is one (a number with no fraction); "5" and true are not.
Integer = Annotated[int, BeforeValidator(_whole)]


def refused(field: str, message: str) -> PydanticCustomError:
    """A validation error that _validation_error turns into a 400 `FIELD: message`, FIELD
    named in full (field is relative to where it was raised)."""
    return PydanticCustomError("tinyllm_refused", message, {"field": field})


def _unsupported_in_schema(schema: dict, cls: type[_Strict]) -> None:
    """The OpenAPI document lists each UNSUPPORTED field with the values it takes, and the
    class's RULES across fields."""
    for name, (nothing, why) in cls.UNSUPPORTED.items():
        schema["properties"][name] = {"enum": [*nothing, None],
                                      "description": f"Accepted only with these values ({why})."}
    schema.update(cls.RULES)


def _asks_for_nothing(value: Any, nothing: list) -> bool:
    return any(type(value) is type(n) and value == n for n in nothing)  # 0 is no False


class _Strict(BaseModel):
    """A request object as OpenAI clients send it. null for any field means its default; a
    field in UNSUPPORTED is dropped when its value asks for nothing, else refused naming it;
    any other unknown field is refused."""

    model_config = ConfigDict(extra="forbid", strict=True,  # "5" is no number, 1 no bool
                              json_schema_extra=_unsupported_in_schema)
    # field -> (the values that ask for nothing, why any other cannot be honoured)
    UNSUPPORTED: ClassVar[dict[str, tuple[list, str]]] = {}
    RULES: ClassVar[dict] = {}  # JSON Schema keywords for the checks across fields below

    @model_validator(mode="before")
    @classmethod
    def _as_clients_send_it(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {key: value for key, value in data.items() if value is not None}
        for name, (nothing, why) in cls.UNSUPPORTED.items():
            if name in data and not _asks_for_nothing(data.pop(name), nothing):
                raise refused(name, f"not supported ({why})")
        return data


class StreamOptions(_Strict):
    include_usage: bool | None = Field(False, description="Send a last chunk with usage.")


class BaseRequest(_Strict):
    model: str = Field(description=MODEL_FIELD)
    stream: bool | None = Field(False, description="Reply as server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="With stream.")
    stop: str | Annotated[list[str], WithJsonSchema(  # stops_of checks it, naming stop
        {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOPS})] | None = Field(
        None, description=f"Up to {MAX_STOPS} strings; the reply ends before the first.")
    n: Integer | None = Field(1, description="Choices per prompt; choice i uses seed + i.",
                          json_schema_extra={"minimum": 1})  # maximum: the server's
    # accepted and ignored, as OpenAI's clients may send them
    user: str | None = Field(None, description="Accepted and ignored.")
    metadata: dict[str, str] | None = Field(None, description="Accepted and ignored.")
    service_tier: str | None = Field(None, description="Accepted and ignored.")
    reasoning_effort: str | None = Field(None, description="Accepted and ignored.")
    UNSUPPORTED: ClassVar[dict[str, tuple[list, str]]] = {
        "logit_bias": ([{}], "the model's tokens are characters, not a tokenizer's ids"),
        "response_format": ([{"type": "text"}], 'only {"type": "text"} is; the model cannot '
                                                "be held to JSON")}

    def param(self, name: str) -> str:
        """The request field a sampling setting came from."""
        return name


def bounds(metadata: dict) -> dict:
    """A knob's allowed range (tinyllm.config.knob) as JSON Schema keywords, for the OpenAPI
    document; SamplingConfig checks it (with its own messages naming the field)."""
    low, high = metadata.get("min"), metadata.get("max")
    found = {} if low is None else {
        "exclusiveMinimum" if metadata.get("min_exclusive") else "minimum": low}
    return found if high is None else {**found, "maximum": high}


# The sampling fields, derived from the one definition (names, types, defaults, ranges, help);
# null means the default. An omitted (or null) seed draws a fresh one; each response names the
# seed it used.
SampledRequest = create_model(
    "Sampled", __base__=BaseRequest,
    **{f.name: ((Integer if f.type == "int" else float) | None,
                Field(f.default, description=f.metadata["help"],
                      json_schema_extra=bounds(f.metadata)))
       for f in fields(SamplingConfig) if f.name != "seed"},
    seed=(Integer | None, Field(None, description="Random seed; omitted or null: a fresh one. The "
                                              "response's seed replays the reply.",
                            json_schema_extra=bounds(SamplingConfig.__dataclass_fields__[
                                "seed"].metadata))))


class CompletionRequest(SampledRequest):
    prompt: str | Annotated[list[str], Field(min_length=1)] = Field(
        description="The text to continue, or a list of texts (each gets n choices).")
    logprobs: Integer | None = Field(None, description="List this many of the most likely "
                                 "characters at each position.", json_schema_extra=TOP_LOGPROBS)
    echo: bool | None = Field(False, description=(
        "Repeat the prompt before the reply, and with logprobs score its characters (the "
        "first has none); with max_tokens 0 the prompt is only scored. Not with stream."))
    UNSUPPORTED: ClassVar[dict[str, tuple[list, str]]] = {
        **BaseRequest.UNSUPPORTED, "best_of": ([1], "use n"),
        "suffix": ([""], "the model only continues text")}
    RULES: ClassVar[dict] = {  # echo_only, and app.py's refusal of echo with stream
        "if": {"required": ["echo"], "properties": {"echo": {"const": True}}},
        "then": {"not": {"required": ["stream"], "properties": {"stream": {"const": True}}}},
        "else": {"properties": {"max_tokens": {"minimum": 1}}}}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        schema = handler(core_schema)
        schema = handler.resolve_ref_schema(schema)
        schema["properties"]["max_tokens"]["minimum"] = 0  # with echo (RULES)
        return schema

    def echo_only(self) -> bool:
        """Whether it only scores the prompt: echo with max_tokens 0."""
        return bool(self.echo) and self.max_tokens == 0

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


class TextPart(_Strict):
    type: Literal["text"]
    text: str


def _check_top_logprobs(value: int | None, param: str) -> int | None:
    if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
        raise RequestError(f"{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {value}",
                           param)
    return value


class Message(_Strict):
    """A message of the conversation, any role a client replays (a tool's result, an assistant
    turn without content): each becomes its speaker's lines in the script (chat_prompt)."""

    role: Literal["system", "user", "assistant", "developer", "tool"] = Field(
        description="Its speaker in the script, unless it has a name.")
    content: str | list[TextPart] | None = Field(
        "", description="Text, or text parts joined by newlines; null: none.")
    name: str | None = Field(None, description="Its speaker in the script (e.g. ROMEO).")
    tool_call_id: str | None = Field(None, description="Accepted and ignored (a tool's "
                                     "result is its content).")
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


class ChatRequest(SampledRequest):
    messages: list[Message] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: Integer | None = Field(
        None, description="OpenAI's newer name for max_tokens.",
        json_schema_extra={"minimum": 1})  # maximum: the server's
    logprobs: bool | None = Field(False, description="List each character's log-probability.")
    top_logprobs: Integer | None = Field(None, description="With logprobs: this many of the most "
                                     "likely characters at each position.",
                                     json_schema_extra=TOP_LOGPROBS)
    UNSUPPORTED: ClassVar[dict[str, tuple[list, str]]] = {
        **BaseRequest.UNSUPPORTED, "tools": ([[]], NO_TOOLS), "functions": ([[]], NO_TOOLS),
        "tool_choice": (["none"], NO_TOOLS), "function_call": (["none"], NO_TOOLS),
        "parallel_tool_calls": ([True, False], NO_TOOLS),
        "modalities": ([["text"]], "the model writes text only"),
        "audio": ([], "the model writes text only")}
    RULES: ClassVar[dict] = {  # top_logprobs_wanted
        "if": {"required": ["top_logprobs"],
               "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
        "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}}

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
        if self.top_logprobs and not self.logprobs:  # 0 asks for nothing
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
        top = _check_top_logprobs(self.top_logprobs, "top_logprobs")
        return (top or 0) if self.logprobs else None


def chat_prompt(messages: list[Message]) -> str:
    """Messages as a script the character model continues: each one becomes `SPEAKER:\\n` plus
    its content and a blank line, the speaker being its name (e.g. ROMEO) or else its role in
    capitals; the prompt ends with `ASSISTANT:\\n` for the reply."""
    lines = [f"{m.name or m.role.upper()}:\n{m.content}\n\n" for m in messages]
    return "".join(lines) + "ASSISTANT:\n"


def default_max_tokens(limits: Limits) -> int:
    """What a request that gives no max_tokens gets: SamplingConfig's default, within the cap
    of a server capped lower."""
    return min(SamplingConfig.__dataclass_fields__["max_tokens"].default, limits.max_tokens)


def settings_of(body: SampledRequest, limits: Limits) -> SamplingConfig:
    """The request's sampling settings, an unseeded one with a fresh seed; errors name the
    request's own field (max_completion_tokens when it gave that)."""
    values = {f.name: getattr(body, f.name) for f in fields(SamplingConfig)}
    if body.param("max_tokens") not in body.model_fields_set:  # the default, within the cap
        values["max_tokens"] = default_max_tokens(limits)
    if values["seed"] is None:
        values["seed"] = fresh_seed()
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


def stops_of(body: BaseRequest) -> list[str]:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS:
        raise RequestError(f"stop takes at most {MAX_STOPS} strings", "stop")
    return stops


class AttentionRequest(_Strict):
    """POST /v1/attention: where each head looked over a short text (serving/attention.py)."""

    model: str = Field(description=MODEL_FIELD)
    text: str = Field(min_length=1, description="The text, at most the model's context length "
                                                "(and this server's cap) in characters.")


def check_attention_text(text: str, context_length: int, limits: Limits) -> None:
    """The attention text fits the model's window and this server's cap, else a 400 naming it."""
    most = min(context_length, limits.max_attention_chars)
    if len(text) > most:
        raise RequestError(f"text is {len(text)} characters; attention takes at most {most} "
                           f"(the model's context length {context_length}, this server's cap "
                           f"{limits.max_attention_chars})", "text")
