"""Typed configuration of the OpenAI-compatible server (``trimode serve``).

:class:`ServerConfig` and :class:`AutoModeConfig` are pydantic models, and the one
declaration of every setting: its type, default, bounds, choices and description.
``trimode serve`` generates its flags from these fields (the descriptions are the
flags' help), so a setting is added or changed here only.

Values are checked when a config is built and when a field is assigned, strictly
(``"8"`` is not an integer, ``True`` is not a number). A bad value raises
:class:`ConfigError`, a ``ValueError`` whose one-line message names the field, the
value and what is allowed, so a bad setting never surfaces deep inside the server.

This module imports only pydantic: the command line builds its parser from it
without importing torch or the server.
"""

from __future__ import annotations

import os
import types
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from ..generation.names import MODE_NAMES as SERVED_MODES
from ..generation.names import SPECULATIVE_MODES

REQUEST_MODES = ("auto",) + SERVED_MODES
"""What a request (or ``--mode``) may ask for: a mode, or ``auto`` (chosen per batch by load and acceptance)."""
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's log levels."""


class ConfigError(ValueError):
    """A setting that is not allowed; ``errors`` holds pydantic's structured errors."""

    def __init__(self, message: str, errors: list[dict] | None = None):
        super().__init__(message)
        self.errors = errors or []


_UNSET = object()


class CheckedConfig(BaseModel):
    """Base of the server's configs: strict, unknown fields refused, checked on assignment too,
    and every failure raised as one :class:`ConfigError` line (see :func:`describe_errors`)."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True)

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(describe_errors(type(self), e.errors()), e.errors()) from None

    def __setattr__(self, name: str, value: Any) -> None:
        before = self.__dict__.get(name, _UNSET)
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            if before is not _UNSET:  # a cross-field rule fails after pydantic stored the value: undo it
                self.__dict__[name] = before
            raise ConfigError(describe_errors(type(self), e.errors()), e.errors()) from None

    def validate(self) -> "CheckedConfig":  # type: ignore[override]  (pydantic v1's classmethod of that name)
        """Check the whole config again, nested configs included; returns ``self``.

        Building and assigning already check; this is for a config put together some other
        way (``model_construct``, ``model_copy(update=...)``)."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        for value in values.values():
            if isinstance(value, CheckedConfig):
                value.validate()
        type(self)(**values)
        return self


class AutoModeConfig(CheckedConfig):
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


class ServerConfig(CheckedConfig):
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


# ------------------------------------------------------------------------------- error messages
def describe_errors(model: type[BaseModel], errors: list[dict]) -> str:
    """pydantic's errors as one line: ``field=value must be <what the field allows>`` per bad field
    (a union's members' errors merged), or the message of a rule between fields."""
    lines: dict[str, str] = {}
    for err in errors:
        path, info = _field_at(model, err.get("loc", ()))
        if err["type"] == "extra_forbidden":
            name = ".".join(str(part) for part in err["loc"])
            key, text = name, f"{name}={_shown(err['input'])}: {model.__name__} has no such setting"
        elif err["type"] == "value_error" or info is None:  # a rule between fields (model validator)
            message = err["msg"].removeprefix("Value error, ")
            key = text = f"{path}: {message}" if path else message
        else:
            key, text = path, f"{path}={_shown(err['input'])} must be {allowed(info.annotation, info.metadata)}"
        lines.setdefault(key, text)
    return "; ".join(lines.values())


def _field_at(model: type[BaseModel], loc: tuple) -> tuple[str, FieldInfo | None]:
    """The dotted field path of an error's ``loc`` and that field. pydantic adds union members'
    tags (``"constrained-float"``, ``"literal['model']"``) after the field: not part of the path."""
    names: list[str] = []
    info = None
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not isinstance(part, str) or not isinstance(fields, dict) or part not in fields:
            break
        names.append(part)
        info = fields[part]
        current = info.annotation
    return ".".join(names), info


def allowed(annotation: Any, constraints: list | tuple = ()) -> str:
    """What a field of type ``annotation`` (with ``constraints``, annotated_types' Ge / Gt / Le / Lt)
    accepts, in words: ``an integer >= 1``, ``a number in (0, 1], 'model' or None``."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:  # a field's bounds (Optional[int] = Field(ge=1)) bind its members
        return _or([allowed(member, constraints) for member in get_args(annotation)])
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        found = [c for e in extra for c in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return allowed(inner, [*constraints, *found])
    if origin is Literal:
        choices = [repr(c) for c in get_args(annotation)]
        return choices[0] if len(choices) == 1 else "one of " + ", ".join(choices)
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        name = annotation.__name__
        return f"{'an' if name[0] in 'AEIOU' else 'a'} {name}"
    noun = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))
    return noun + _bounds(constraints)


def _bounds(constraints) -> str:
    """The ``ge`` / ``gt`` / ``le`` / ``lt`` limits among a field's constraints, in words."""
    b = {k: getattr(c, k) for c in constraints for k in ("ge", "gt", "le", "lt") if getattr(c, k, None) is not None}
    low = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    high = (b["le"], "]") if "le" in b else (b["lt"], ")") if "lt" in b else None
    if low and high:
        return f" in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f" {'<=' if high[1] == ']' else '<'} {high[0]}"
    return ""


def _or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
