"""The official ``openai`` client against a live server: every endpoint, every mode, streaming."""

from __future__ import annotations

import httpx
import openai
import pytest

MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec", "auto"]
LOSSLESS = ["ar", "linear-spec", "quadratic-spec"]


def client(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client(server).models.retrieve("tiny").id == "tiny"
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["default_mode"] == "auto"


@pytest.mark.parametrize("mode", MODES)
def test_completion_every_mode(server, mode):
    r = client(server).completions.create(model="tiny", prompt="def add(a, b):", max_tokens=12,
                                          extra_body={"mode": mode})
    usage = r.usage.model_extra
    assert r.object == "text_completion" and r.model == "tiny" and len(r.choices) == 1
    assert isinstance(r.choices[0].text, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert usage["requested_mode"] == mode
    assert usage["mode"] == mode if mode != "auto" else usage["mode"] in ("ar", "linear-spec")
    assert usage["nfe"] >= 1 and usage["tpf"] == pytest.approx(r.usage.completion_tokens / usage["nfe"], abs=1e-3)
    if mode == "auto":
        assert usage["auto_reason"] in ("low_load", "queue_depth", "low_acceptance", "probe")


def test_lossless_modes_agree_at_temperature_zero(server):
    texts = {mode: client(server).completions.create(model="tiny", prompt="for i in range(10):", max_tokens=20,
                                                      extra_body={"mode": mode}).choices[0].text
             for mode in LOSSLESS + ["auto"]}
    assert len(set(texts.values())) == 1, texts


@pytest.mark.parametrize("mode", MODES)
def test_chat_every_mode(server, mode):
    r = client(server).chat.completions.create(
        model="tiny", max_tokens=10, extra_body={"mode": mode, "block_length": 3},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}])
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert 1 <= r.usage.completion_tokens <= 10
    assert r.usage.model_extra["requested_mode"] == mode


def test_chat_uses_the_chat_template(server):
    """The prompt is the template's rendering: system + user markers + the generation prompt."""
    tok = server.server.tokenizer
    messages = [{"role": "user", "content": "Hi"}]
    expected = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"]
    r = client(server).chat.completions.create(model="tiny", max_tokens=3, messages=messages)
    assert r.usage.prompt_tokens == len(expected)
    completion = client(server).completions.create(model="tiny", prompt=expected, max_tokens=3)
    assert completion.choices[0].text == r.choices[0].message.content


@pytest.mark.parametrize("mode", MODES)
def test_streaming_completion_equals_non_streaming(server, mode):
    c = client(server)
    kwargs = dict(model="tiny", prompt="class Point:", max_tokens=14, extra_body={"mode": mode})
    whole = c.completions.create(**kwargs)
    chunks = list(c.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text_chunks = [ch for ch in chunks if ch.choices]
    assert "".join(ch.choices[0].text for ch in text_chunks) == whole.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(ch.choices[0].finish_reason is None for ch in text_chunks[:-1])
    assert chunks[-1].usage is not None and not chunks[-1].choices  # usage rides alone in the last chunk
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    streamed_ids = [t for ch in text_chunks for t in ch.choices[0].model_extra["token_ids"]]
    assert len(streamed_ids) == whole.usage.completion_tokens


def test_streaming_without_usage_and_done_marker(server):
    body = {"model": "tiny", "prompt": "import os", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert all('"usage"' not in e for e in events[:-1])


def test_streaming_chat(server):
    c = client(server)
    messages = [{"role": "user", "content": "Say something."}]
    whole = c.chat.completions.create(model="tiny", messages=messages, max_tokens=9)
    chunks = list(c.chat.completions.create(model="tiny", messages=messages, max_tokens=9, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_speculative_cycle_streams_as_one_multi_token_chunk(accepting_server):
    """With drafts always accepted, each linear-spec cycle commits block_length tokens: one chunk each."""
    c = client(accepting_server)
    chunks = list(c.completions.create(model="tiny", prompt="x", max_tokens=13, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"mode": "linear-spec", "block_length": 4}))
    sizes = [len(ch.choices[0].model_extra["token_ids"]) for ch in chunks if ch.choices]
    # prefill emits 1 token, then 3 cycles of 4 (3 accepted drafts + bonus), the finish chunk carries none
    assert sizes == [1, 4, 4, 4, 0]
    usage = chunks[-1].usage.model_extra
    assert usage["acceptance_length"] == 4.0 and usage["nfe"] == 7  # prefill + 2 forwards per cycle
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "a" * 13


def test_stop_strings(accepting_server):
    c = client(accepting_server)
    r = c.completions.create(model="tiny", prompt="x", max_tokens=20, stop=["aaaaa"])
    assert r.choices[0].text == "" and r.choices[0].finish_reason == "stop"
    chunks = list(c.completions.create(model="tiny", prompt="x", max_tokens=20, stop="b", stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == "a" * 20
    assert chunks[-1].choices[0].finish_reason == "length"


def test_multiple_prompts_in_one_completion_request(server):
    c = client(server)
    prompts = ["def add", "import sys"]
    together = c.completions.create(model="tiny", prompt=prompts, max_tokens=6, extra_body={"mode": "ar"})
    alone = [c.completions.create(model="tiny", prompt=p, max_tokens=6, extra_body={"mode": "ar"})
             for p in prompts]
    assert [ch.index for ch in together.choices] == [0, 1]
    assert [ch.text for ch in together.choices] == [a.choices[0].text for a in alone]
    assert together.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)


def test_seeded_sampling_is_reproducible(server):
    c = client(server)
    kwargs = dict(model="tiny", prompt="Hello", max_tokens=12, temperature=1.0, seed=1234,
                  extra_body={"mode": "linear-spec"})
    assert c.completions.create(**kwargs).choices[0].text == c.completions.create(**kwargs).choices[0].text


def test_metrics_endpoint(server):
    client(server).completions.create(model="tiny", prompt="x", max_tokens=4, extra_body={"mode": "diffusion"})
    text = httpx.get(server.url + "/metrics").text
    for name in ("trimode_requests_total", "trimode_tokens_per_forward_bucket", "trimode_acceptance_length_bucket",
                 "trimode_drafted_tokens_total", "trimode_accepted_tokens_total", "trimode_rolled_back_tokens_total",
                 "trimode_queue_depth", "trimode_time_to_first_token_seconds_bucket",
                 "trimode_request_latency_seconds_bucket", "trimode_auto_decisions_total",
                 "trimode_batch_size_bucket"):
        assert name in text, name
    assert server.metric("trimode_requests_total", mode="diffusion", status="ok") >= 1
    assert server.metric("trimode_drafted_tokens_total", mode="diffusion") >= 1
