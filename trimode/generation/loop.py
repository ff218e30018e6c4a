"""The one generation loop, and the per-call state every mode shares.

``decode(model, prompts, strategy, request)`` runs::

    strategy.prefill(run)          # first token(s); a mode may fuse its first draft in
    while rows are unfinished:
        strategy.step(run)         # one cycle: forwards, then run.emit(...) per row
        run.freeze_finished()      # finished rows stop growing their cache

A :class:`Runner` holds everything a strategy touches: the KV cache, each
row's *pending* token (emitted, but its keys not yet in the cache), the
emitted tokens, finished flags, sampling parameters and generator, and the
stats. :meth:`Runner.forward` is the only place a model forward happens, so
it is the only place forwards are counted and timed.

Batching: rows keep their own cache lengths and positions (see
:mod:`trimode.cache`), so rows with different prompt lengths and acceptance
run together; finished rows are carried along and ignored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import torch

from ..cache import KVCache
from ..masks import block_pattern
from .sampling import SamplingParams, choose
from .stats import GenerationStats


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
        self.prompt_lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        self.generated: list[list[int]] = [[] for _ in prompts]
        self.done = [request.max_new_tokens == 0] * self.batch
        self.pending = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        self.frozen_lengths: list[int | None] = [None] * self.batch
        self.stats = GenerationStats(mode=mode, batch_size=self.batch, block_length=request.block_length,
                                     prompt_tokens=sum(len(p) for p in prompts))
        self.cache: KVCache | None = None
        self._in_prefill = True
        self._started = time.perf_counter()

    # ---------------------------------------------------------------- forwards
    def forward(self, tokens: torch.Tensor, *, positions: torch.Tensor | None = None,
                pattern: torch.Tensor | None = None, write: bool = True, drafter: bool | torch.Tensor = False,
                keep: int | torch.Tensor = 0) -> torch.Tensor:
        """Run the model once on ``tokens`` (B, Q) and return logits. The only counted forward.

        ``drafter``: the LoRA drafter off, on, or on at the True positions of a (Q,) or (B, Q)
        bool tensor."""
        start = time.perf_counter()
        out = self.model(tokens, position_ids=positions, attention_mask=pattern, past_key_values=self.cache,
                         cache_write=write, use_drafter=drafter, logits_to_keep=keep)
        elapsed = time.perf_counter() - start
        self.stats.nfe += 1
        if self._in_prefill:
            self.stats.prefill_forwards += 1
            self.stats.prefill_time += elapsed
        else:
            self.stats.decode_time += elapsed
        return out.logits

    def peek_block(self, tokens: torch.Tensor, drafter: bool = False) -> torch.Tensor:
        """Bidirectional peek over one block per row placed after its prefix: (B, n) -> (B, n, V)."""
        return self.forward(tokens, pattern=block_pattern(tokens.shape[1], device=self.device),
                            write=False, drafter=drafter)

    def prefill_ar(self) -> None:
        """Causal write forward over the (right-padded) prompts; emit each row's first token."""
        tokens = self.padded_prompts()
        last = (self.prompt_lengths - 1)[:, None]
        logits = self.forward(tokens, keep=last)  # (B, 1, V)
        self.cache.crop(self.prompt_lengths)  # drop the padding slots of shorter rows
        first, _ = self.choose(logits[:, 0])
        self.emit([[t] for t in first.tolist()])
        self.end_prefill()

    def padded_prompts(self, extra: int = 0) -> torch.Tensor:
        width = int(self.prompt_lengths.max()) + extra
        tokens = torch.zeros(self.batch, width, dtype=torch.long, device=self.device)
        for b, p in enumerate(self.prompts):
            tokens[b, :len(p)] = torch.tensor(p, dtype=torch.long)
        return tokens

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

    def emit(self, per_row: Sequence[Sequence[int] | None], drafted: int = 0) -> None:
        """Append each active row's new tokens (None = row skipped this cycle).

        Stops a row at its first EOS (kept) or at max_new_tokens (the rest is cut).
        The last emitted token becomes the row's pending token. ``drafted`` is the
        number of draft tokens each row proposed this cycle (0 for AR/prefill).
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
            self.generated[b].extend(toks)
            emitted += len(toks)
            if self.remaining(b) <= 0:
                self.done[b] = True
            if toks:
                self.pending[b] = toks[-1]
            if not self._in_prefill or drafted:
                self.stats.acceptance_lengths.append(len(toks))
            if drafted:
                accepted = max(0, len(toks) - 1)
                self.stats.drafted += drafted
                self.stats.accepted += accepted
                self.stats.rolled_back += drafted - accepted
        self.stats.emit_times.append((time.perf_counter() - self._started, emitted))

    def freeze_finished(self) -> None:
        """Finished rows stop growing their cache, so the batch never overflows it.

        A row that finished this cycle may have committed more accepted drafts than it could
        emit (its limit cut them); its cache is no longer read, so it is frozen at no more than
        prompt + generated tokens. Active rows never exceed that: they commit only emitted tokens.
        """
        if self.cache is None:
            return
        lengths = self.cache.lengths.clone()
        changed = False
        for b in range(self.batch):
            if self.done[b]:
                if self.frozen_lengths[b] is None:
                    self.frozen_lengths[b] = min(int(lengths[b]), len(self.prompts[b]) + len(self.generated[b]))
                if int(lengths[b]) != self.frozen_lengths[b]:
                    lengths[b] = self.frozen_lengths[b]
                    changed = True
        if changed:
            self.cache.crop(lengths)

    def all_done(self) -> bool:
        return all(self.done)

    # ------------------------------------------------------------------ result
    def output_ids(self, pad_id: int) -> torch.Tensor:
        """(B, max(prompt + generated)) rows of prompt + generated tokens, right-padded with pad_id."""
        rows = [p + g for p, g in zip(self.prompts, self.generated)]
        width = max(len(r) for r in rows)
        out = torch.full((self.batch, width), pad_id, dtype=torch.long, device=self.device)
        for b, r in enumerate(rows):
            out[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out


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


def decode(model, prompts: list[list[int]], strategy: Strategy, request: Request) -> Runner:
    """Run ``strategy`` on ``prompts`` until every row has finished. Returns the runner (state + stats)."""
    run = Runner(model, prompts, private_generator(request, next(model.parameters()).device), strategy.name)
    max_prompt = max(len(p) for p in prompts)
    capacity = max_prompt + request.max_new_tokens + strategy.scratch(request, max_prompt) + 1
    run.cache = KVCache.for_model(model, run.batch, capacity)
    if run.all_done():
        run.stats.tokens_per_row = [0] * run.batch
        return run
    with torch.no_grad():
        strategy.prefill(run)
        run.freeze_finished()
        while not run.all_done():
            strategy.step(run)
            run.freeze_finished()
    run.stats.tokens_per_row = [len(g) for g in run.generated]
    run.stats.wall_time = time.perf_counter() - run._started
    return run
