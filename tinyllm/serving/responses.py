"""`POST /v1/responses`, OpenAI's Responses API that newer SDKs and agents call: its request
(input as text or messages, instructions, max_output_tokens) becomes a chat script as chat
renders it (requests.chat_prompt), and its reply is a `response` object, or with stream its
events (response.created, the output item and text part added, text deltas, their done events,
response.completed). It keeps no state: previous_response_id is refused."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from tinyllm.serving.jobs import Job
from tinyllm.serving.requests import (
    NO_TOOLS,
    Integer,
    Message,
    SampledRequest,
    _Strict,
    refused,
)


class InputPart(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list | None = None


class InputMessage(_Strict):
    type: Literal["message"] | None = None
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[InputPart]
    id: str | None = None
    status: str | None = None


class ResponsesRequest(SampledRequest):
    input: str | list[InputMessage] = Field(description="Text, or the conversation so far.")
    instructions: str | None = Field(None, description="A system message before the input.")
    max_output_tokens: Integer | None = Field(
        None, description="Responses' name for max_tokens.", json_schema_extra={"minimum": 1})
    store: bool | None = Field(None, description="Accepted and ignored: nothing is stored.")
    UNSUPPORTED: ClassVar[dict[str, tuple[list, str]]] = {
        **SampledRequest.UNSUPPORTED, "tools": ([[]], NO_TOOLS),
        "tool_choice": (["none"], NO_TOOLS), "parallel_tool_calls": ([True, False], NO_TOOLS),
        "text": ([{"format": {"type": "text"}}], "the model writes plain text only"),
        "previous_response_id": ([], "this server keeps no responses; send the whole input"),
        "include": ([[]], "there is nothing more to include")}

    @model_validator(mode="after")
    def _max_output_tokens(self) -> ResponsesRequest:
        if self.max_output_tokens is not None:
            if "max_tokens" in self.model_fields_set:
                raise refused("max_output_tokens", "give it or max_tokens, not both")
            self.max_tokens = self.max_output_tokens
        return self

    def param(self, name: str) -> str:
        renamed = name == "max_tokens" and self.max_output_tokens is not None
        return "max_output_tokens" if renamed else name

    def messages(self) -> list[Message]:
        """The conversation as chat's messages: the instructions a system message first."""
        found = [] if self.instructions is None else [
            Message(role="system", content=self.instructions)]
        if isinstance(self.input, str):
            return [*found, Message(role="user", content=self.input)]
        for item in self.input:
            content = item.content if isinstance(item.content, str) else [
                {"type": "text", "text": part.text} for part in item.content]
            found.append(Message(role=item.role, content=content))
        return found


def response(job: Job, body: ResponsesRequest, ids: tuple[str, str], text: str | None) -> dict:
    """The `response` object: in progress (text None) or done with text."""
    done = text is not None
    cut = done and job.finish[0] != "stop"
    return {"id": ids[0], "object": "response", "created_at": int(time.time()),
            "status": ("incomplete" if cut else "completed") if done else "in_progress",
            "model": job.served.uri, "seed": job.settings.seed, "output": [
                item(ids[1], text)] if done else [],
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "error": None, "instructions": body.instructions, "metadata": body.metadata or {},
            "temperature": job.settings.temperature, "top_p": job.settings.top_p,
            "max_output_tokens": job.settings.max_tokens, "tools": [], "tool_choice": "none",
            "parallel_tool_calls": False,
            "usage": _usage(job) if done else None}


def item(item_id: str, text: str | None) -> dict:
    """The assistant message of the output: in progress (text None) or done."""
    return {"type": "message", "id": item_id, "role": "assistant",
            "status": "in_progress" if text is None else "completed",
            "content": [] if text is None else [part(text)]}


def part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": []}


def _usage(job: Job) -> dict:
    used = job.usage()
    return {"input_tokens": used["prompt_tokens"], "output_tokens": used["completion_tokens"],
            "total_tokens": used["total_tokens"]}


def new_ids() -> tuple[str, str]:
    """The response's id and its output message's."""
    return f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"


async def events(job: Job, body: ResponsesRequest, failed) -> AsyncIterator[str]:
    """The streamed reply's server-sent events; failed(job): the error body of a failed
    generation."""
    ids, sequence, text = new_ids(), 0, ""

    def event(kind: str, **fields: Any) -> str:
        nonlocal sequence
        sequence += 1
        data = {"type": kind, "sequence_number": sequence - 1, **fields}
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    where = {"item_id": ids[1], "output_index": 0, "content_index": 0}
    try:
        yield event("response.created", response=response(job, body, ids, None))
        yield event("response.output_item.added", output_index=0, item=item(ids[1], None))
        yield event("response.content_part.added", **where, part=part(""))
        async for piece in job.pieces():
            if job.error:  # OpenAI's clients raise on an error in an event
                yield event("error", **failed(job))
                return
            if piece.text:
                text += piece.text
                yield event("response.output_text.delta", **where, delta=piece.text)
        yield event("response.output_text.done", **where, text=text)
        yield event("response.content_part.done", **where, part=part(text))
        yield event("response.output_item.done", output_index=0, item=item(ids[1], text))
        yield event("response.completed", response=response(job, body, ids, text))
    finally:  # the client went away (or we are done): stop its generation
        job.cancel()
