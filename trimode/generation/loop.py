"""The one generation loop, and the per-call state every mode shares.

``decode(model, prompts, strategy, request)`` runs::

    strategy.prefill(run)          # first token(s); a mode may fuse its first draft in
    while rows are unfinished:
        strategy.step(run)         # one cycle: forwards, then run.emit(...) per row
        run.end_cycle()            # finished rows stop growing their cache; the cycle's trace goes out

A :class:`Runner` holds everything a strategy touches: the KV cache, each
row's *pending* token (emitted, but its keys not yet in the cache), the
emitted tokens, finished flags, sampling parameters and generator, and the
stats. :meth:`Runner.forward` is the only place a model forward happens, so
it is the only place forwards are counted and timed.

Batching: rows keep their own cache lengths and positions (see
:mod:`trimode.cache`), so rows with different prompt lengths and acceptance
run together; finished rows are carried along and ignored.

Host syncs: on a GPU every read of a device value (``.tolist()``, ``int()``,
``bool()``) waits for the queued work. A cycle brings what it decided (accepted
counts, tokens) to the host once, and the Python-side state (``generated``,
``done``, the cache's host mirror of its lengths) is updated from that; the
device-side state (``pending``, :meth:`Runner.live_mask`, the cache lengths) is
updated with device ops only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

import torch

from ..cache import KVCache
from ..masks import block_pattern
from .sampling import SamplingParams, choose
from .stats import GenerationStats
from .trace import TraceEvent, Tracer


@dataclass
class Request:
    """Validated arguments shared by all decoders."""

    max_new_tokens: int
    eos_token_ids: frozenset[int]
    sampling: SamplingParams
    generator: torch.Generator | None
    block_length: int = 1
    threshold: float | None = None
    steps: int | None = None


class Strategy(Protocol):
    name: str

    def scratch(self, request: Request, max_prompt: int) -> int:
        """Widest forward this mode runs beyond the committed tokens (cache capacity)."""

    def prefill(self, run: "Runner") -> None: ...

    def step(self, run: "Runner") -> None: ...


class Runner:
    def __init__(self, model, prompts: list[list[int]], request: Request, mode: str):
        self.model = model
        self.request = request
        self.prompts = prompts
        self.batch = len(prompts)
        self.device = next(model.parameters()).device
        self.prompt_lens = [len(p) for p in prompts]
        self.prompt_lengths = torch.tensor(self.prompt_lens, device=self.device)  # (B,)
        self.generated: list[list[int]] = [[] for _ in prompts]
        self.done = [request.max_new_tokens == 0] * self.batch
        self.pending = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        self.frozen_lengths: list[int | None] = [None] * self.batch
        # (B,) device twins of ``frozen_lengths`` (-1 = not frozen) and of ``not done``, written
        # once per row when it finishes: the loop never copies a host list to the device.
        self._frozen = torch.full((self.batch,), -1, dtype=torch.long, device=self.device)
        self._live = torch.ones(self.batch, dtype=torch.bool, device=self.device)
        self._live_host = [True] * self.batch
        self.eos_ids = torch.tensor(sorted(request.eos_token_ids), dtype=torch.long, device=self.device)
        self.stats = GenerationStats(mode=mode, batch_size=self.batch, block_length=request.block_length,
                                     prompt_tokens=sum(len(p) for p in prompts))
        self.cache: KVCache | None = None
        self._in_prefill = True
        self._started = time.perf_counter()
        self.tracer: Tracer | None = None  # set by decode(trace=...): one event per forward
        self.prefill_inputs: dict = {}  # extra inputs of the first forward only (a VLM's images)

    # ---------------------------------------------------------------- forwards
    def forward(self, tokens: torch.Tensor, *, positions: torch.Tensor | None = None,
                pattern: torch.Tensor | None = None, write: bool = True, drafter: bool | torch.Tensor = False,
                keep: int | torch.Tensor = 0, kind: str = "ar") -> torch.Tensor:
        """Run the model once on ``tokens`` (B, Q) and return logits. The only counted forward.

        ``drafter``: the LoRA drafter off, on, or on at the True positions of a (Q,) or (B, Q)
        bool tensor. ``kind``: what the forward is for, as a trace names it (:mod:`.trace`)."""
        start = time.perf_counter()
        extra, self.prefill_inputs = self.prefill_inputs, {}  # the prompt's images: its first forward only
        out = self.model(tokens, position_ids=positions, attention_mask=pattern, past_key_values=self.cache,
                         cache_write=write, use_drafter=drafter, logits_to_keep=keep, **extra)
        elapsed = time.perf_counter() - start
        self.stats.nfe += 1
        if self._in_prefill:
            self.stats.prefill_forwards += 1
            self.stats.prefill_time += elapsed
        else:
            self.stats.decode_time += elapsed
        if self.tracer is not None:
            self.tracer.forward(kind, self.stats.nfe)
        return out.logits

    def peek_block(self, tokens: torch.Tensor, drafter: bool = False, kind: str = "denoise") -> torch.Tensor:
        """Bidirectional peek over one block per row placed after its prefix: (B, n) -> (B, n, V)."""
        return self.forward(tokens, pattern=block_pattern(tokens.shape[1], device=self.device),
                            write=False, drafter=drafter, kind=kind)

    def prefill_ar(self) -> None:
        """Causal write forward over the (right-padded) prompts; emit each row's first token."""
        tokens = self.padded_prompts()
        last = (self.prompt_lengths - 1)[:, None]
        logits = self.forward(tokens, keep=last, kind="prefill")  # (B, 1, V)
        self.cache.crop(self.prompt_lengths, host=self.prompt_lens)  # drop the padding slots of shorter rows
        first, _ = self.choose(logits[:, 0])
        self.emit([[t] for t in first.tolist()], last=first)
        self.end_prefill()

    def padded_prompts(self, extra: int = 0) -> torch.Tensor:
        """(B, max prompt + extra) the prompts right-padded with 0: one host->device copy."""
        return self._right_padded(self.prompts, 0, max(self.prompt_lens) + extra)

    def end_prefill(self) -> None:
        self._in_prefill = False

    # ---------------------------------------------------------------- sampling
    def choose(self, logits: torch.Tensor):
        return choose(logits, self.request.sampling, self.request.generator)

    # ---------------------------------------------------------------- emission
    @property
    def active(self) -> list[int]:
        return [b for b in range(self.batch) if not self.done[b]]

    def remaining(self, b: int) -> int:
        return self.request.max_new_tokens - len(self.generated[b])

    def cycle_length(self, block_length: int) -> int:
        """Block length for this cycle: never wider than what any active row may still emit."""
        return max(1, min(block_length, max(self.remaining(b) for b in self.active)))

    def emit(self, per_row: Sequence[Sequence[int] | None], drafted: int = 0, *, last: torch.Tensor) -> None:
        """Append each active row's new tokens (None = row skipped this cycle).

        Stops a row at its first EOS (kept) or at max_new_tokens (the rest is cut).
        ``last`` (B,), on the device: each row's last token of ``per_row`` before any cut;
        it becomes the pending tokens in one assignment (a row that was cut, skipped or
        emitted nothing is finished, so its pending token is never read). ``drafted`` is
        the number of draft tokens each row proposed this cycle (0 for AR/prefill).
        """
        eos = self.request.eos_token_ids
        emitted = 0
        for b, toks in enumerate(per_row):
            if self.done[b] or toks is None:
                continue
            toks = list(toks)[: self.remaining(b)]
            for i, t in enumerate(toks):
                if t in eos:
                    toks = toks[: i + 1]
                    self.done[b] = True
                    break
            if self.tracer is not None:
                self.tracer.emitted(b, len(self.generated[b]), toks)
            self.generated[b].extend(toks)
            emitted += len(toks)
            if self.remaining(b) <= 0:
                self.done[b] = True
            if not self._in_prefill or drafted:
                self.stats.acceptance_lengths.append(len(toks))
            if drafted:
                accepted = max(0, len(toks) - 1)
                self.stats.drafted += drafted
                self.stats.accepted += accepted
                self.stats.rolled_back += drafted - accepted
        self.pending = last
        self.stats.emit_times.append((time.perf_counter() - self._started, emitted))

    def end_cycle(self) -> None:
        """After a cycle: finished rows are frozen, and its last trace event goes out (a trace
        callback sees each cycle as soon as it ends, not at the next forward)."""
        self.freeze_finished()
        if self.tracer is not None:
            self.tracer.flush()

    def freeze_finished(self) -> None:
        """Finished rows stop growing their cache, so the batch never overflows it.

        A row that finished this cycle may have committed more accepted drafts than it could
        emit (its limit cut them); its cache is no longer read, so it is frozen at no more than
        prompt + generated tokens. Active rows never exceed that: they commit only emitted tokens.
        Decided on the cache's host mirror; the device lengths follow in one op.
        """
        if self.cache is None:
            return
        host = self.cache.host_lengths
        for b in range(self.batch):
            if self.done[b] and self.frozen_lengths[b] is None:
                self.frozen_lengths[b] = min(host[b], self.prompt_lens[b] + len(self.generated[b]))
                self._frozen[b] = self.frozen_lengths[b]  # a scalar write, once per row
        new = [h if f is None else f for h, f in zip(host, self.frozen_lengths)]
        if new != host:
            self.cache.crop(torch.where(self._frozen >= 0, self._frozen, self.cache.lengths), host=new)

    def live_mask(self) -> torch.Tensor:
        """(B,) bool on the device: the rows not finished (``not done``).

        ``done`` is a host list that others may set too (serving stops rows between cycles),
        so each call writes only the rows that finished since the last one (scalar writes,
        no host->device copy of the list, no sync).
        """
        for b in range(self.batch):
            if self.done[b] and self._live_host[b]:
                self._live[b] = False
                self._live_host[b] = False
        return self._live

    def all_done(self) -> bool:
        return all(self.done)

    # ------------------------------------------------------------------ result
    def output_ids(self, pad_id: int) -> torch.Tensor:
        """(B, max(prompt + generated)) rows of prompt + generated tokens, right-padded with pad_id."""
        rows = [p + g for p, g in zip(self.prompts, self.generated)]
        return self._right_padded(rows, pad_id, max(len(r) for r in rows))

    def _right_padded(self, rows: list[list[int]], pad: int, width: int) -> torch.Tensor:
        """(B, width) ``rows`` right-padded with ``pad``, on the device in one host->device copy."""
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=self.device)


