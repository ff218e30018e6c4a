"""Trace events over HTTP: `trace: true` adds `event: trace` chunks to a stream (and a `trace` list to a
complete response); without it the bytes are what they always were; the official client passes over them."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]


def sse(live, body: dict) -> list[tuple[str | None, dict | str]]:
    """(event type, data) of every SSE message of a streamed completion."""
    messages = []
    with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                data = line[len("data: "):]
                messages.append((event, data if data == "[DONE]" else json.loads(data)))
                event = None
    return messages


@pytest.mark.parametrize("mode", MODES)
def test_a_traced_stream_carries_one_event_per_forward_and_its_tokens(server, mode):
    body = {"prompt": "def add(a, b):", "max_tokens": 12, "stream": True, "mode": mode, "block_length": 4,
            "stream_options": {"include_usage": True}, "trace": True}
    messages = sse(server, body)
    traces = [d["trace"] for e, d in messages if e == "trace"]
    chunks = [d for e, d in messages if e is None and d != "[DONE]" and d["choices"]]
    usage = [d for e, d in messages if e is None and d != "[DONE]" and "usage" in d][-1]["usage"]
    assert all(d["choices"] == [] for e, d in messages if e == "trace")
    assert len(traces) == usage["nfe"] and [t["nfe"] for t in traces] == list(range(1, usage["nfe"] + 1))
    assert all(t["mode"] == mode and t["row"]["row"] == 0 for t in traces)
    assert traces[0]["kind"] == "prefill"
    emitted = [tok for t in traces for tok in t["row"]["emitted"]]
    streamed = [tok for c in chunks for tok in c["choices"][0]["token_ids"]]
    assert emitted == streamed and len(emitted) == usage["completion_tokens"]


def test_without_trace_the_stream_has_no_trace_and_the_same_tokens(server):
    body = {"prompt": "for i in range(3):", "max_tokens": 10, "stream": True, "mode": "linear-spec",
            "block_length": 4}
    plain = sse(server, body)
    traced = sse(server, dict(body, trace=True))
    assert all(e is None for e, _ in plain)
    assert all("trace" not in d for _, d in plain if d != "[DONE]")

    def tokens(messages):
        return [tok for e, d in messages if e is None and d != "[DONE]" and d["choices"]
                for tok in d["choices"][0]["token_ids"]]

    assert tokens(plain) == tokens(traced)


def test_a_complete_response_carries_the_trace_list(server):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x = 1", "max_tokens": 6, "mode": "diffusion",
                                                          "block_length": 3, "trace": True}, timeout=60).json()
    assert len(r["trace"]) == r["usage"]["nfe"]
    assert {t["kind"] for t in r["trace"]} <= {"prefill", "denoise", "write"}
    denoise = [t for t in r["trace"] if t["kind"] == "denoise"]
    assert denoise and all(0 <= c <= 1 for t in denoise for _, _, c in t["row"]["committed"])
    plain = httpx.post(server.url + "/v1/completions", json={"prompt": "x = 1", "max_tokens": 6}, timeout=60).json()
    assert "trace" not in plain


def test_the_official_client_passes_over_trace_chunks(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    stream = client.chat.completions.create(model="tiny", max_tokens=8, stream=True,
                                            messages=[{"role": "user", "content": "Hi"}],
                                            extra_body={"mode": "quadratic-spec", "block_length": 3, "trace": True})
    text, traces = "", 0
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        else:
            traces += (chunk.model_extra or {}).get("trace") is not None
    assert traces >= 2 and isinstance(text, str)
