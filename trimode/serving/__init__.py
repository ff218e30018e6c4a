"""OpenAI-compatible serving of tri-mode models (``trimode serve``).

Modules:

- :mod:`.config`: ``ServerConfig`` / ``AutoModeConfig`` (pydantic), typed and validated; the flags of
  ``trimode serve`` are generated from them.
- :mod:`.protocol`: request bodies (strict, unknown fields refused) and OpenAI-style errors.
- :mod:`.scheduler`: bounded queue, dynamic batching, the one worker thread that runs the model.
- :mod:`.hooks`: ``ObservedStrategy``, streaming + cancellation around the unchanged generation loop.
- :mod:`.auto`: the ``auto`` mode policy (speculate at low load and good acceptance, else AR).
- :mod:`.text`: incremental detokenisation and stop strings.
- :mod:`.metrics`: Prometheus metrics.
- :mod:`.server`: ``Server``, what the endpoints share; request bodies -> checked jobs.
- :mod:`.call`: one request in flight; worker events -> a JSON response or an SSE stream.
- :mod:`.app`: the FastAPI app (``create_app``: routes, error handlers, lifespan) and ``serve``.
- :mod:`.playground`: the web playground's files (``static/``, shown at ``/``) and a recorded trace
  as a self-contained page.

``create_app`` and ``serve`` need the serving extras (fastapi, uvicorn,
prometheus-client); they are imported on first use, so the configuration
(which needs pydantic only) and ``trimode --help`` work without them.
"""

from .config import AutoModeConfig, ServerConfig

__all__ = ["create_app", "serve", "ServerConfig", "AutoModeConfig"]


def __getattr__(name: str):
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
