"""Harness metrics on stub models with known behaviour: exact TPF, acceptance histogram and counts.

The stubs (tests/helpers.py) predict from positions only. Hand-computed for
max_new_tokens N = 21, block B = 4, prompt [5, 6, 7] (prefill emits the first
token, at position 3):

accept-all (linear-spec, "right"): 5 cycles of 4 tokens, nfe 1 + 2*5 = 11.
accept-none (linear-spec, "wrong"): 20 cycles of 1 token; the last cycle has one
token left, so no draft forward: nfe 1 + 2*19 + 1 = 40; drafted 3*17 + 2 + 1.
fixed pattern (linear-spec, drafts wrong exactly at positions divisible by 5):
  cycle  pending  drafts at   accepted  emitted
  1      3        4 5 6       1 (5 bad) 2
  2      5        6 7 8       3         4
  3      9        10 11 12    0         1
  4      10       11 12 13    3         4
  5      14       15 16 17    0         1
  6      15       16 17 18    3         4
  7      19       20 21 22    0         1
  8      20       21 22       2         3   (3 tokens left: block of 3)
  -> acceptance [2, 4, 1, 4, 1, 4, 1, 3], nfe 1 + 2*8 = 17, drafted 3*7 + 2 = 23, accepted 12.
"""

import pytest
import torch
from evaluation_stubs import PatternStub, host
from helpers import StubModel, truth

from trimode.evaluation.metrics import RunRecord, identical_share, percentile, summarize, timed_decode
from trimode.generation.stats import GenerationStats

N, B = 21, 4
PROMPT = [5, 6, 7]


def run(stub, mode, prompts, **kw):
    return timed_decode(host(stub), mode, prompts, max_new_tokens=N, block_length=B, eos_token_id=[], **kw)


@pytest.mark.parametrize("stub,mode,nfe,hist,drafted,accepted", [
    (StubModel("right"), "linear-spec", 11, {4: 5}, 15, 15),
    (StubModel("wrong"), "linear-spec", 40, {1: 20}, 17 * 3 + 2 + 1, 0),
    (PatternStub(5), "linear-spec", 17, {1: 3, 2: 1, 3: 1, 4: 3}, 23, 12),
    (StubModel("right"), "quadratic-spec", 6, {4: 5}, 15, 15),
    (StubModel("wrong"), "quadratic-spec", 21, {1: 20}, 17 * 3 + 2 + 1, 0),
    (StubModel("right"), "ar", 21, {1: 20}, 0, 0),
])
def test_known_behaviour_exact_metrics(stub, mode, nfe, hist, drafted, accepted):
    s = summarize([run(stub, mode, [PROMPT])])
    assert (s.tokens, s.nfe, s.prefill_forwards) == (N, nfe, 1)
    assert s.tpf == pytest.approx(N / nfe)
    assert s.acceptance_histogram == hist
    assert s.mean_acceptance == pytest.approx(sum(k * v for k, v in hist.items()) / sum(hist.values()))
    assert (s.drafted, s.accepted, s.rolled_back) == (drafted, accepted, drafted - accepted)
    assert s.acceptance_rate == pytest.approx(accepted / drafted if drafted else 0.0)


def test_pattern_acceptance_sequence_and_output():
    rec = run(PatternStub(5), "linear-spec", [PROMPT])
    assert rec.stats.acceptance_lengths == [2, 4, 1, 4, 1, 4, 1, 3]
    # Lossless: the emitted tokens are the stub's truth, whatever was rejected.
    assert rec.generated == [[int(truth(torch.tensor(3 + i), 32)) for i in range(N)]]


def test_prompt_tokens_never_counted():
    """Two calls with prompts of 3 and 9 tokens: tokens and TPF depend on generated tokens only."""
    short, long = run(StubModel("right"), "quadratic-spec", [PROMPT]), \
        run(StubModel("right"), "quadratic-spec", [list(range(5, 14))])
    s = summarize([short, long])
    assert s.prompt_tokens == 12
    assert s.tokens == 2 * N and s.nfe == 12 and s.tpf == pytest.approx(2 * N / 12)
    assert [len(g) for g in long.generated] == [N]
    # A batch of both: one forward serves both rows, prompt lengths still ignored.
    batched = summarize([run(StubModel("right"), "quadratic-spec", [PROMPT, list(range(5, 14))])])
    assert batched.tokens == 2 * N and batched.nfe == 6 and batched.rows == 2


def test_diffusion_block_counts():
    """'unsure' drafts: 3 denoise steps + 1 write per 4-token block; the block is the acceptance length."""
    s = summarize([run(StubModel("unsure"), "diffusion", [PROMPT], threshold=0.9)])
    assert (s.tokens, s.nfe) == (N, 21)
    assert s.acceptance_histogram == {4: 5}


def test_latency_and_ttft_percentiles():
    stats = GenerationStats(mode="ar", tokens_per_row=[5], nfe=5)
    stats.emit_times = [(0.010, 1), (0.012, 1), (0.014, 1), (0.022, 2)]  # cycle gaps: 2 ms, 2 ms, 8 ms / 2
    rec = RunRecord("ar", [[1, 2]], [[4, 5, 6, 7, 8]], wall_time=0.025, stats=stats)
    s = summarize([rec, rec])
    assert s.ttft_p50 == pytest.approx(0.010)
    # Pooled latencies: [2, 2, 4, 4] ms twice -> P50 = 3 ms, P95 = 4 ms.
    assert s.latency_p50 == pytest.approx(0.003)
    assert s.latency_p95 == pytest.approx(0.004)
    assert s.tokens_per_s == pytest.approx(10 / 0.050)


def test_percentile_and_identical_share():
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert identical_share([[1, 2], [3]], [[1, 2], [4]]) == 0.5
    with pytest.raises(ValueError, match="must align"):
        identical_share([[1]], [])


def test_baseline_record_has_no_forward_metrics():
    rec = RunRecord("transformers", [[1, 2]], [[3, 4, 5]], wall_time=0.5)
    s = summarize([rec])
    assert (s.tokens, s.nfe, s.tpf, s.forward_share) == (3, 0, 0.0, None)
    assert s.tokens_per_s == pytest.approx(6.0)
