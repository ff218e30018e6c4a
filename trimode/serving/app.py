"""The FastAPI app: OpenAI-compatible endpoints over the batching scheduler.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (the
model's chat template; a vision-language model also takes OpenAI ``image_url``
parts with ``data:`` URLs, see :mod:`.images`), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health``, ``GET /metrics``.

The app is assembled from small pieces: :func:`_lifespan` starts and stops the
decoding worker, :func:`_add_error_handlers` answers every failure in the
OpenAI error shape, :func:`_add_routes` declares the endpoints. What the
endpoints share lives in :class:`~trimode.serving.server.Server` (request
checks, job submission); one request in flight, its JSON response or SSE
stream, in :class:`~trimode.serving.call.Call`.

Every failure a client can cause is an OpenAI-style error body naming the
field: 400 for bad input, 404 for an unknown model, 429 + ``Retry-After`` when
the queue is full, 504 when the request outlives ``request_timeout``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..loading import Loaded, load
from .config import REQUEST_MODES, ServerConfig
from .metrics import CONTENT_TYPE
from .playground import STATIC
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, ErrorResponse, error_body, validation_error
from .server import Server

log = logging.getLogger("trimode.serving")

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (400, "Invalid request (the error names the field)"), (404, "Unknown model"),
    (429, "Queue full; see Retry-After"), (504, "Request timed out"))}


def create_app(config: ServerConfig, loaded: Loaded | None = None) -> FastAPI:
    """Build the app; the decoding worker starts and stops with the app's lifespan."""
    config.validate()
    server = Server(config, loaded if loaded is not None else load(config.model))

    from trimode import __version__

    app = FastAPI(title="trimode", version=__version__, lifespan=_lifespan(server),
                  description="OpenAI-compatible server for tri-mode models (AR, block diffusion, "
                              "self-speculation) with a per-request `mode`.")
    app.state.server = server
    _add_error_handlers(app, server)
    _add_routes(app, server)
    return app


def _lifespan(server: Server):
    """The app's lifespan: the scheduler's worker thread runs while the app does."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.scheduler.start()
        log.info("serving %s (default mode %s, drafter %s, auto acceptance floor %.2f)", server.name,
                 server.config.mode, "on" if server.has_drafter else "off", server.scheduler.policy.acceptance_floor)
        try:
            yield
        finally:
            server.scheduler.stop()

    return lifespan


def _add_error_handlers(app: FastAPI, server: Server) -> None:
    """Every error in the OpenAI shape ``{"error": {message, type, param, code}}``; invalid and
    overloaded generation requests are counted in the metrics."""

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


def _add_routes(app: FastAPI, server: Server) -> None:
    """The endpoints (their function names are the OpenAPI operation ids' stems)."""

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(body: CompletionRequest, request: Request):
        prompts = server.completion_prompts(body)
        params = server.params(body, prompts, "prompt")
        request.state.mode = params.mode
        return await server.generate(body, request, prompts, params, chat=False)

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        prompts, images = await server.chat_prompt(body)
        params = server.params(body, prompts, "messages")
        request.state.mode = params.mode
        return await server.generate(body, request, prompts, params, chat=True, images=images)

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
                             "default_mode": server.config.mode, "queue_depth": server.scheduler.queue_depth,
                             "running": server.scheduler.running}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _model_card(server: Server) -> dict:
    return {"id": server.name, "object": "model", "created": server.created, "owned_by": "trimode",
            "context_length": server.context, "default_mode": server.config.mode,
            "modes": list(REQUEST_MODES), "has_drafter": server.has_drafter,
            "block_length": server.block_length, "threshold": server.threshold,
            "chat": bool(getattr(server.tokenizer, "chat_template", None)),
            "vision": server.images.problem is None}


def serve(config: ServerConfig, loaded: Loaded | None = None) -> None:
    """Run the server until interrupted (what ``trimode serve`` calls)."""
    import uvicorn

    app = create_app(config, loaded)
    if config.port:  # port 0: uvicorn picks one and says which
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
        print(f"trimode: the playground will be at http://{host}:{config.port}/ (the API under /v1)", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level)
