"""Bad input never crashes the server: a table of bad requests, then bounded fuzzing (hypothesis, schemathesis).

Every bad request gets a 4xx with an OpenAI-style body ``{"error": {message, type, param, code}}`` whose
``param`` (and message) names the offending field; after all of them the server still answers normally.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CONTEXT = 2048  # the tiny model's context (conftest.CONTEXT); checked in test_bad_input
C, CHAT = "/v1/completions", "/v1/chat/completions"
OK = {"model": "tiny", "prompt": "def add", "max_tokens": 4}
MSG = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

# (name, path, body (dict = JSON, str = raw text), expected status, expected error param)
BAD = [
    ("malformed json", C, '{"prompt": "x",', 400, None),
    ("not an object", C, "[1, 2, 3]", 400, None),
    ("empty body", C, "", 400, None),
    ("missing prompt", C, {"model": "tiny"}, 400, "prompt"),
    ("prompt wrong type", C, {**OK, "prompt": 5}, 400, "prompt"),
    ("prompt mixed list", C, {**OK, "prompt": ["a", 1]}, 400, "prompt"),
    ("prompt empty string", C, {**OK, "prompt": ""}, 400, "prompt"),
    ("prompt empty list", C, {**OK, "prompt": []}, 400, "prompt"),
    ("prompt token out of vocab", C, {**OK, "prompt": [5, 10**9]}, 400, "prompt"),
    ("prompt negative token", C, {**OK, "prompt": [-1]}, 400, "prompt"),
    ("prompt longer than context", C, {**OK, "prompt": [10] * (CONTEXT + 5)}, 400, "prompt"),
    ("prompt + max_tokens over context", C, {**OK, "prompt": [10] * (CONTEXT - 10), "max_tokens": 50}, 400,
     "max_tokens"),
    ("max_tokens string", C, {**OK, "max_tokens": "5"}, 400, "max_tokens"),
    ("max_tokens bool", C, {**OK, "max_tokens": True}, 400, "max_tokens"),
    ("max_tokens float", C, {**OK, "max_tokens": 4.5}, 400, "max_tokens"),
    ("max_tokens zero", C, {**OK, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens negative", C, {**OK, "max_tokens": -3}, 400, "max_tokens"),
    ("max_tokens huge", C, {**OK, "max_tokens": 10**12}, 400, "max_tokens"),
    ("temperature string", C, {**OK, "temperature": "hot"}, 400, "temperature"),
    ("temperature negative", C, {**OK, "temperature": -0.5}, 400, "temperature"),
    ("temperature too high", C, {**OK, "temperature": 7}, 400, "temperature"),
    ("top_p zero", C, {**OK, "top_p": 0}, 400, "top_p"),
    ("top_p above one", C, {**OK, "top_p": 1.5}, 400, "top_p"),
    ("top_k negative", C, {**OK, "top_k": -1}, 400, "top_k"),
    ("unknown mode", C, {**OK, "mode": "turbo"}, 400, "mode"),
    ("mode wrong type", C, {**OK, "mode": 3}, 400, "mode"),
    ("block_length zero", C, {**OK, "block_length": 0}, 400, "block_length"),
    ("block_length huge", C, {**OK, "block_length": 100000}, 400, "block_length"),
    ("threshold zero", C, {**OK, "threshold": 0}, 400, "threshold"),
    ("threshold above one", C, {**OK, "threshold": 1.5}, 400, "threshold"),
    ("n > 1 unsupported", C, {**OK, "n": 2}, 400, "n"),
    ("best_of unsupported", C, {**OK, "best_of": 3}, 400, "best_of"),
    ("echo unsupported", C, {**OK, "echo": True}, 400, "echo"),
    ("logprobs unsupported", C, {**OK, "logprobs": 5}, 400, "logprobs"),
    ("suffix unsupported", C, {**OK, "suffix": "end"}, 400, "suffix"),
    ("penalty unsupported", C, {**OK, "presence_penalty": 1.0}, 400, "presence_penalty"),
    ("logit_bias unsupported", C, {**OK, "logit_bias": {"5": 10}}, 400, "logit_bias"),
    ("unknown field", C, {**OK, "mdoe": "ar"}, 400, "mdoe"),
    ("stream wrong type", C, {**OK, "stream": "yes"}, 400, "stream"),
    ("stream_options wrong type", C, {**OK, "stream": True, "stream_options": {"include_usage": "yes"}}, 400,
     "stream_options.include_usage"),
    ("stop wrong type", C, {**OK, "stop": 5}, 400, "stop"),
    ("too many stops", C, {**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("seed negative", C, {**OK, "seed": -1}, 400, "seed"),
    ("unknown model", C, {**OK, "model": "gpt-4"}, 404, "model"),
    ("chat missing messages", CHAT, {"model": "tiny"}, 400, "messages"),
    ("chat empty messages", CHAT, {**MSG, "messages": []}, 400, "messages"),
    ("chat unknown role", CHAT, {**MSG, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ("chat content wrong type", CHAT, {**MSG, "messages": [{"role": "user", "content": 5}]}, 400,
     "messages.0.content"),
    ("chat image part for a text model", CHAT, {**MSG, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}]}, 400,
     "messages.0.content.0.image_url.url"),
    ("chat unknown part type", CHAT, {**MSG, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {}}]}]}, 400, "messages.0.content.0.type"),
    ("chat tool role", CHAT, {**MSG, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role"),
    ("chat tools unsupported", CHAT, {**MSG, "tools": [{"type": "function"}]}, 400, "tools"),
    ("chat logprobs unsupported", CHAT, {**MSG, "logprobs": True}, 400, "logprobs"),
    ("chat max_completion_tokens zero", CHAT, {**MSG, "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ("chat max_completion_tokens huge", CHAT, {**MSG, "max_completion_tokens": 10**6}, 400,
     "max_completion_tokens"),
    ("chat n > 1", CHAT, {**MSG, "n": 3}, 400, "n"),
    ("chat unknown mode", CHAT, {**MSG, "mode": "fast"}, 400, "mode"),
]


def assert_error_body(r: httpx.Response, param: str | None) -> None:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["param"] == param, body
    if param is not None:
        assert param in body["error"]["message"], body


@pytest.mark.parametrize("name,path,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_input(server, name, path, body, status, param):
    assert server.server.context == CONTEXT
    if isinstance(body, str):
        r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == status, (r.status_code, r.text)
    assert_error_body(r, param)


def test_wrong_method_and_path(server):
    r = httpx.get(server.url + C)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/embeddings", json={})
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(server.url + "/v1/models/gpt-4").status_code == 404


def test_non_json_content_type(server):
    r = httpx.post(server.url + C, content=b"prompt=x", headers={"content-type": "text/plain"})
    assert r.status_code == 400
    assert_error_body(r, None)


def test_still_serving_after_bad_inputs(server):
    """Bad requests are counted and answered; the next normal request is served as usual."""
    before = server.metric("trimode_requests_total", mode="none", status="invalid")
    for _, path, body, _, _ in BAD[:5]:
        httpx.post(server.url + path, content=body if isinstance(body, str) else json.dumps(body),
                   headers={"content-type": "application/json"}, timeout=30)
    assert server.metric("trimode_requests_total", mode="none", status="invalid") == before + 5
    r = httpx.post(server.url + C, json=OK, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


# ------------------------------------------------------------------------------------------ fuzzing
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4),
                    max_leaves=8)
MODES = st.sampled_from(["auto", "ar", "diffusion", "linear-spec", "quadratic-spec"])
VALID = {  # plausible values, edges included
    "model": st.just("tiny"),
    "max_tokens": st.integers(1, 6),
    "temperature": st.sampled_from([0.0, 1e-300, 0.5, 1.0, 2.0]),
    "top_p": st.sampled_from([5e-324, 0.1, 0.9, 1.0]),
    "top_k": st.integers(0, 400),
    "n": st.just(1),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=4),
    "seed": st.integers(0, 2**63 - 1),
    "mode": MODES,
    "block_length": st.integers(1, 12),
    "threshold": st.floats(0.01, 1.0) | st.none(),
    "presence_penalty": st.just(0.0),
    "logit_bias": st.just({}),
    "user": st.text(max_size=5),
}
PROMPT = st.text(max_size=40) | st.lists(st.integers(0, 300), min_size=1, max_size=8) \
    | st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=3)
MESSAGES = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]),
     "content": st.text(max_size=30) | st.lists(st.fixed_dictionaries(
         {"type": st.just("text"), "text": st.text(max_size=10)}), max_size=2)}), min_size=1, max_size=3)


def bodies(main: str, main_value) -> st.SearchStrategy:
    """A plausible body; half of the time one field (or the whole body) is replaced by arbitrary JSON."""
    valid = st.builds(lambda m, rest: {main: m, **rest}, main_value, st.fixed_dictionaries({}, optional=VALID))
    field = st.sampled_from([main, "bogus", *VALID])

    def mutate(body: dict, change):
        if change is None:
            return body
        key, value = change
        return value if key == "<body>" else {**body, key: value}

    change = st.none() | st.tuples(field | st.just("<body>"), JSON)
    return st.builds(mutate, valid, change)


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(endpoint=st.sampled_from([C, CHAT]), completion=bodies("prompt", PROMPT), chat=bodies("messages", MESSAGES))
def test_fuzzed_bodies_never_get_a_server_error(server, endpoint, completion, chat):
    body = completion if endpoint == C else chat
    try:
        content = json.dumps(body, allow_nan=True)  # NaN/Infinity too: Python's JSON parser accepts them
    except (TypeError, ValueError):
        return
    r = httpx.post(server.url + endpoint, content=content, headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code < 500, (body, r.status_code, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["message"] and error["type"]
    elif isinstance(body, dict) and body.get("stream") is True:
        assert r.text.rstrip().endswith("data: [DONE]")


@pytest.fixture(scope="module")
def openapi_schema(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("openapi_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_openapi_schema_fuzz_finds_no_server_error(case):
    """schemathesis generates requests from the server's own OpenAPI document (every operation)."""
    response = case.call(timeout=60)
    assert response.status_code < 500, (case.path, case.body, response.status_code, response.text)
