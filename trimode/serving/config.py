"""Typed configuration of the OpenAI-compatible server (``trimode serve``).

:class:`ServerConfig` and :class:`AutoModeConfig` are pydantic models, and the one
declaration of every setting: its type, default, bounds, choices and description.
``trimode serve`` generates its flags from these fields (the descriptions are the
flags' help), so a setting is added or changed here only.

Values are checked when a config is built and when a field is assigned, strictly
(``"8"`` is not an integer, ``True`` is not a number). A bad value raises
:class:`~trimode.typed_config.ConfigError`, a ``ValueError`` whose one-line message names the
field, the value and what is allowed (worded by :mod:`trimode.typed_config`), so a bad setting
never surfaces deep inside the server.

This module imports only pydantic: the command line builds its parser from it
without importing torch or the server.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal, Optional, Union

from pydantic import ConfigDict, Field, model_validator

from ..generation.names import MODE_NAMES as SERVED_MODES
from ..generation.names import SPECULATIVE_MODES
from ..typed_config import CheckedConfig
from ..typed_config import ConfigError as ConfigError  # re-exported: what a bad setting raises

REQUEST_MODES = ("auto",) + SERVED_MODES
"""What a request (or ``--mode``) may ask for: a mode, or ``auto`` (chosen per batch by load and acceptance)."""
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's log levels."""


class _ServingConfig(CheckedConfig):
    """Base of the server's configs: checked on assignment too (a refused assignment changes nothing)."""

    model_config = ConfigDict(validate_assignment=True)


class AutoModeConfig(_ServingConfig):
    """How ``mode: "auto"`` picks a mode for each batch (see :mod:`trimode.serving.auto`)."""

    spec_mode: Literal[SPECULATIVE_MODES] = Field(  # type: ignore[valid-type]
        "linear-spec", description="speculative mode auto uses")
    # Batched AR amortises each forward over many rows, which speculation cannot do as well.
    max_load_for_spec: int = Field(
        1, ge=0, description="speculate only while at most this many requests wait to be scheduled (the batch "
                             "being formed included); deeper queues run AR")
    # The first request of a burst sees a short queue; a speculative batch started then would hold the
    # rest of the burst behind it (batches run to completion), so auto remembers recent load.
    load_cooldown: float = Field(
        2.0, ge=0, description="seconds auto stays on AR after the queue was too deep to speculate")
    # The break-even is one cycle's forward costs over one AR forward's, with this machine's costs
    # (trimode.generation.autotune.measured_break_even, called when the server starts).
    acceptance_floor: Optional[float] = Field(
        None, ge=0, description="fall back to AR when the rolling mean acceptance length (tokens per verification "
                                "cycle, bonus token included) is below this (default: measured when the server "
                                "starts: where the speculative mode breaks even with AR at the server's block "
                                "length on this machine; about 2 for linear-spec where a block's forward costs what "
                                "one token's does, more where it costs more)")
    window: int = Field(64, ge=1, description="verification cycles kept in the rolling acceptance")
    min_samples: int = Field(
        8, ge=1, description="cycles needed before the rolling acceptance is trusted (before that, auto speculates)")
    # Without probes, one bad stretch would pin auto to AR forever.
    probe_every: int = Field(
        16, ge=1, description="while below the floor, every Nth auto batch still speculates, so the rolling "
                              "acceptance keeps being measured; the interval doubles while acceptance stays low")
    # With the default cap, a model whose drafts are never accepted spends 1 batch in 256 probing.
    max_probe_every: int = Field(256, ge=1, description="the longest probe interval the doubling reaches")

    @model_validator(mode="after")
    def _cross_field(self) -> "AutoModeConfig":
        if self.min_samples > self.window:
            raise ValueError(f"min_samples={self.min_samples} must be <= window={self.window}")
        if self.max_probe_every < self.probe_every:
            raise ValueError(f"max_probe_every={self.max_probe_every} must be >= probe_every={self.probe_every}")
        return self


Threshold = Union[Annotated[float, Field(gt=0, le=1)], Literal["model"], None]


class ServerConfig(_ServingConfig):
    """Everything ``trimode serve`` can be told; the command's flags are generated from these fields."""

    model: Optional[str] = Field(
        None, description="model directory (default: the shipped model, trimode.loading.default_model_path)")
    mode: Literal[REQUEST_MODES] = Field(  # type: ignore[valid-type]
        "auto", description="default mode of requests that do not name one")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on; 0 = any free port")
    served_model_name: Optional[str] = Field(
        None, description="the model id clients send and /v1/models lists (default: the model directory's name)")
    max_batch_size: int = Field(16, ge=1, description="most requests decoded together in one batched call")
    max_queue: int = Field(
        64, ge=1, description="most requests waiting to be scheduled; one more is answered 429 with Retry-After")
    batch_wait: float = Field(
        0.0, ge=0, description="seconds the worker waits, once it has work, for more requests to join the batch; "
                               "it starts earlier when max_batch_size are waiting")
    # Without it a closed loop of clients splits into one tiny batch and one large one.
    refill_wait: float = Field(
        0.01, ge=0, description="after a batch of n rows, wait for its n clients' next requests, besides those "
                                "already waiting, while they keep arriving (this quiet gap in seconds; at most 10 "
                                "gaps), so returning clients share one batch")
    request_timeout: float = Field(
        300.0, gt=0, description="seconds a request may take from arrival to its last token, queueing included")
    max_tokens_limit: int = Field(
        2048, ge=1, description="largest max_tokens accepted; the model's context bounds it further")
    default_max_tokens: int = Field(
        256, ge=1, description="max_tokens of requests that omit it, capped by what the context leaves")
    block_length: Optional[int] = Field(
        None, ge=1, description="default block length of diffusion and speculation (default: the model config's "
                                "block_size)")
    # Quadratic speculation runs B*(B+1) query tokens per forward.
    max_block_length: int = Field(64, ge=1, description="largest block_length a request may ask for")
    threshold: Threshold = Field(
        "model", description="default diffusion threshold: a number in (0, 1], 'model' (the model config's "
                             "threshold) or none (the fixed schedule: an equal share of the block per step)")
    # Images (a vision-language model's chat requests): what one request may send, checked before
    # any pixel is decoded (trimode.image_processing reads the byte size first, the pixel count
    # from the header), so a hostile image costs neither memory nor a decompression bomb.
    max_images: int = Field(8, ge=1, description="most images in one chat request (a vision-language model)")
    max_image_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="largest encoded image accepted, in bytes (after base64 decoding)")
    max_image_pixels: int = Field(
        25_000_000, ge=1, description="largest image accepted, in pixels (width x height, read from its header "
                                      "before decoding); larger images are refused, smaller ones are resized to "
                                      "the model's max_image_size")
    num_threads: Optional[int] = Field(
        None, ge=1, description="torch threads of the decoding worker (default: all cores; `trimode serve` "
                                "passes its --threads, whose default depends on the model's size)")
    seed: int = Field(0, description="seed of the server's sampling generator, for requests without a seed")
    log_level: Literal[LOG_LEVELS] = Field("info", description="log level of the HTTP server")  # type: ignore
    auto: AutoModeConfig = Field(default_factory=AutoModeConfig, title="auto mode",
                                 description="how `mode: auto` chooses between self-speculation and AR")

    @model_validator(mode="after")
    def _cross_field(self) -> "ServerConfig":
        if self.block_length is not None and self.block_length > self.max_block_length:
            raise ValueError(f"block_length={self.block_length} must be <= max_block_length={self.max_block_length}")
        return self

    @property
    def threads(self) -> int:
        return self.num_threads or os.cpu_count() or 1
