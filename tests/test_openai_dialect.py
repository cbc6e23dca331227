"""`tinyllm serve` speaks the dialect real OpenAI clients send: the official `openai` client and
request bodies recorded from two client libraries' defaults (tests/fixtures/openai_clients),
penalties, log-probabilities, fresh seeds that replay, nulls, text parts, and a 400 naming each
field it cannot honour. In-process: the app over Starlette's TestClient, the model's decoder
thread and all, without a server process to start."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import openai
import pytest
import torch
from fastapi.testclient import TestClient
from tiny_project import untrained_package

from tinyllm.package import load_package
from tinyllm.serving.app import create_app
from tinyllm.serving.limits import Limits
from tinyllm.serving.requests import Message, chat_prompt
from tinyllm.serving.served import ServedModel
from tinyllm.tokenizer import UNKNOWN_ID
from tinyllm.tracking import discovery

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "openai_clients").glob("*.json"))
USER = [{"role": "user", "content": "ROMEO:"}]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return untrained_package(tmp_path_factory.mktemp("dialect"))


@pytest.fixture(scope="module")
def http(package):
    """The app of `tinyllm serve --model-uri PACKAGE` with its default limits."""
    model = ServedModel(discovery.resolve(str(package)), "cpu")
    with TestClient(create_app(model, Limits())) as client:
        yield client
    model.stop()


@pytest.fixture(scope="module")
def client(http) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http,
                         max_retries=0)


def events(reply) -> list[dict]:
    """The JSON chunks of a server-sent events reply, checking it ends in [DONE]."""
    frames = reply.text.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    return [json.loads(frame.removeprefix("data: ")) for frame in frames[:-2]]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda path: path.stem)
def test_request_bodies_that_client_libraries_send_by_default_are_served(http, fixture):
    recorded = json.loads(fixture.read_text())
    reply = http.post(recorded["path"], json=recorded["body"])
    assert reply.status_code == 200, reply.text
    chat = recorded["path"].endswith("/chat/completions")
    if recorded["body"].get("stream"):
        chunks = events(reply)
        assert len({chunk["seed"] for chunk in chunks}) == 1
        text = "".join(c["delta"].get("content", "") if chat else c["text"]
                       for chunk in chunks for c in chunk["choices"])
    else:
        body = reply.json()
        choice = body["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        assert isinstance(body["seed"], int) and choice["finish_reason"] == "length"
    assert len(text) == recorded["body"].get("max_tokens", 300)


def test_penalties_cut_repeats_and_give_what_the_python_api_gives(client, package):
    def reply(**penalties) -> str:
        return client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=60,
                                          temperature=0, **penalties).choices[0].text

    plain, penalised = reply(), reply(frequency_penalty=2.0)
    assert Counter(plain).most_common(1)[0][1] > 3 * Counter(penalised).most_common(1)[0][1]
    assert penalised == reply(frequency_penalty=2.0)  # deterministic
    assert reply(presence_penalty=2.0) not in (plain, penalised)
    loaded = load_package(package)
    sampled = {"max_tokens": 60, "seed": 5, "frequency_penalty": 0.7, "presence_penalty": -0.3}
    served = client.completions.create(model="tiny", prompt="ROMEO:", **sampled)
    assert served.choices[0].text == loaded.generate("ROMEO:", **sampled)


def model_logprobs(package: Path, prompt: str) -> torch.Tensor:
    """The model's own log-probabilities for the character after prompt (as much of it as the
    context holds), the unknown-character placeholder (never generated) left out."""
    loaded = load_package(package)
    ids = loaded.tokenizer.encode(prompt).tolist()[-loaded.config.context_length:]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids]))[0][0, -1]
    logits[UNKNOWN_ID] = -math.inf
    return torch.log_softmax(logits, dim=-1)


def test_chat_logprobs_are_the_models_and_consistent(client, package):
    reply = client.chat.completions.create(model="tiny", messages=USER, max_tokens=30, seed=1,
                                           logprobs=True, top_logprobs=5)
    text = reply.choices[0].message.content
    content = reply.choices[0].logprobs.content
    assert "".join(c.token for c in content) == text and len(content) == 30
    for position in content:
        tops = [t.logprob for t in position.top_logprobs]
        assert position.logprob <= 0 and len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-6
        assert position.bytes == list(position.token.encode())
        assert position.logprob <= tops[0] + 1e-6
        if position.token in [t.token for t in position.top_logprobs]:
            assert position.logprob in tops

    greedy = client.chat.completions.create(model="tiny", messages=USER, max_tokens=1,
                                            temperature=0, logprobs=True, top_logprobs=20)
    [first] = greedy.choices[0].logprobs.content
    expected = model_logprobs(package, chat_prompt([Message(**m) for m in USER]))
    best = torch.topk(expected, 20)
    tokenizer = load_package(package).tokenizer
    assert [t.token for t in first.top_logprobs] == [tokenizer.decode([i]) for i in
                                                     best.indices.tolist()]
    assert [t.logprob for t in first.top_logprobs] == pytest.approx(best.values.tolist(),
                                                                    abs=1e-5)
    assert first.token == first.top_logprobs[0].token  # greedy took the most likely


def test_streamed_logprobs_match_the_whole_reply_and_completions_have_openais_legacy_shape(
        client, http):
    options = {"model": "tiny", "messages": USER, "max_tokens": 20, "seed": 2,
               "logprobs": True, "top_logprobs": 2}
    whole = client.chat.completions.create(**options).choices[0].logprobs.content
    streamed = [p for chunk in client.chat.completions.create(**options, stream=True)
                for c in chunk.choices if c.logprobs for p in c.logprobs.content]
    assert [p.model_dump() for p in streamed] == [p.model_dump() for p in whole]

    reply = http.post("/v1/completions", json={
        "model": "tiny", "prompt": "ROMEO:", "max_tokens": 10, "seed": 2, "logprobs": 3,
        "stop": "\n"}).json()
    text, logprobs = reply["choices"][0]["text"], reply["choices"][0]["logprobs"]
    assert logprobs["tokens"] == list(text)
    assert logprobs["text_offset"] == list(range(6, 6 + len(text)))  # after "ROMEO:"
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                   logprobs["top_logprobs"], strict=True):
        assert top[token] == logprob <= 0 and 3 <= len(top) <= 4  # the chosen one is listed


def test_unseeded_requests_draw_fresh_text_and_the_seed_they_name_replays_it(client):
    def reply(**seed):
        return client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30,
                                          temperature=1.0, **seed)

    first, second = reply(), reply()
    assert first.seed != second.seed and first.choices[0].text != second.choices[0].text
    assert reply(seed=first.seed).choices[0].text == first.choices[0].text
    chunks = list(client.chat.completions.create(model="tiny", messages=USER, max_tokens=10,
                                                 stream=True))
    [seed] = {chunk.seed for chunk in chunks}  # every chunk names the same seed
    again = client.chat.completions.create(model="tiny", messages=USER, max_tokens=10, seed=seed)
    assert again.choices[0].message.content == "".join(
        c.choices[0].delta.content or "" for c in chunks)


def test_null_means_the_default_and_newer_or_ignored_fields_are_accepted(http):
    every_null = {name: None for name in (
        "stream", "stream_options", "stop", "n", "user", "temperature", "top_k", "top_p",
        "min_p", "frequency_penalty", "presence_penalty", "max_tokens", "logprobs",
        "top_logprobs", "max_completion_tokens", "response_format", "tools", "tool_choice",
        "logit_bias")}
    base = {"model": "tiny", "seed": 4, "messages": USER}
    plain = http.post("/v1/chat/completions", json=base).json()
    nulls = http.post("/v1/chat/completions", json={**base, **every_null}).json()
    assert nulls["choices"] == plain["choices"]
    asking_nothing = {"user": "u-1", "response_format": {"type": "text"}, "tools": [],
                      "tool_choice": "none", "parallel_tool_calls": False, "logit_bias": {},
                      "max_completion_tokens": 300, "max_tokens": 300,
                      "metadata": {"run": "7"}, "service_tier": "auto",
                      "reasoning_effort": "low",
                      "messages": [{"role": "user", "content": [{"type": "text",
                                                                 "text": "ROMEO:"}]}]}
    same = http.post("/v1/chat/completions", json={**base, **asking_nothing}).json()
    assert same["choices"] == plain["choices"]
    shorter = http.post("/v1/chat/completions", json={**base, "max_completion_tokens": 7})
    assert shorter.json()["usage"]["completion_tokens"] == 7


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
REFUSED = [  # (endpoint, body changes, param, part of the message)
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
     "tools: not supported (this server's model only continues text"),
    ("chat", {"tool_choice": "auto"}, "tool_choice", "not supported"),
    ("chat", {"functions": [{"name": "f"}]}, "functions", "not supported"),
    ("chat", {"function_call": "auto"}, "function_call", "not supported"),
    ("chat", {"response_format": {"type": "json_object"}}, "response_format",
     'only {"type": "text"}'),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {}}},
     "response_format", "not supported"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, IMAGE]}]},
     "messages[0].content[1].type", "parts of type 'image_url' are not supported"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "messages[0].content[0].type", "'input_audio'"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0]", 'a text part is {"type": "text", "text": "..."}'),
    ("chat", {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{}]}]},
     "messages[0].tool_calls", "not supported"),
    ("chat", {"logit_bias": {"50256": -100}}, "logit_bias", "not supported"),
    ("chat", {"top_logprobs": 21, "logprobs": True}, "top_logprobs",
     "top_logprobs must be between 0 and 20, got 21"),
    ("chat", {"top_logprobs": -1, "logprobs": True}, "top_logprobs", "between 0 and 20"),
    ("chat", {"top_logprobs": 2}, "top_logprobs", "top_logprobs needs logprobs: true"),
    ("chat", {"max_completion_tokens": 5, "max_tokens": 6}, "max_completion_tokens",
     "differs from max_tokens"),
    ("chat", {"max_completion_tokens": 10**7}, "max_completion_tokens",
     "max_completion_tokens must be <= 2000 on this server, got 10000000"),
    ("chat", {"max_completion_tokens": 0}, "max_completion_tokens",
     "max_completion_tokens must be >= 1"),
    ("chat", {"n": 17}, "n", "n must be between 1 and 16"),
    ("completions", {"max_tokens": 10**7}, "max_tokens",
     "max_tokens must be <= 2000 on this server, got 10000000"),
    ("completions", {"max_tokens": 2**64}, "max_tokens", "must be <= 2000 on this server"),
    ("completions", {"frequency_penalty": 2.5}, "frequency_penalty",
     "frequency_penalty must be <= 2.0, got 2.5"),
    ("completions", {"presence_penalty": -3}, "presence_penalty",
     "presence_penalty must be >= -2.0, got -3.0"),
    ("completions", {"logprobs": 21}, "logprobs", "logprobs must be between 0 and 20"),
    ("completions", {"logprobs": True}, "logprobs",
     "logprobs: Input should be a valid integer, got true"),
    ("completions", {"max_tokens": "5"}, "max_tokens",
     'max_tokens: Input should be a valid integer, got "5"'),
    ("completions", {"stream": "yes"}, "stream", "stream: Input should be a valid boolean"),
    ("completions", {"prompt": [1, 2, 3]}, "prompt", "prompt: token ids are not supported"),
    ("completions", {"stop": [1]}, "stop", "stop: Input should be a valid string"),
    ("completions", {"echo": True, "stream": True}, "echo", "echo cannot be streamed"),
    ("completions", {"best_of": 3}, "best_of", "not supported"),
    ("completions", {"seed": -1}, "seed", "seed must be >= 0"),
]


@pytest.mark.parametrize("endpoint, change, param, message", REFUSED)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(http, endpoint, change, param,
                                                          message):
    body = {"model": "tiny", **({"messages": USER} if endpoint == "chat" else
                                {"prompt": "ROMEO:"})}
    if not {"max_tokens", "max_completion_tokens"} & set(change):
        body["max_tokens"] = 5
    reply = http.post(f"/v1/{endpoint.replace('chat', 'chat/completions')}",
                      json={**body, **change})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and message in error["message"], error
    assert error["message"].count("\n") == 0


def test_models_are_retrieved_by_id_or_uri(client, package):
    [listed] = client.models.list().data  # a package has no other versions to serve
    assert listed.id == "tiny" and listed.run_page is None
    assert client.models.retrieve("tiny").id == "tiny"
    assert client.models.retrieve(str(package)).version == str(package)
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4' is not served here"):
        client.models.retrieve("gpt-4")


def test_history_of_every_role_is_rendered_into_the_script(client, package):
    """What clients replay: an assistant turn with content null (it called a tool) and the
    tool's result, each its speaker's lines."""
    messages = [{"role": "system", "content": "A play."}, {"role": "user", "content": "Sum?"},
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "tool", "content": "42", "tool_call_id": "call_1"},
                {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}]
    prompt = ("SYSTEM:\nA play.\n\nUSER:\nSum?\n\nASSISTANT:\n\n\nTOOL:\n42\n\n"
              "DEVELOPER:\nBe brief.\n\nASSISTANT:\n")
    reply = client.chat.completions.create(model="tiny", messages=messages, seed=2,
                                           max_tokens=20)
    expected = load_package(package).generate(prompt, seed=2, max_tokens=20)
    assert reply.choices[0].message.content == expected


def test_echo_with_logprobs_and_no_tokens_scores_a_text_as_the_evaluation_does(client, package):
    """How evaluation harnesses (lm-evaluation-harness's local-completions) score a text: the
    server's per-character log-probabilities are the evaluate stage's (char_nll), across
    windows too (the text is longer than the tiny model's 16-character context)."""
    from tinyllm.evaluation.scoring import char_nll, split_metrics

    text = "ROMEO:\nlove night light sweet death.\n\nJULIET:\nfair heaven hath thou doth.\n"
    reply = client.completions.create(model="tiny", prompt=[text, "JULIET:"], echo=True,
                                      logprobs=2, max_tokens=0, temperature=0)
    choice = reply.choices[0]
    assert choice.text == text and reply.usage.completion_tokens == 0
    assert choice.logprobs.tokens == list(text) and choice.logprobs.token_logprobs[0] is None
    assert choice.logprobs.text_offset == list(range(len(text)))
    loaded = load_package(package)
    tokens = loaded.tokenizer.encode(text)
    served = -torch.tensor(choice.logprobs.token_logprobs[1:], dtype=torch.float64)
    assert torch.allclose(served, torch.from_numpy(char_nll(loaded.model, tokens)), atol=1e-4)
    bits = float(served.mean()) / math.log(2)
    assert abs(bits - split_metrics(loaded.model, tokens)["bits_per_char"]) < 1e-4
    for position, top in enumerate(choice.logprobs.top_logprobs[1:], start=1):
        assert text[position] in top and len(top) <= 3  # the 2 most likely and the text's
        assert max(top.values()) >= choice.logprobs.token_logprobs[position] - 1e-6
    assert reply.choices[1].text == "JULIET:"


def test_lm_evaluation_harness_local_completions_scores_a_text_as_compare_does(http, package):
    """The requests lm-evaluation-harness 0.4's local-completions model sends for a
    loglikelihood_rolling task (tokenized_requests=False): its remote tokenizer finds
    /tokenizer_info and /tokenize, the text is prefixed with bos_token and sent back through
    /detokenize, then scored with echo and max_tokens 1. Its bits per character is what
    `tinyllm compare` gives bos_token + text."""
    from tinyllm.evaluation.scoring import split_metrics

    text = "ROMEO:\nlove night light sweet death.\n\nJULIET:\nfair heaven hath thou doth.\n"
    info = http.get("/tokenizer_info").json()
    assert "eos_token" in info and info["model_max_length"] == 16
    assert isinstance(http.post("/tokenize", json={"prompt": "test",
                                                   "add_special_tokens": False}).json()["tokens"],
                      list)
    [bos] = http.post("/tokenize", json={"prompt": info["bos_token"],
                                         "add_special_tokens": False}).json()["tokens"]
    ids = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert ids["count"] == len(text)
    window = http.post("/detokenize", json={"tokens": [bos, *ids["tokens"]]}).json()["prompt"]
    assert window == info["bos_token"] + text
    reply = http.post("/v1/completions", json={
        "model": "tiny", "prompt": window, "temperature": 0, "max_tokens": 1, "logprobs": 1,
        "seed": 1234, "echo": True})
    logprobs = reply.json()["choices"][0]["logprobs"]
    total = sum(logprobs["token_logprobs"][1:-1])  # the harness's ctxlen 1; the last generated
    assert all(isinstance(top, dict) for top in logprobs["top_logprobs"][1:-1])
    loaded = load_package(package)
    expected = split_metrics(loaded.model, loaded.tokenizer.encode(window))["bits_per_char"]
    assert abs(-total / len(text) / math.log(2) - expected) < 1e-4


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/detokenize", {"tokens": [1, 10**6]}, 400, "tokens[1]"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens[0]"),
    ("/tokenize", {"prompt": "x", "model": "other"}, 404, "model"),
    ("/tokenize", {"prompt": "x", "return_token_strs": True}, 400, "return_token_strs")])
