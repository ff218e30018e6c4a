"""Concurrency: batching is invisible at T=0, the queue is bounded, timeouts and disconnects free slots."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]
PROMPTS = ["def add(a, b):", "The quick brown", "for i in range(10):", "import os", "Hello, world!",
           "class Point:", "print(i * i)", "12345 + 67890"]


def requests_16() -> list[dict]:
    """16 requests: every mode, different prompts (lengths) and max_tokens."""
    out = []
    for i in range(16):
        mode = MODES[i % 4]
        body = {"model": "tiny", "prompt": PROMPTS[i % len(PROMPTS)] + " " * (i // 8), "mode": mode,
                # diffusion rows share max_tokens (their blocks depend on it); the others vary
                "max_tokens": 12 if mode == "diffusion" else 6 + i}
        if i % 5 == 0:
            body["block_length"] = 3
        out.append(body)
    return out


async def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        return await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))


def sequential(url: str, bodies: list[dict]) -> list[dict]:
    with httpx.Client(base_url=url, timeout=60) as c:
        return [c.post("/v1/completions", json=b).json() for b in bodies]


def same_output(a: dict, b: dict) -> bool:
    return (a["choices"][0]["text"] == b["choices"][0]["text"]
            and a["choices"][0]["finish_reason"] == b["choices"][0]["finish_reason"]
            and a["usage"]["completion_tokens"] == b["usage"]["completion_tokens"])


def test_16_concurrent_requests_equal_their_sequential_outputs(server):
    bodies = requests_16()
    alone = sequential(server.url, bodies)
    assert all(r["usage"]["batch_size"] == 1 for r in alone)
    responses = asyncio.run(post_all(server.url, bodies))
    assert [r.status_code for r in responses] == [200] * 16
    for body, r, a in zip(bodies, responses, alone):
        assert same_output(r.json(), a), (body, r.json(), a)


def test_batched_rows_equal_their_sequential_outputs(server):
    """Hold the worker while all 16 queue, so batches are certain to form; outputs still match."""
    bodies = requests_16()
    alone = sequential(server.url, bodies)
    with server.server.scheduler.paused():
        result: list = []
        thread = threading.Thread(target=lambda: result.append(asyncio.run(post_all(server.url, bodies))))
        thread.start()
        deadline = time.monotonic() + 30
        while server.server.scheduler.queue_depth < 16:
            assert time.monotonic() < deadline, "requests did not reach the queue"
            time.sleep(0.01)
    thread.join(60)
    responses = [r.json() for r in result[0]]
    sizes = [r["usage"]["batch_size"] for r in responses]
    assert max(sizes) >= 4, sizes  # e.g. the four AR rows ran as one batch
    for body, r, a in zip(bodies, responses, alone):
        assert same_output(r, a), (body, r, a)


def test_full_queue_answers_429_with_retry_after(make_server, tiny_model_dir):
    live = make_server(tiny_model_dir, max_queue=2)
    bodies = [{"model": "tiny", "prompt": "x", "max_tokens": 4, "mode": "ar"}] * 2
    with live.server.scheduler.paused():
        result: list = []
        thread = threading.Thread(target=lambda: result.append(asyncio.run(post_all(live.url, bodies))))
        thread.start()
        deadline = time.monotonic() + 30
        while live.server.scheduler.queue_depth < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = httpx.post(live.url + "/v1/completions", json=bodies[0], timeout=30)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "overloaded"
    thread.join(60)
    assert [x.status_code for x in result[0]] == [200, 200]  # the queued ones are served once it drains
    assert live.metric("trimode_requests_total", mode="ar", status="overloaded") == 1
    assert httpx.post(live.url + "/v1/completions", json=bodies[0], timeout=30).status_code == 200


def test_request_timeout(make_server, tiny_model_dir):
    live = make_server(tiny_model_dir, request_timeout=0.5)
    body = {"model": "tiny", "prompt": "x", "max_tokens": 4}
    with live.server.scheduler.paused():
        start = time.monotonic()
        r = httpx.post(live.url + "/v1/completions", json=body, timeout=30)
        elapsed = time.monotonic() - start
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
    assert 0.4 < elapsed < 10
    # a streaming request that times out gets an error event and [DONE]
    with live.server.scheduler.paused():
        with httpx.stream("POST", live.url + "/v1/completions", json={**body, "stream": True}, timeout=30) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert '"timeout_error"' in lines[-2] and lines[-1] == "data: [DONE]"
    ok = httpx.post(live.url + "/v1/completions", json=body, timeout=30)  # the server keeps serving
    assert ok.status_code == 200


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_generation_and_frees_the_slot(make_server, accepting_model_dir, stream):
    """A long generation whose client leaves stops within a cycle; the next request is served at once.
    (The accepting model never emits EOS, so only the disconnect can end the generation early.)"""
    live = make_server(accepting_model_dir, max_batch_size=1, max_tokens_limit=2000)
    long = {"model": "tiny", "prompt": "x", "max_tokens": 2000, "mode": "ar", "stream": stream}
    if stream:
        with httpx.stream("POST", live.url + "/v1/completions", json=long, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # leave after the first chunk: closing the response drops the connection
    else:
        try:
            httpx.post(live.url + "/v1/completions", json=long, timeout=0.3)
        except httpx.TimeoutException:
            pass
    deadline = time.monotonic() + 20
    while live.metric("trimode_requests_total", mode="ar", status="cancelled") < 1:
        assert time.monotonic() < deadline, "the disconnect was not noticed"
        time.sleep(0.01)
    while live.server.scheduler.running:
        assert time.monotonic() < deadline, "the cancelled generation kept its slot"
        time.sleep(0.01)
    generated = live.metric("trimode_generated_tokens_total", mode="ar")
    assert generated < 2000, "the generation ran to its end instead of being cancelled"
    r = httpx.post(live.url + "/v1/completions", json={"model": "tiny", "prompt": "y", "max_tokens": 3,
                                                       "mode": "ar"}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
