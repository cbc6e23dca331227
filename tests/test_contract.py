"""The OpenAPI document is the contract: Schemathesis, an independent fuzzer, generates requests
from it for every route and checks that the server answers as it says (statuses, media types,
reply shapes, never a 5xx). In-process over ASGI, under small limits, so a few seconds."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from tiny_project import untrained_package

from tinyllm.config import Limits
from tinyllm.serving.app import create_app
from tinyllm.serving.jobs import Models
from tinyllm.tracking import discovery

LIMITS = Limits(max_tokens=8, max_n=2, max_prompt_chars=200)
EXAMPLES = 40  # per route
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    models = Models(discovery.resolve(str(untrained_package(tmp_path_factory.mktemp("api")))))
    yield create_app(models, LIMITS)
    models.stop()


def test_the_server_answers_as_its_openapi_document_says(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {
        "/health", "/v1/models", "/v1/completions", "/v1/chat/completions"}
    for operation, mode in itertools.product(operations, GenerationMode):
        if mode == GenerationMode.NEGATIVE and operation.method == "get":
            continue  # no parameters: nothing to get wrong
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_as_documented(case):
            case.call_and_validate(checks=CHECKS)

        answers_as_documented()


def test_the_document_states_the_limits_and_every_status(app):
    document = app.openapi()
    completion = document["components"]["schemas"]["CompletionRequest"]["properties"]
    assert completion["max_tokens"]["maximum"] == LIMITS.max_tokens
    assert completion["n"]["maximum"] == LIMITS.max_n and completion["n"]["minimum"] == 1
    assert completion["temperature"]["maximum"] == 10.0
    assert completion["top_p"]["exclusiveMinimum"] == 0.0
    assert {"type": "null"} in completion["top_k"]["anyOf"]
    assert completion["logprobs"]["maximum"] == 20
    assert all(field.get("description") for field in completion.values())
    post = document["paths"]["/v1/completions"]["post"]["responses"]
    assert set(post) == {"200", "400", "404", "408", "413", "415", "500"}
    assert "text/event-stream" in post["200"]["content"]