def private_generator(request: Request, device: torch.device) -> Request:
    """``request`` with a generator on ``device``: a sampling request without one gets a fresh
    generator seeded from the OS, so that decoding never draws from (or advances) torch's
    global RNG. A generator on another device than the model is refused: torch would fail
    deep inside a sampling kernel."""
    if request.generator is None:
        if request.sampling.greedy:
            return request
        generator = torch.Generator(device=device)
        generator.seed()
        return replace(request, generator=generator)
    if request.generator.device.type != device.type:
        raise ValueError(f"generator is on {request.generator.device} but the model is on {device}; "
                         f"pass torch.Generator(device={str(device)!r})")
    return request


def decoding_cache(model, batch: int, capacity: int) -> KVCache:
    """The cache a decode of ``model`` uses: with compiled forwards, full width and its capacity
    rounded up (static shapes, see :mod:`trimode.compiled`); otherwise exactly ``capacity``."""
    compiled = getattr(model, "compiled_forwards", None)
    if compiled is None:
        return KVCache.for_model(model, batch, capacity)
    return compiled.cache_for(model, batch, capacity)


def decode(model, prompts: list[list[int]], strategy: Strategy, request: Request,
           trace: Callable[[TraceEvent], None] | None = None, prefill_inputs: dict | None = None) -> Runner:
    """Run ``strategy`` on ``prompts`` until every row has finished. Returns the runner (state + stats).

    ``trace``: called with one :class:`~.trace.TraceEvent` per forward (see :mod:`.trace`).
    ``prefill_inputs``: extra keyword inputs of the first (prefill) forward, e.g. a VLM's
    ``pixel_values`` and ``image_sizes``: the images become part of the cached prompt."""
    run = Runner(model, prompts, private_generator(request, next(model.parameters()).device), strategy.name)
    run.prefill_inputs = dict(prefill_inputs or {})
    if trace is not None:
        run.tracer = Tracer(trace, strategy.name, run._started)
    max_prompt = max(len(p) for p in prompts)
    run.cache = decoding_cache(model, run.batch, max_prompt + request.max_new_tokens
                               + strategy.scratch(request, max_prompt) + 1)
    if run.all_done():
        run.stats.tokens_per_row = [0] * run.batch
        return run
    try:
        with torch.no_grad():
            strategy.prefill(run)
            run.end_cycle()
            while not run.all_done():
                strategy.step(run)
                run.end_cycle()
    finally:
        compiled = getattr(model, "compiled_forwards", None)
        if compiled is not None:
            compiled.release(run.cache)  # the next decode of this shape may reuse it (see trimode.compiled)
    run.stats.tokens_per_row = [len(g) for g in run.generated]
    run.stats.wall_time = time.perf_counter() - run._started
    return run
