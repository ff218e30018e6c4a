"""Trace events: exact on stub models with forced behaviour; the emitted tokens are the output;
tracing never changes a token.

Stub (helpers.StubModel): an AR query at position i predicts truth(i + 1); a mask query at i
predicts truth(i) ("right", confidently), a wrong token ("wrong") or truth(i) with a flat
distribution ("unsure": probability e / (e + V - 1) for V = 32, below any threshold, so
diffusion commits one position per step, the leftmost of the equally confident ones).
Prompt [5, 6, 7]: the output token at index s sits at position 3 + s, so it is truth(3 + s).
"""

import json
import math

import pytest
import torch
from helpers import StubModel, device_generator, random_prompts, stub_decode, tiny_model, truth

from trimode.generation.trace import KINDS, Trace

PROMPT = [[5, 6, 7]]
V = 32


def t(i: int) -> int:
    return int(truth(torch.tensor(i), V))


def wrong(i: int) -> int:
    return 4 + (t(i) - 4 + 1) % (V - 4)


def traced(stub, mode, prompts=PROMPT, **kw):
    trace = Trace()
    out, nfe, stats = stub_decode(stub, mode, prompts, eos_token_id=[], trace=trace, **kw)
    return trace, out, stats


def test_linear_spec_accept_all_events_are_exact():
    trace, _, _ = traced(StubModel("right"), "linear-spec", max_new_tokens=5, block_length=4)
    assert [(e.index, e.kind, e.nfe, e.tokens) for e in trace] == [(0, "prefill", 1, 1), (1, "draft", 2, 1),
                                                                     (2, "verify", 3, 5)]
    prefill, draft, verify = (e.rows[0] for e in trace)
    assert (prefill.emitted, prefill.start) == ([t(3)], 0)
    assert draft.drafted == [t(4), t(5), t(6)] and draft.emitted == []
    assert (verify.drafted, verify.accepted, verify.rejected, verify.bonus) == ([t(4), t(5), t(6)], 3, [], t(7))
    assert (verify.emitted, verify.start) == ([t(4), t(5), t(6), t(7)], 1)


def test_linear_spec_accept_none_events_are_exact():
    trace, _, _ = traced(StubModel("wrong"), "linear-spec", max_new_tokens=3, block_length=4)
    assert [e.kind for e in trace] == ["prefill", "draft", "verify", "verify"]  # 1 token left: no draft
    _, draft, verify, last = (e.rows[0] for e in trace)
    assert draft.drafted == [wrong(4)]
    assert (verify.accepted, verify.rejected, verify.bonus, verify.emitted) == (0, [wrong(4)], t(4), [t(4)])
    assert (last.drafted, last.accepted, last.rejected, last.bonus, last.emitted) == ([], 0, [], t(5), [t(5)])


class EveryThirdWrong(StubModel):
    """Drafts at positions divisible by 3 are wrong: acceptance stops there."""

    def wrong_drafts(self, position_ids, is_mask):
        return is_mask & (position_ids % 3 == 0)


@pytest.mark.parametrize("mode", ["linear-spec", "quadratic-spec"])
def test_a_fixed_acceptance_pattern_is_traced_where_it_happens(mode):
    trace, out, _ = traced(EveryThirdWrong("right"), mode, max_new_tokens=24, block_length=5)
    verifies = [e.rows[0] for e in trace if e.kind in ("verify", "draft+verify")]
    assert verifies
    for v in verifies:
        first = 3 + v.start  # position of drafted[0]
        assert v.drafted[:v.accepted] == [t(first + j) for j in range(v.accepted)]
        expect = next((j for j in range(len(v.drafted)) if (first + j) % 3 == 0), len(v.drafted))
        assert v.accepted == expect  # stops exactly at the first wrong position
        assert v.rejected == v.drafted[v.accepted:]
        assert v.bonus == t(first + v.accepted)
        assert v.emitted == v.drafted[:v.accepted] + [v.bonus]


def test_diffusion_commits_one_position_per_step_with_its_confidence():
    trace, _, _ = traced(StubModel("unsure"), "diffusion", max_new_tokens=5, block_length=4, threshold=0.9)
    assert [e.kind for e in trace] == ["prefill", "denoise", "denoise", "denoise", "write"]
    conf = math.e / (math.e + V - 1)
    steps = [e.rows[0] for e in trace.events[1:4]]
    for k, step in enumerate(steps):
        (pos, token, c), = step.committed  # one position per step, leftmost first
        assert (pos, token) == (1 + k, t(4 + k))
        assert c == pytest.approx(conf, rel=1e-5)
        assert step.masks_left == 2 - k and step.emitted == []
    write = trace.events[4].rows[0]
    assert (write.emitted, write.start) == ([t(4), t(5), t(6), t(7)], 1)


def test_diffusion_confident_commits_the_whole_block_in_one_step():
    trace, _, _ = traced(StubModel("right"), "diffusion", max_new_tokens=5, block_length=4)
    step = trace.events[1].rows[0]
    assert [(p, tok) for p, tok, _ in step.committed] == [(1, t(4)), (2, t(5)), (3, t(6))]
    assert all(c > 0.99 for _, _, c in step.committed) and step.masks_left == 0


MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_tracing_changes_no_token_and_the_emitted_tokens_are_the_output(mode, temperature):
    model = tiny_model(seed=3)
    prompts = random_prompts(torch.Generator().manual_seed(7), 3, vocab=model.config.vocab_size)
    kw = dict(max_new_tokens=13, block_length=4, temperature=temperature, eos_token_id=[2])

    def run(trace=None):
        gen = device_generator(11) if temperature else None
        return model.decode_mode(mode, prompts, generator=gen, trace=trace, return_stats=True, **kw)

    plain, nfe, stats = run()
    trace = Trace()
    out, traced_nfe, _ = run(trace)
    assert torch.equal(out, plain) and traced_nfe == nfe
    assert len(trace) == nfe and [e.index for e in trace] == list(range(nfe))
    assert all(e.kind in KINDS for e in trace)
    for b, p in enumerate(prompts):
        pieces = [(r.start, r.emitted) for e in trace for r in e.rows if r.row == b and r.emitted]
        emitted = [tok for _, piece in pieces for tok in piece]
        assert emitted == out[b].tolist()[len(p):len(p) + stats.tokens_per_row[b]]
        assert [s for s, _ in pieces] == [sum(len(x) for _, x in pieces[:i]) for i in range(len(pieces))]
    assert trace.events[-1].tokens == sum(stats.tokens_per_row)
    json.loads(json.dumps(trace.to_list()))  # plain JSON


def test_a_trace_that_is_not_callable_is_refused():
    with pytest.raises(ValueError, match="trace must be a callable"):
        tiny_model().ar_generate([[5, 6]], max_new_tokens=2, trace=[])
