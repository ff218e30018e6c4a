"""Per-call generation statistics, defined once.

- ``nfe``: model forwards spent on the call, prefill included (counted only in
  :meth:`trimode.generation.loop.Runner.forward`).
- ``tpf``: generated tokens / nfe. Prompt tokens never count.
- acceptance length: tokens emitted per cycle (verification cycle, diffusion
  block or AR step), bonus token included, so AR = 1.
- drafted / accepted / rolled_back: draft tokens proposed, kept, discarded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class GenerationStats:
    mode: str
    batch_size: int = 0
    block_length: int | None = None
    nfe: int = 0
    prefill_forwards: int = 0
    prompt_tokens: int = 0
    tokens_per_row: list[int] = field(default_factory=list)
    acceptance_lengths: list[int] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    rolled_back: int = 0
    prefill_time: float = 0.0
    decode_time: float = 0.0
    # (seconds since the call started, tokens emitted over all rows) per emission event:
    # the first is the prefill's token(s), so emit_times[0][0] is the time to first token.
    emit_times: list[tuple[float, int]] = field(default_factory=list)

    @property
    def time_to_first_token(self) -> float | None:
        return self.emit_times[0][0] if self.emit_times else None

    def token_latencies(self) -> list[float]:
        """Per-token latency after the first token: each cycle's wall time spread over its tokens."""
        out = []
        for (t0, _), (t1, n) in zip(self.emit_times, self.emit_times[1:]):
            out.extend([(t1 - t0) / n] * n if n else [])
        return out

    @property
    def tokens_generated(self) -> int:
        return sum(self.tokens_per_row)

    @property
    def tpf(self) -> float:
        """Tokens per forward: generated tokens (all rows) / forwards."""
        return self.tokens_generated / self.nfe if self.nfe else 0.0

    @property
    def mean_acceptance(self) -> float:
        a = self.acceptance_lengths
        return sum(a) / len(a) if a else 0.0

    @property
    def acceptance_histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(self.acceptance_lengths).items()))

    @property
    def acceptance_rate(self) -> float:
        """Share of drafted tokens that were accepted (commit ratio)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    # Wall time of the whole call (forwards, sampling, bookkeeping): what a user waits for.
    wall_time: float = 0.0

    @property
    def total_time(self) -> float:
        """Wall time of the call (falls back to forward time if the call did not record it)."""
        return self.wall_time or (self.prefill_time + self.decode_time)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of wall time (end to end, prompt processing included)."""
        return self.tokens_generated / self.total_time if self.total_time > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "mode": self.mode, "batch_size": self.batch_size, "block_length": self.block_length,
            "nfe": self.nfe, "prefill_forwards": self.prefill_forwards, "prompt_tokens": self.prompt_tokens,
            "tokens_generated": self.tokens_generated, "tokens_per_row": list(self.tokens_per_row),
            "tpf": self.tpf, "mean_acceptance": self.mean_acceptance,
            "acceptance_histogram": self.acceptance_histogram, "drafted": self.drafted,
            "accepted": self.accepted, "rolled_back": self.rolled_back, "acceptance_rate": self.acceptance_rate,
            "prefill_time": self.prefill_time, "decode_time": self.decode_time, "wall_time": self.total_time,
            "tokens_per_second": self.tokens_per_second, "time_to_first_token": self.time_to_first_token,
        }
