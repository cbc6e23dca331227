"""The OpenAPI document is the contract: Schemathesis, an independent fuzzer, reads it and
sends requests to every route (boundary values, wrong types, undeclared methods, then random
ones) and checks that the server answers as it says: documented statuses, media types, headers
and reply shapes (streamed events too), schema-invalid requests refused, never a 5xx. Not
checked: that every schema-valid request is accepted, as rules across fields that JSON Schema
cannot state refuse some (max_tokens differing from max_completion_tokens, seed + n - 1 past
the largest seed). A real socket, under small limits, so a few seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_intake import serving
from tiny_project import untrained_package

from tinyllm.serving.app import create_app
from tinyllm.serving.limits import Limits
from tinyllm.serving.served import ServedModel
from tinyllm.tracking import discovery

LIMITS = Limits(max_tokens=8, max_n=2, max_prompt_chars=200)
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
          "unsupported_method,missing_required_header,allow_header_conformance")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return untrained_package(tmp_path_factory.mktemp("api"))


def test_schemathesis_finds_nothing_on_any_route(package, tmp_path):
    with serving(package, LIMITS) as (host, port):
        run = subprocess.run(
            [str(Path(sys.executable).with_name("st")), "run",
             f"http://{host}:{port}/openapi.json", "--checks", CHECKS, "--max-examples", "10",
             "--seed", "36", "--generation-database", "none", "--no-color"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-5000:]
    assert "Tested: 10" in run.stdout and "No issues found" in run.stdout, run.stdout[-3000:]


def test_the_document_states_the_limits_and_every_status(package):
    models = ServedModel(discovery.resolve(str(package)))
    try:
        document = create_app(models, LIMITS).openapi()
    finally:
        models.stop()
    completion = document["components"]["schemas"]["CompletionRequest"]["properties"]
    assert completion["max_tokens"]["maximum"] == LIMITS.max_tokens
    assert completion["max_tokens"]["default"] == LIMITS.max_tokens  # capped below 300
    assert completion["n"]["maximum"] == LIMITS.max_n and completion["n"]["minimum"] == 1
    assert completion["temperature"]["maximum"] == 10.0
    assert completion["top_p"]["exclusiveMinimum"] == 0.0
    assert {"type": "null"} in completion["top_k"]["anyOf"]
    assert completion["logprobs"]["maximum"] == 20
    assert completion["prompt"]["anyOf"][0]["maxLength"] == LIMITS.max_prompt_chars
    assert completion["best_of"]["enum"] == [1, None]
    assert completion["model"]["enum"] == sorted(models.names())
    assert all(field.get("description") for field in completion.values())
    post = document["paths"]["/v1/completions"]["post"]["responses"]
    assert set(post) == {"200", "400", "404", "408", "413", "415", "500", "503"}
    assert "text/event-stream" in post["200"]["content"]
    assert "HTTPValidationError" not in document["components"]["schemas"]  # no 422
    attention = document["components"]["schemas"]["AttentionRequest"]["properties"]
    assert attention["text"]["maxLength"] == 16  # the tiny model's context, under the cap
    assert "/" not in document["paths"]  # the playground page is no API route
    assert completion["echo"]["description"].endswith("Not with stream.")
    assert document["components"]["schemas"]["CompletionRequest"]["then"] == {
        "not": {"required": ["stream"], "properties": {"stream": {"const": True}}}}
    tokens = document["components"]["schemas"]["DetokenizeRequest"]["properties"]["tokens"]
    assert tokens["maxItems"] == LIMITS.max_prompt_chars
    assert set(document["paths"]["/tokenize"]["post"]["responses"]) == {
        "200", "400", "404", "408", "413", "415", "503"}  # 503: a named version cannot load
