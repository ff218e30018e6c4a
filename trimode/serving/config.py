"""Typed configuration of the OpenAI-compatible server (``trimode serve``).

Every field has a default that suits one CPU machine; the CLI flags map onto
these fields one to one. ``validate()`` raises ``ValueError`` naming the bad
field and what is allowed, so a bad flag never surfaces deep inside the server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..generation.names import MODE_NAMES as SERVED_MODES, SPECULATIVE_MODES

REQUEST_MODES = ("auto",) + SERVED_MODES
"""What a request (or ``--mode``) may ask for: a mode, or ``auto`` (chosen per batch by load and acceptance)."""


@dataclass
class AutoModeConfig:
    """How ``mode: "auto"`` picks a mode for each batch (see :mod:`trimode.serving.auto`)."""

    spec_mode: str = "linear-spec"
    """The self-speculative mode used while load is low and acceptance is high."""
    max_load_for_spec: int = 1
    """Speculate only while at most this many requests wait to be scheduled (the batch being formed
    included). Batched AR amortises each forward over many rows, which speculation cannot do as
    well, so deeper queues run AR."""
    load_cooldown: float = 2.0
    """Seconds after load last exceeded ``max_load_for_spec`` during which auto stays on AR. The
    first request of a burst sees a short queue; a speculative batch started then would hold the
    rest of the burst behind it (batches run to completion), so auto remembers recent load."""
    acceptance_floor: float | None = None
    """Mean tokens per verification cycle (bonus token included) below which auto falls back to AR.
    None: measured when the server starts, as the break-even of the speculative mode at the
    server's block length on this machine (one cycle's forwards over one AR forward; see
    :func:`trimode.evaluation.autotune.break_even_acceptance`). That is about 2 for linear-spec
    where a B-token forward costs what a 1-token one does (a GPU), and higher where it costs more
    (a small CPU)."""
    window: int = 64
    """Verification cycles kept in the rolling acceptance."""
    min_samples: int = 8
    """Cycles needed before the rolling acceptance is trusted (before that, auto speculates)."""
    probe_every: int = 16
    """While below the floor, the Nth auto batch still speculates so the rolling acceptance keeps
    being measured (otherwise one bad stretch would pin auto to AR forever)."""
    max_probe_every: int = 256
    """Each probe that finds acceptance still low doubles the probe interval, up to this: a model
    whose drafts are never accepted pays well under 1% for probing in the long run."""

    def validate(self) -> "AutoModeConfig":
        if self.spec_mode not in SPECULATIVE_MODES:
            raise ValueError(f"auto spec_mode={self.spec_mode!r} is not one of {list(SPECULATIVE_MODES)}")
        for name in ("window", "min_samples", "probe_every", "max_probe_every"):
            _positive_int(f"auto {name}", getattr(self, name))
        if isinstance(self.max_load_for_spec, bool) or not isinstance(self.max_load_for_spec, int) \
                or self.max_load_for_spec < 0:
            raise ValueError(f"auto max_load_for_spec={self.max_load_for_spec!r} must be an integer >= 0 "
                             "(0 = never speculate because of load)")
        if isinstance(self.load_cooldown, bool) or not isinstance(self.load_cooldown, (int, float)) \
                or not self.load_cooldown >= 0:
            raise ValueError(f"auto load_cooldown={self.load_cooldown!r} must be a number of seconds >= 0")
        if self.acceptance_floor is not None and (not isinstance(self.acceptance_floor, (int, float))
                                                  or not self.acceptance_floor >= 0):
            raise ValueError(f"auto acceptance_floor={self.acceptance_floor!r} must be a number >= 0, "
                             "or None (measured at server start)")
        if self.max_probe_every < self.probe_every:
            raise ValueError(f"auto max_probe_every={self.max_probe_every} must be >= probe_every={self.probe_every}")
        if self.min_samples > self.window:
            raise ValueError(f"auto min_samples={self.min_samples} must be <= window={self.window}")
        return self


@dataclass
class ServerConfig:
    """Everything ``trimode serve`` can be told; the CLI flags fill these fields."""

    model: str | None = None
    """Model directory; None = the shipped model (``trimode.loading.default_model_path``)."""
    mode: str = "auto"
    """Default mode of requests that do not name one."""
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    """The ``model`` id clients send and ``/v1/models`` lists; None = the model directory's name."""
    max_batch_size: int = 16
    """Most requests decoded together in one batched call."""
    max_queue: int = 64
    """Most requests waiting to be scheduled; one more is answered 429 with Retry-After."""
    batch_wait: float = 0.0
    """Seconds the worker waits, once it has work, for more requests to join the batch (it starts
    earlier if ``max_batch_size`` are waiting)."""
    refill_wait: float = 0.01
    """After a batch of n rows, the worker waits for the follow-up requests of the n clients it
    just answered: it starts when they are all in (besides the requests already waiting), when
    no request arrived for ``refill_wait`` seconds, or after 10 x ``refill_wait``. Without it a
    closed loop of clients splits into one tiny batch and one large one."""
    request_timeout: float = 300.0
    """Seconds a request may take from arrival to its last token (queueing included)."""
    max_tokens_limit: int = 2048
    """Largest ``max_tokens`` accepted (the model's context bounds it further)."""
    default_max_tokens: int = 256
    """``max_tokens`` of requests that omit it (capped by what the context leaves)."""
    block_length: int | None = None
    """Default block length of diffusion / speculation; None = the model config's ``block_size``."""
    max_block_length: int = 64
    """Largest per-request ``block_length`` (quadratic speculation runs B*(B+1) query tokens)."""
    threshold: float | str | None = "model"
    """Default diffusion threshold in (0, 1]; ``"model"`` = the model config's ``threshold``;
    None = the fixed schedule (an equal share of the block per step)."""
    num_threads: int | None = None
    """torch threads of the decoding worker; None = all cores (``trimode serve`` passes its
    ``--threads``, whose default depends on the model's size)."""
    seed: int = 0
    """Seed of the server's sampling generator (requests without a ``seed``)."""
    log_level: str = "info"
    auto: AutoModeConfig = field(default_factory=AutoModeConfig)

    def validate(self) -> "ServerConfig":
        if self.mode not in REQUEST_MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {list(REQUEST_MODES)}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port!r} must be an integer in [0, 65535] (0 = any free port)")
        for name in ("max_batch_size", "max_queue", "max_tokens_limit", "default_max_tokens",
                     "max_block_length"):
            _positive_int(name, getattr(self, name))
        if self.block_length is not None:
            _positive_int("block_length", self.block_length)
            if self.block_length > self.max_block_length:
                raise ValueError(f"block_length={self.block_length} must be <= max_block_length="
                                 f"{self.max_block_length}")
        if self.num_threads is not None:
            _positive_int("num_threads", self.num_threads)
        for name in ("batch_wait", "refill_wait", "request_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}={value!r} must be a number of seconds >= 0")
        if self.request_timeout == 0:
            raise ValueError("request_timeout=0 would time out every request: give a positive number of seconds")
        if self.threshold not in (None, "model") and (isinstance(self.threshold, (bool, str))
                                                      or not 0 < self.threshold <= 1):
            raise ValueError(f"threshold={self.threshold!r} must be in (0, 1], 'model' (the model config's) "
                             "or None (fixed schedule)")
        if self.log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError(f"log_level={self.log_level!r} is not one of critical, error, warning, info, "
                             "debug, trace")
        self.auto.validate()
        return self

    @property
    def threads(self) -> int:
        return self.num_threads or os.cpu_count() or 1


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
