"""Per-forward trace events of the generation loop: what each forward did, for people to look at.

Opt in with ``trace=`` on any decoder (a callback, or a :class:`Trace` to collect into); the
loop then emits one :class:`TraceEvent` per model forward. Off (the default), the loop pays one
``is None`` test per forward and per cycle, nothing else.

Schema (every field plain JSON: ``dataclasses.asdict(event)`` or :meth:`TraceEvent.to_dict`):

``TraceEvent``
    ``mode``: the decoder; ``index``: forward number in this call, from 0; ``kind``: what the
    forward was (:data:`KINDS`); ``tokens``: new tokens emitted so far, all rows, this event's
    included; ``nfe``: forwards so far, this one included; ``elapsed_s``: seconds since the call
    started, when the event was complete (the forward and what the decoder did with its
    results: acceptance, emission); ``rows``: one :class:`RowTrace` per row that
    took part (finished rows are left out).

``RowTrace``
    ``row``: the row's index in the batch. ``emitted``: the tokens appended to the row's output
    by this event, in order (concatenated over a row's events they are its output);
    ``start``: the output position of ``emitted[0]``. ``committed``: for a denoising step, the
    block positions it unmasked, as ``[output position, token, confidence]`` (they are emitted
    later, when the block ends); ``masks_left``: masks left in the row's block after the step.
    For speculation: ``drafted`` (the draft tokens checked by this forward), ``accepted`` (how
    many of them the AR pathway kept), ``rejected`` (the drafts after the accepted prefix,
    discarded) and ``bonus`` (the AR pathway's own token after the accepted prefix).

Kinds: ``prefill`` (the prompt, and the first token), ``ar`` (one AR step), ``denoise`` (a
diffusion step over a block), ``write`` (a finished diffusion block written to the cache, its
next token sampled), ``draft`` (linear-spec's drafting peek), ``verify`` (linear-spec's causal
check) and ``draft+verify`` (quadratic-spec's fused forward, which also drafts the next cycle).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

KINDS = ("prefill", "ar", "denoise", "write", "draft", "verify", "draft+verify")


@dataclass
class RowTrace:
    row: int
    emitted: list[int] = field(default_factory=list)
    start: int = 0
    committed: list[list] | None = None  # [[output position, token, confidence], ...]
    masks_left: int | None = None
    drafted: list[int] | None = None
    accepted: int | None = None
    rejected: list[int] | None = None
    bonus: int | None = None


@dataclass
class TraceEvent:
    mode: str
    index: int
    kind: str
    tokens: int = 0
    nfe: int = 0
    elapsed_s: float = 0.0
    rows: list[RowTrace] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self, b: int) -> RowTrace:
        """This event's entry for batch row ``b`` (added if absent)."""
        for r in self.rows:
            if r.row == b:
                return r
        entry = RowTrace(b)
        self.rows.append(entry)
        return entry


def row_view(event: TraceEvent, entry: RowTrace, index: int | None = None) -> dict:
    """One forward as one row saw it (what ``trimode serve`` streams per request, and what the
    playground draws): the batch's other rows left out, ``row.row`` set to ``index`` (a request's
    choice index; default: the batch row), ``batch_tokens`` / ``batch_rows`` about the whole batch."""
    row = asdict(entry)
    if index is not None:
        row["row"] = index
    return {"mode": event.mode, "index": event.index, "kind": event.kind, "nfe": event.nfe,
            "elapsed_s": event.elapsed_s, "batch_tokens": event.tokens, "batch_rows": len(event.rows), "row": row}


def token_texts(row: dict, decode: Callable[[list[int]], str]) -> dict[str, str]:
    """The text of every token a :func:`row_view` row names, by id, from ``decode`` (a tokenizer's).
    One token decoded alone: a piece of a multi-byte character shows as the replacement character."""
    ids = set(row["emitted"]) | set(row["drafted"] or []) | {c[1] for c in row["committed"] or []}
    if row["bonus"] is not None:
        ids.add(row["bonus"])
    return {str(i): decode([i]) for i in sorted(ids)}


class Trace:
    """Collects a call's events (iterate over it, or read ``events``); also a valid ``trace=`` callback."""

    def __init__(self):
        self.events: list[TraceEvent] = []

    def __call__(self, event: TraceEvent) -> None:
        self.events.append(event)

    def __iter__(self) -> Iterator[TraceEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def to_list(self) -> list[dict]:
        return [e.to_dict() for e in self.events]

    def row_views(self, b: int = 0) -> list[dict]:
        """Batch row ``b``'s view of every forward it took part in (see :func:`row_view`)."""
        return [row_view(e, r) for e in self.events for r in e.rows if r.row == b]


class Tracer:
    """The loop's side: builds each forward's event, hands the finished one to ``callback``.

    An event is finished when the next forward starts or the call ends, so details that the
    strategy learns after the forward (acceptance, the tokens it emits) land in it.
    """

    def __init__(self, callback: Callable[[TraceEvent], None], mode: str, started: float):
        self.callback = callback
        self.mode = mode
        self.started = started
        self.current: TraceEvent | None = None
        self.count = 0
        self.tokens = 0

    def forward(self, kind: str, nfe: int) -> None:
        self.flush()
        self.current = TraceEvent(self.mode, self.count, kind, self.tokens, nfe)
        self.count += 1

    def row(self, b: int) -> RowTrace:
        return self.current.row(b)

    def emitted(self, b: int, start: int, tokens: list[int]) -> None:
        entry = self.current.row(b)
        if not entry.emitted:
            entry.start = start
        entry.emitted.extend(tokens)
        self.tokens += len(tokens)
        self.current.tokens = self.tokens

    def flush(self) -> None:
        if self.current is not None:
            self.current.elapsed_s = time.perf_counter() - self.started
            event, self.current = self.current, None
            self.callback(event)