def test_the_tokenizer_routes_refuse_naming_the_field(http, path, body, status, param):
    reply = http.post(path, json=body)
    assert reply.status_code == status and reply.json()["error"]["param"] == param, reply.text


def test_echo_repeats_the_prompt_before_the_reply_and_scores_both(client):
    plain = client.completions.create(model="tiny", prompt="ROMEO:", seed=3, max_tokens=10,
                                      logprobs=1)
    echoed = client.completions.create(model="tiny", prompt="ROMEO:", seed=3, max_tokens=10,
                                       logprobs=1, echo=True)
    assert echoed.choices[0].text == "ROMEO:" + plain.choices[0].text
    logprobs = echoed.choices[0].logprobs
    assert logprobs.tokens == list(echoed.choices[0].text)
    assert logprobs.token_logprobs[6:] == plain.choices[0].logprobs.token_logprobs
    assert logprobs.text_offset == list(range(16))


def test_the_responses_api_created_and_streamed_with_the_official_client(client, package):
    """Input and instructions become the chat script; the text is what generate gives it."""
    prompt = "SYSTEM:\nA play.\n\nUSER:\nROMEO:\n\nASSISTANT:\n"
    expected = load_package(package).generate(prompt, seed=3, max_tokens=20)
    options = {"model": "tiny", "instructions": "A play.", "max_output_tokens": 20,
               "extra_body": {"seed": 3}}
    created = client.responses.create(input="ROMEO:", **options)
    assert created.output_text == expected and created.status == "incomplete"
    assert created.usage.output_tokens == 20 and created.usage.input_tokens == len(prompt)
    as_messages = client.responses.create(
        input=[{"role": "user", "content": [{"type": "input_text", "text": "ROMEO:"}]}],
        **options)
    assert as_messages.output_text == expected
    with client.responses.stream(input="ROMEO:", **options) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == expected and final.output_text == expected
    assert len(deltas) >= 1 and final.id.startswith("resp_")
    with pytest.raises(openai.BadRequestError, match="previous_response_id: not supported"):
        client.responses.create(input="x", model="tiny", previous_response_id="resp_1")
