"""One generation request in flight (:class:`Call`): worker events -> a JSON response or an SSE stream.

- ``usage`` holds the OpenAI token counts plus ``mode`` (the mode that ran),
  ``requested_mode``, ``auto_reason``, ``nfe`` and ``tpf`` (forwards this
  request took part in, and its tokens per forward, even inside a batch),
  ``acceptance_length`` and ``batch_size``; ``image_tokens`` (the prompt's image
  placeholders, counted in ``prompt_tokens`` as OpenAI counts image tokens) and
  ``prefill_s`` / ``decode_s``, the seconds of the prefill forward (the images are
  encoded in it) and of the forwards after it, of the batch the request ran in
  (the longest, when its prompts ran in several).
- Streaming sends one chunk per decode cycle of a choice (a speculative cycle
  is one multi-token chunk, with its ``token_ids``), then the finish reason,
  the usage chunk if ``stream_options.include_usage``, and ``data: [DONE]``.
- With ``trace: true`` a stream also carries one ``event: trace`` chunk per forward the
  request took part in (``choices`` empty, the event in ``trace``; sent before the tokens
  of its cycle), and a complete response a ``trace`` list; without it nothing changes.
- A client that disconnects (streaming or not) cancels its jobs; the worker
  drops them at its next cycle, so the slot is free at once.
- Every request is recorded once in the metrics, with its final status.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from ..generation.trace import token_texts
from .protocol import APIError, error_body
from .scheduler import GenerationParams, Job, JobEvent, JobResult
from .text import TextAssembler


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


class Call:
    """One HTTP generation request in flight: its jobs, their events and text. ``server`` is the
    app's :class:`~trimode.serving.server.Server` (its config, name and metrics)."""

    def __init__(self, server, jobs: list[Job], events: asyncio.Queue, texts: list[TextAssembler],
                 params: GenerationParams, chat: bool, prompts: list[list[int]], image_tokens: int = 0):
        self.server, self.jobs, self.events, self.texts = server, jobs, events, texts
        self.params, self.chat, self.prompts = params, chat, prompts
        self.image_tokens = image_tokens  # of all prompts
        self.results: list[JobResult | None] = [None] * len(jobs)
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.deadline = min(job.deadline for job in jobs)
        self.recorded = False
        self.traces: list[dict] = []  # trace events, when the request asked for them

    @property
    def finished(self) -> bool:
        return all(r is not None for r in self.results)

    def on_event(self, event: JobEvent) -> tuple[str, str | None]:
        """Apply one worker event; returns (new text, finish reason or None). A trace event is kept
        (``traces``) and returns no text."""
        i = event.index
        if event.trace is not None:
            event.trace["text"] = token_texts(event.trace["row"], self.server.tokenizer.decode)
            self.traces.append(event.trace)
            return "", None
        if event.error is not None:
            raise APIError(503 if "shutting down" in event.error else 500, event.error, None,
                           type="server_error")
        if event.tokens is not None:
            if self.texts[i].stopped:
                return "", None
            text = self.texts[i].push(event.tokens)
            if self.texts[i].stopped:
                self.jobs[i].cancel()  # a stop string ended the choice: free the row
            return text, None
        result = event.result
        self.results[i] = result
        if result.finish_reason == "timeout":
            raise APIError(504, f"the request took longer than request_timeout="
                                f"{self.server.config.request_timeout:g} s", None, type="timeout_error",
                           code="timeout")
        reason = "stop" if self.texts[i].stopped else result.finish_reason
        return self.texts[i].finish(), reason

    async def next_event(self, disconnect: asyncio.Task | None = None) -> JobEvent:
        remaining = self.deadline - time.monotonic() + 1.0  # the worker enforces the deadline; this is a backstop
        get = asyncio.ensure_future(self.events.get())
        waits = {get} if disconnect is None else {get, disconnect}
        try:
            done, _ = await asyncio.wait(waits, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not get.done():  # timed out, client gone, or this task was cancelled: drop the pending read
                get.cancel()
        if get in done:
            return get.result()
        if disconnect is not None and disconnect in done:
            raise ClientGone()
        raise APIError(504, f"the request took longer than request_timeout={self.server.config.request_timeout:g} s",
                       None, type="timeout_error", code="timeout")

    async def complete(self, request: Request) -> JSONResponse:
        parts = [""] * len(self.jobs)
        reasons: list[str | None] = [None] * len(self.jobs)
        disconnect = asyncio.ensure_future(wait_for_disconnect(request))
        status = "error"
        try:
            while not self.finished:
                event = await self.next_event(disconnect)
                text, reason = self.on_event(event)
                parts[event.index] += text
                if reason is not None:
                    reasons[event.index] = reason
            status = "ok"
        except ClientGone:
            status = "cancelled"
            return JSONResponse(error_body("the client disconnected", type="cancelled"), status_code=499)
        except APIError as e:
            status = {504: "timeout"}.get(e.status, "error")
            raise
        finally:
            disconnect.cancel()
            self.close(status)
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r,
                        "logprobs": None} for i, (t, r) in enumerate(zip(parts, reasons))]
        else:
            choices = [{"index": i, "text": t, "finish_reason": r, "logprobs": None}
                       for i, (t, r) in enumerate(zip(parts, reasons))]
        body = {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.server.name, "choices": choices, "usage": self.usage()}
        if self.params.trace:
            body["trace"] = self.traces
        return JSONResponse(body)

    async def stream(self, include_usage: bool) -> AsyncIterator[str]:
        status = "cancelled"  # unless we get to the end: the client went away mid-stream
        try:
            if self.chat:
                yield self._sse([{"index": i, "delta": {"role": "assistant", "content": ""},
                                  "finish_reason": None, "logprobs": None} for i in range(len(self.jobs))])
            try:
                while not self.finished:
                    event = await self.next_event()
                    text, reason = self.on_event(event)
                    if event.trace is not None:
                        yield self._sse([], trace=event.trace)
                        continue
                    if event.tokens is not None and not text and self.texts[event.index].stopped:
                        continue  # tokens after a stop string are never shown
                    yield self._sse([self._choice(event.index, text, reason, event.tokens)])
            except APIError as e:
                status = "timeout" if e.status == 504 else "error"
                yield f"data: {json.dumps(e.body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            if include_usage:
                yield self._sse([], usage=self.usage())
            yield "data: [DONE]\n\n"
            status = "ok"
        finally:
            self.close(status)

    def _choice(self, index: int, text: str, reason: str | None, tokens: list[int] | None) -> dict:
        choice = {"index": index, "finish_reason": reason, "logprobs": None, "token_ids": tokens or []}
        if self.chat:
            choice["delta"] = {"content": text} if text or reason is None else {}
        else:
            choice["text"] = text
        return choice

    def _sse(self, choices: list[dict], usage: dict | None = None, trace: dict | None = None) -> str:
        """One SSE message. A trace event is a chunk of its own SSE type (``event: trace``) whose
        ``choices`` are empty, as in the usage chunk, so OpenAI clients pass over it."""
        chunk = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                 "created": self.created, "model": self.server.name, "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        if trace is not None:
            chunk["trace"] = trace
            return f"event: trace\ndata: {json.dumps(chunk)}\n\n"
        return f"data: {json.dumps(chunk)}\n\n"

    def usage(self) -> dict:
        results = [r for r in self.results if r is not None]
        completion = sum(len(r.tokens) for r in results)
        nfe = sum(r.nfe for r in results)
        cycles = sum(r.cycles for r in results)
        prompt = sum(len(p) for p in self.prompts)
        modes = sorted({r.mode for r in results})
        reasons = sorted({r.auto_reason for r in results if r.auto_reason})
        return {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "mode": "+".join(modes), "requested_mode": self.params.mode,
            "auto_reason": "+".join(reasons) or None, "nfe": nfe,
            "tpf": round(completion / nfe, 4) if nfe else 0.0,
            # tokens per decode cycle; the first token comes from prefill, not from a cycle
            "acceptance_length": round(sum(max(0, len(r.tokens) - 1) for r in results) / cycles, 4)
            if cycles else 0.0,
            "batch_size": max((r.batch_size for r in results), default=0),
            "image_tokens": self.image_tokens,
            "prefill_s": round(max((r.prefill_s for r in results), default=0.0), 6),
            "decode_s": round(max((r.decode_s for r in results), default=0.0), 6),
        }

    def close(self, status: str) -> None:
        """Cancel what still runs (client gone, error) and record the request once."""
        for job, result in zip(self.jobs, self.results):
            if result is None:
                job.cancel()
        if self.recorded:
            return
        self.recorded = True
        m = self.server.metrics
        modes = {job.mode for job in self.jobs if job.mode}
        mode = modes.pop() if len(modes) == 1 else (self.params.mode if not modes else "mixed")
        m.requests.labels(mode, status).inc()
        if status == "ok":
            m.latency.labels(mode).observe(time.monotonic() - min(job.created for job in self.jobs))
            for r in self.results:
                if r is not None and r.nfe:
                    m.tpf.labels(r.mode).observe(len(r.tokens) / r.nfe)
                    if r.cycles:
                        m.acceptance.labels(r.mode).observe((len(r.tokens) - 1) / r.cycles)


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

