"""The FastAPI app: OpenAI-compatible endpoints over the batching scheduler.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (the
model's chat template), ``GET /v1/models``, ``GET /health``, ``GET /metrics``.

Design choices:

- Request handlers only validate, tokenize, queue jobs and turn committed
  tokens into text; the model runs on the scheduler's one worker thread.
  Worker events reach the handler through an ``asyncio.Queue`` fed with
  ``loop.call_soon_threadsafe``.
- ``usage`` holds the OpenAI token counts plus ``mode`` (the mode that ran),
  ``requested_mode``, ``auto_reason``, ``nfe`` and ``tpf`` (forwards this
  request took part in, and its tokens per forward, even inside a batch),
  ``acceptance_length`` and ``batch_size``.
- Streaming sends one chunk per decode cycle of a choice (a speculative cycle
  is one multi-token chunk, with its ``token_ids``), then the finish reason,
  the usage chunk if ``stream_options.include_usage``, and ``data: [DONE]``.
- Every failure a client can cause is an OpenAI-style error body naming the
  field: 400 for bad input, 404 for an unknown model, 429 + ``Retry-After``
  when the queue is full, 504 when the request outlives ``request_timeout``.
- A client that disconnects (streaming or not) cancels its jobs; the worker
  drops them at its next cycle, so the slot is free at once.
- ``temperature`` defaults to 0 (greedy): the lossless modes then reproduce AR
  exactly and every response is reproducible. Seeded sampling (T > 0 with
  ``seed``) runs unbatched and is reproducible too; unseeded sampling rows
  share the server's generator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..loading import Loaded, load
from .config import REQUEST_MODES, ServerConfig
from .metrics import CONTENT_TYPE, Metrics
from .protocol import (APIError, ChatCompletionRequest, CompletionRequest, ErrorResponse, error_body,
                       unsupported, validation_error)
from .scheduler import GenerationParams, Job, JobEvent, JobResult, Overloaded, Scheduler
from .text import TextAssembler

log = logging.getLogger("trimode.serving")

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
MIN_TEMPERATURE = 1e-5  # below: greedy
MIN_TOP_P = 1e-6  # below: float32 rounds top_p to 0 and the engine would drop every token
ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (400, "Invalid request (the error names the field)"), (404, "Unknown model"),
    (429, "Queue full; see Retry-After"), (504, "Request timed out"))}


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


class Server:
    """Everything the endpoints share: model, tokenizer, limits, scheduler, metrics."""

    def __init__(self, config: ServerConfig, loaded: Loaded):
        if loaded.tokenizer is None:
            raise ValueError(f"{loaded.path} has no tokenizer; the server needs one to encode prompts")
        self.config = config
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.has_drafter = loaded.has_drafter
        self.name = config.served_model_name or loaded.name
        mc = loaded.model.config
        self.context = mc.max_position_embeddings
        self.vocab_size = mc.vocab_size
        self.block_length = config.block_length or mc.block_size
        self.threshold = mc.threshold if config.threshold == "model" else config.threshold
        self.created = int(time.time())
        self.metrics = Metrics()
        if config.auto.acceptance_floor is None and self.block_length > 1:
            # auto's floor: where speculation breaks even with AR on this machine (a forward of
            # B tokens costs more than one of 1 token on a CPU, about the same on a GPU)
            from ..evaluation.autotune import measured_break_even

            floor = measured_break_even(self.model, config.auto.spec_mode, self.block_length)
            config = self.config = replace(config, auto=replace(config.auto, acceptance_floor=round(floor, 2)))
        self.scheduler = Scheduler(self.model, config, self.metrics)

    # ------------------------------------------------------------ prompts
    def completion_prompts(self, body: CompletionRequest) -> list[list[int]]:
        prompt = body.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        rows = []
        for i, p in enumerate(prompt):
            param = "prompt" if len(prompt) == 1 else f"prompt.{i}"
            ids = self.tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise APIError(400, f"{param}: token id {bad[0]} is outside [0, {self.vocab_size})", param)
            if not ids:
                raise APIError(400, f"{param}: the prompt is empty; give at least one token", param)
            rows.append(ids)
        if len(rows) > self.config.max_batch_size:
            raise APIError(400, f"prompt: {len(rows)} prompts in one request; at most "
                                f"{self.config.max_batch_size} (max_batch_size)", "prompt")
        return rows

    def chat_prompt(self, body: ChatCompletionRequest) -> list[list[int]]:
        messages = []
        for m in body.messages:
            content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
            role = "system" if m.role == "developer" else m.role  # OpenAI's newer name for system
            messages.append({"role": role, "content": content})
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # a template that refuses the conversation: the client's input, not a crash
            raise APIError(400, f"messages: the chat template rejected the conversation: {e}", "messages")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [ids]

    # ------------------------------------------------------------ params
    def params(self, body, prompts: list[list[int]], prompt_param: str) -> GenerationParams:
        unsupported(body)
        if body.model is not None and body.model != self.name:
            raise APIError(404, f"model={body.model!r} does not exist; this server serves {self.name!r}",
                           "model", code="model_not_found")
        block_length = body.block_length if body.block_length is not None else self.block_length
        if block_length > self.config.max_block_length:
            raise APIError(400, f"block_length={block_length} is too large; allowed: 1 to "
                                f"{self.config.max_block_length}", "block_length")
        threshold = body.threshold if "threshold" in body.model_fields_set else self.threshold
        max_tokens, param = body.max_tokens, "max_tokens"
        if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
            max_tokens, param = body.max_completion_tokens, "max_completion_tokens"
        if max_tokens is not None and max_tokens > self.config.max_tokens_limit:
            raise APIError(400, f"{param}={max_tokens} is too large; allowed: 1 to {self.config.max_tokens_limit}",
                           param)
        longest = max(len(p) for p in prompts)
        room = self.context - longest
        if room < 1:
            raise APIError(400, f"{prompt_param}: the prompt is {longest} tokens; the model's context holds "
                                f"{self.context} tokens including at least 1 generated", prompt_param)
        if max_tokens is None:
            max_tokens = min(self.config.default_max_tokens, room)
        elif max_tokens > room:
            raise APIError(400, f"{param}={max_tokens} is too large for this prompt: {longest} prompt tokens + "
                                f"{max_tokens} exceed the context of {self.context}; allowed: 1 to {room}", param)
        # Tiny positive temperature / top_p are their limits (greedy; keep the top token only): taken
        # literally they overflow the logits or round to 0 in float32 and leave nothing to sample from.
        temperature = float(body.temperature or 0.0)
        temperature = 0.0 if temperature < MIN_TEMPERATURE else temperature
        top_p = None if body.top_p is None else max(body.top_p, MIN_TOP_P)
        return GenerationParams(
            mode=body.mode or self.config.mode, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            top_k=body.top_k or None, block_length=block_length, threshold=threshold, seed=body.seed)

    # ------------------------------------------------------------ generation
    async def generate(self, body, request: Request, prompts: list[list[int]], params: GenerationParams,
                       chat: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[JobEvent] = asyncio.Queue()

        def sink(event: JobEvent) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        jobs = [Job(ids, params, sink, self.config.request_timeout, index=i) for i, ids in enumerate(prompts)]
        try:
            self.scheduler.submit(jobs)
        except Overloaded as e:
            raise APIError(429, str(e), None, type="rate_limit_error", code="overloaded",
                           headers={"Retry-After": str(e.retry_after)})
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        texts = [TextAssembler(self.tokenizer, stops) for _ in jobs]
        call = Call(self, jobs, events, texts, params, chat, prompts)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(call.stream(include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await call.complete(request)


class Call:
    """One HTTP generation request in flight: its jobs, their events and text."""

    def __init__(self, server: Server, jobs: list[Job], events: asyncio.Queue, texts: list[TextAssembler],
                 params: GenerationParams, chat: bool, prompts: list[list[int]]):
        self.server, self.jobs, self.events, self.texts = server, jobs, events, texts
        self.params, self.chat, self.prompts = params, chat, prompts
        self.results: list[JobResult | None] = [None] * len(jobs)
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.deadline = min(job.deadline for job in jobs)
        self.recorded = False

    @property
    def finished(self) -> bool:
        return all(r is not None for r in self.results)

    def on_event(self, event: JobEvent) -> tuple[str, str | None]:
        """Apply one worker event; returns (new text, finish reason or None)."""
        i = event.index
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
        disconnect = asyncio.ensure_future(_wait_for_disconnect(request))
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
        return JSONResponse({"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                             "created": self.created, "model": self.server.name, "choices": choices,
                             "usage": self.usage()})

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

    def _sse(self, choices: list[dict], usage: dict | None = None) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                 "created": self.created, "model": self.server.name, "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
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


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(config: ServerConfig, loaded: Loaded | None = None) -> FastAPI:
    """Build the app; the decoding worker starts and stops with the app's lifespan."""
    config.validate()
    server = Server(config, loaded if loaded is not None else load(config.model))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.scheduler.start()
        log.info("serving %s (default mode %s, drafter %s, auto acceptance floor %.2f)", server.name, config.mode,
                 "on" if server.has_drafter else "off", server.scheduler.policy.acceptance_floor)
        try:
            yield
        finally:
            server.scheduler.stop()

    from trimode import __version__

    app = FastAPI(title="trimode", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible server for tri-mode models (AR, block diffusion, "
                              "self-speculation) with a per-request `mode`.")
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        if request.url.path in GENERATION_PATHS and exc.status in (400, 404):
            server.metrics.requests.labels("none", "invalid").inc()
        if exc.status == 429:
            server.metrics.requests.labels(getattr(request.state, "mode", "none"), "overloaded").inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return await api_error(request, validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {exc.detail}", type=kind),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):  # a bug: answer in the API's shape, keep serving
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", type="server_error"),
                            status_code=500)

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(body: CompletionRequest, request: Request):
        prompts = server.completion_prompts(body)
        params = server.params(body, prompts, "prompt")
        request.state.mode = params.mode
        return await server.generate(body, request, prompts, params, chat=False)

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        prompts = server.chat_prompt(body)
        params = server.params(body, prompts, "messages")
        request.state.mode = params.mode
        return await server.generate(body, request, prompts, params, chat=True)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(server)]}

    @app.get("/v1/models/{model_id}", responses={404: ERROR_RESPONSES[404]})
    async def model(model_id: str):
        if model_id != server.name:
            raise APIError(404, f"model={model_id!r} does not exist; this server serves {server.name!r}",
                           "model", code="model_not_found")
        return _model_card(server)

    @app.get("/health")
    async def health():
        ok = server.scheduler.alive
        return JSONResponse({"status": "ok" if ok else "unavailable", "model": server.name,
                             "default_mode": config.mode, "queue_depth": server.scheduler.queue_depth,
                             "running": server.scheduler.running}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    return app


def _model_card(server: Server) -> dict:
    return {"id": server.name, "object": "model", "created": server.created, "owned_by": "trimode",
            "context_length": server.context, "default_mode": server.config.mode,
            "modes": list(REQUEST_MODES),
            "has_drafter": server.has_drafter}


def serve(config: ServerConfig, loaded: Loaded | None = None) -> None:
    """Run the server until interrupted (what ``trimode serve`` calls)."""
    import uvicorn

    app = create_app(config, loaded)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level)
