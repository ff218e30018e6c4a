"""OpenAI-compatible serving of tri-mode models (``trimode serve``).

Modules:

- :mod:`.config`: ``ServerConfig`` / ``AutoModeConfig``, typed and validated.
- :mod:`.protocol`: request bodies (strict, unknown fields refused) and OpenAI-style errors.
- :mod:`.scheduler`: bounded queue, dynamic batching, the one worker thread that runs the model.
- :mod:`.hooks`: ``ObservedStrategy``, streaming + cancellation around the unchanged generation loop.
- :mod:`.auto`: the ``auto`` mode policy (speculate at low load and good acceptance, else AR).
- :mod:`.text`: incremental detokenisation and stop strings.
- :mod:`.metrics`: Prometheus metrics.
- :mod:`.app`: the FastAPI app (``create_app``) and ``serve``.

Importing this package needs the serving extras (fastapi, uvicorn, prometheus-client).
"""

from .app import create_app, serve
from .config import AutoModeConfig, ServerConfig

__all__ = ["create_app", "serve", "ServerConfig", "AutoModeConfig"]
