"""Timed decoding calls and the pooled metrics (nfe, TPF, acceptance, tokens/s), defined once for every report.

A :class:`RunRecord` is one timed ``model.decode_mode`` call (one batch of
prompts). :func:`summarize` pools records of one setting into a
:class:`Summary`.

Definitions (the engine's :class:`~trimode.generation.stats.GenerationStats`
counts per call; here they are pooled, never averaged per call):

- ``tokens``: generated tokens over all rows and calls. Prompt tokens never
  count (``prompt_tokens`` is reported beside, for context).
- ``nfe``: forwards over all calls, prefill included; ``prefill_forwards`` is
  the part spent on prompts.
- ``tpf`` = tokens / nfe (the engine's definition, pooled). A batch shares a
  forward between rows, so batched TPF is higher than batch-1 TPF.
- acceptance length: tokens emitted per cycle and row, bonus token included
  (AR = 1; a diffusion block emits its whole block). ``mean_acceptance`` and the
  histogram pool every cycle of every row.
- ``drafted`` / ``accepted`` / ``rolled_back``: draft tokens proposed, kept,
  discarded; ``acceptance_rate`` = accepted / drafted.
- ``ttft_p50`` / ``ttft_p95``: time from the call to its first token, over calls.
- ``latency_p50`` / ``latency_p95``: per-token latency after the first token,
  pooled over calls: each cycle's wall time spread over the tokens it emitted
  (:meth:`GenerationStats.token_latencies`). At batch > 1 a cycle's tokens are
  those of all rows, so this is per token of the batch, not per row.
- agreement with AR: the share of the AR greedy reference's positions where a setting
  generated the same token (positions it did not reach count as disagreement), per
  prompt, then the mean over prompts (:func:`agreement`, :func:`mean_agreement`).
- ``tokens_per_s``: tokens / wall-clock time *around* the calls (the same quantity as
  :attr:`GenerationStats.tokens_per_second`, measured from outside the call): it includes
  sampling, acceptance and bookkeeping, which is what a user sees.
  ``forward_share`` says how much of that wall time the forwards took.

Percentiles use linear interpolation between order statistics (numpy's default).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from ..generation.stats import GenerationStats

_DEFAULT = object()  # "let the engine use the config's value"


@dataclass
class RunRecord:
    """One timed decoding call."""

    engine: str  # "ar", "diffusion", "linear-spec", "quadratic-spec", "transformers", "diffusion-sol"
    prompts: list[list[int]]
    generated: list[list[int]]  # per row: generated tokens only (prompt stripped, no padding)
    wall_time: float
    stats: GenerationStats | None = None  # None for engines without trimode stats (transformers)


def timed_decode(model, mode: str, prompts: list[list[int]], *, max_new_tokens: int, block_length=None,
                 threshold=_DEFAULT, eos_token_id=None) -> RunRecord:
    """Run ``model.decode_mode`` greedily on ``prompts`` and time it with the wall clock."""
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, return_stats=True)
    if block_length is not None:
        kwargs["block_length"] = block_length
    if threshold is not _DEFAULT:
        kwargs["threshold"] = threshold
    start = time.perf_counter()
    out, _, stats = model.decode_mode(mode, prompts, **kwargs)
    wall = time.perf_counter() - start
    return RunRecord(mode, prompts, generated_rows(out, prompts, stats.tokens_per_row), wall, stats)


def generated_rows(output_ids, prompts: list[list[int]], tokens_per_row: list[int]) -> list[list[int]]:
    """Generated ids per row from a right-padded ``(B, prompt + generated)`` output."""
    return [output_ids[b, len(p):len(p) + n].tolist() for b, (p, n) in enumerate(zip(prompts, tokens_per_row))]


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation), None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


@dataclass
class Summary:
    """Pooled metrics of one setting (see the module docstring for every definition)."""

    calls: int = 0
    rows: int = 0
    prompt_tokens: int = 0
    tokens: int = 0
    nfe: int = 0
    prefill_forwards: int = 0
    tpf: float = 0.0
    mean_acceptance: float = 0.0
    acceptance_histogram: dict[int, int] = field(default_factory=dict)
    drafted: int = 0
    accepted: int = 0
    rolled_back: int = 0
    acceptance_rate: float = 0.0
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    wall_time: float = 0.0
    tokens_per_s: float = 0.0
    forward_share: float | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["acceptance_histogram"] = {str(k): v for k, v in self.acceptance_histogram.items()}  # JSON keys
        return d


def summarize(records: list[RunRecord]) -> Summary:
    """Pool the records of one setting into a :class:`Summary`."""
    s = Summary(calls=len(records))
    acceptance: list[int] = []
    ttfts: list[float] = []
    latencies: list[float] = []
    forward_time = 0.0
    for r in records:
        s.rows += len(r.prompts)
        s.prompt_tokens += sum(len(p) for p in r.prompts)
        s.tokens += sum(len(g) for g in r.generated)
        s.wall_time += r.wall_time
        st = r.stats
        if st is None:
            continue
        s.nfe += st.nfe
        s.prefill_forwards += st.prefill_forwards
        acceptance += st.acceptance_lengths
        s.drafted += st.drafted
        s.accepted += st.accepted
        s.rolled_back += st.rolled_back
        if st.time_to_first_token is not None:
            ttfts.append(st.time_to_first_token)
        latencies += st.token_latencies()
        forward_time += st.prefill_time + st.decode_time
    with_stats = [r for r in records if r.stats is not None]
    s.tpf = s.tokens / s.nfe if s.nfe else 0.0
    s.mean_acceptance = sum(acceptance) / len(acceptance) if acceptance else 0.0
    s.acceptance_histogram = dict(sorted(Counter(acceptance).items()))
    s.acceptance_rate = s.accepted / s.drafted if s.drafted else 0.0
    s.ttft_p50, s.ttft_p95 = percentile(ttfts, 50), percentile(ttfts, 95)
    s.latency_p50, s.latency_p95 = percentile(latencies, 50), percentile(latencies, 95)
    s.tokens_per_s = s.tokens / s.wall_time if s.wall_time > 0 else 0.0
    stats_wall = sum(r.wall_time for r in with_stats)
    s.forward_share = forward_time / stats_wall if with_stats and stats_wall > 0 else None
    return s


def identical_share(outputs: list[list[int]], references: list[list[int]]) -> float:
    """Share of rows whose generated ids equal the reference's exactly."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs vs {len(references)} references: the sets must align")
    return sum(o == r for o, r in zip(outputs, references)) / len(outputs) if outputs else 0.0


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    return a / b if a is not None and b else None


def agreement(tokens: list[int], reference: list[int]) -> float:
    """Share of ``reference``'s positions where ``tokens`` holds the same token. Positions past the end
    of ``tokens`` count as disagreement; tokens past the end of ``reference`` are not compared."""
    if not reference:  # nothing to compare: agreement only if the setting generated nothing either
        return 0.0 if tokens else 1.0
    return sum(a == b for a, b in zip(tokens, reference)) / len(reference)


def mean_agreement(outputs: list[list[int]], references: list[list[int]]) -> float:
    """Mean of :func:`agreement` over rows (one row per prompt)."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs vs {len(references)} references: the sets must align")
    return sum(agreement(o, r) for o, r in zip(outputs, references)) / len(outputs) if outputs else 0.0
