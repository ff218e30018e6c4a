"""Fixtures of the serving tests: tiny model directories and live servers on 127.0.0.1.

Three model directories are built once per session, all loaded through
``trimode.loading.load`` exactly as ``trimode serve`` does:

- ``tiny_model_dir``: a random tiny model (drafts are mostly rejected, so
  ``auto`` sees low acceptance);
- ``accepting_model_dir``: the same model edited so that every position
  predicts the same token: drafts are always accepted, a speculative cycle
  commits a whole block (the "accept-all" stub, through real weights);
- ``vlm_model_dir``: a random tiny vision-language model in the published VLM
  layout with a LoRA drafter (``vlm_model_dir.py``), served by ``vlm_server``.

``start_server`` runs uvicorn in a background thread of the test process on
a socket bound to a free port of 127.0.0.1, so tests can also reach the app's
scheduler (e.g. pause it to make batching or overload deterministic). Every
server gets its own model instance: the worker threads of two servers never
share modules.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny_model_dir import build_tiny_model_dir
from vlm_model_dir import VLM_LIMITS, build_vlm_dir

from trimode.loading import load
from trimode.serving import ServerConfig, create_app
from trimode.serving.server import Server

CONTEXT = 2048  # long enough for the disconnect test to stream for seconds


@dataclass
class LiveServer:
    url: str
    server: Server  # the app's shared state (scheduler, metrics, tokenizer)
    _uvicorn: object
    _thread: threading.Thread

    @property
    def name(self) -> str:
        return self.server.name

    def stop(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(30)
        assert not self._thread.is_alive(), "the server did not stop within 30 s"

    def metric(self, name: str, **labels) -> float:
        """Current value of one sample of the server's Prometheus registry (0 if absent)."""
        value = self.server.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def start_server(model_dir: Path, **overrides) -> LiveServer:
    """A live server on a free port of 127.0.0.1. One torch thread: the tiny model gains nothing from
    more, and OpenMP threads that spin on cores other processes hold slow every forward."""
    import uvicorn

    settings = dict(model=str(model_dir), served_model_name="tiny", num_threads=1, max_tokens_limit=1024,
                    default_max_tokens=16, request_timeout=60.0, log_level="warning")
    settings.update(overrides)
    config = ServerConfig(**settings)
    app = create_app(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start within 30 s"
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", app.state.server, server, thread)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny", context=CONTEXT)


@pytest.fixture(scope="session")
def accepting_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """Every position gets the same input vector, so every position (causal or masked) has the same
    hidden state and the same argmax: token ``a``. Drafts always equal the AR token."""
    loaded = load(tiny_model_dir)
    model, tok = loaded.model.pack_weights(False), loaded.tokenizer  # dense weights, to edit in place
    target = tok("a", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        emb = model.encoder.embed_tokens.weight
        emb.copy_(emb[7].expand_as(emb))
        logits = model(torch.tensor([[7, 8]])).logits[0, -1]
        head = model.diffusion_head.weight
        head[target] = 2 * head[int(logits.argmax())]  # its logit doubles the (positive) max: the new argmax
        assert int(model(torch.tensor([[9, 10, 11]])).logits[0, -1].argmax()) == target
    path = tmp_path_factory.mktemp("models") / "accepting"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def server(tiny_model_dir):
    """The shared server: default mode auto, small limits so every request is quick. No load
    cooldown: tests share it one after another, and a concurrency test must not change which
    rule a later auto test sees (the cooldown has its own unit test)."""
    from trimode.serving.config import AutoModeConfig

    live = start_server(tiny_model_dir, auto=AutoModeConfig(load_cooldown=0.0))
    yield live
    live.stop()


@pytest.fixture
def fixed_floor_server(tiny_model_dir):
    """A server whose auto acceptance floor is configured (3.25), not measured."""
    from trimode.serving.config import AutoModeConfig

    live = start_server(tiny_model_dir, auto=AutoModeConfig(acceptance_floor=3.25))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def accepting_server(accepting_model_dir):
    live = start_server(accepting_model_dir)
    yield live
    live.stop()


@pytest.fixture
def make_server():
    """Start extra servers with their own config; all are stopped after the test."""
    started: list[LiveServer] = []

    def make(model_dir: Path, **overrides) -> LiveServer:
        live = start_server(model_dir, **overrides)
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()


@pytest.fixture(scope="session")
def vlm_model_dir(tmp_path_factory) -> Path:
    return build_vlm_dir(tmp_path_factory.mktemp("models") / "tiny-vlm", drafter=True)


@pytest.fixture(scope="session")
def vlm_server(vlm_model_dir):
    """The tiny VLM served with small image limits (VLM_LIMITS); no auto load cooldown (see ``server``)."""
    from trimode.serving.config import AutoModeConfig

    live = start_server(vlm_model_dir, served_model_name="tiny-vlm", auto=AutoModeConfig(load_cooldown=0.0),
                        **VLM_LIMITS)
    yield live
    live.stop()
