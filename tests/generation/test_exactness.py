"""The exactness contract: both self-speculative modes emit exactly the AR greedy tokens.

Cases are random (model seed, prompts, block length 1..32, max_new_tokens not a
multiple of the block, an EOS the reference hits mid-block), batch 1 and > 1.
Weights use a large init scale so argmax ties never decide a case.
"""

import pytest
import torch
from helpers import random_prompts, tiny_model

N_CASES = 36
TOTALS = {"accepted": 0, "rolled_back": 0}


def _case(i: int, layout: str = "dense"):
    gen = torch.Generator().manual_seed(1000 + i)
    model = tiny_model(seed=i % 6, std=0.6 + 0.1 * (i % 4), vocab_size=[16, 24, 48][i % 3])
    if layout == "packed":
        model.pack_weights(min_elements=0)  # as trimode.loading.load packs on CPU, every group however small
    block = int(torch.randint(1, 33, (1,), generator=gen))
    max_new = block * int(torch.randint(1, 4, (1,), generator=gen)) + int(torch.randint(1, block + 1, (1,),
                                                                                          generator=gen))
    if max_new % block == 0:
        max_new += 1
    batch = 1 if i % 2 == 0 else int(torch.randint(2, 5, (1,), generator=gen))
    prompts = random_prompts(gen, batch, vocab=model.config.vocab_size)
    return model, prompts, block, max_new


def _reference(model, prompts, max_new, eos):
    """Slow obvious reference: each row alone, full recompute (no cache) per token."""
    rows = []
    for p in prompts:
        ids = list(p)
        for _ in range(max_new):
            logits = model(torch.tensor([ids], device=next(model.parameters()).device)).logits[0, -1]
            ids.append(int(logits.argmax()))
            if ids[-1] in eos:
                break
        rows.append(ids)
    return rows


@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("i", range(N_CASES))
def test_speculative_equals_ar_greedy(i, layout):
    model, prompts, block, max_new = _case(i, layout)
    # Pick an EOS that the reference emits mid-way (at a position not at a block boundary when possible).
    free = _reference(model, prompts[:1], max_new, eos=set())[0][len(prompts[0]):]
    eos_at = min(len(free) - 1, block // 2 + 1 if block > 2 else 1)
    eos = {free[eos_at]} if i % 3 != 2 else set()  # every third case: no EOS, runs to max_new_tokens
    want = _reference(model, prompts, max_new, eos)
    kwargs = dict(max_new_tokens=max_new, eos_token_id=list(eos))

    ar, _ = model.ar_generate(prompts, **kwargs)
    for mode in ("linear-spec", "quadratic-spec"):
        out, nfe, stats = model.decode_mode(mode, prompts, block_length=block, return_stats=True, **kwargs)
        for row, ref, ar_row in zip(out.tolist(), want, ar.tolist()):
            assert row[:len(ref)] == ref, f"{mode} block={block} max_new={max_new}"
            assert ar_row[:len(ref)] == ref
            pad = model.config.pad_token_id
            assert row[len(ref):] == [pad] * (len(row) - len(ref)), f"{mode}: tokens after EOS / max_new_tokens"
        for row, ref, p in zip(stats.tokens_per_row, want, prompts):
            assert row == len(ref) - len(p) <= max_new  # exact count: never more than asked, EOS last
        TOTALS["accepted"] += stats.accepted
        TOTALS["rolled_back"] += stats.rolled_back


def test_cases_exercise_both_accept_and_reject():
    """Guard against a vacuous contract: the random cases above must accept and reject drafts."""
    if TOTALS["accepted"] == 0 and TOTALS["rolled_back"] == 0:
        for i in range(N_CASES):
            test_speculative_equals_ar_greedy(i, "dense")
    assert TOTALS["accepted"] > 0
    assert TOTALS["rolled_back"] > 0


@pytest.mark.parametrize("seed", range(4))
def test_diffusion_block_one_equals_ar(seed):
    model = tiny_model(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    prompts = random_prompts(gen, 1 + seed % 3)
    ar, ar_nfe = model.ar_generate(prompts, max_new_tokens=13, eos_token_id=[])
    dif, dif_nfe = model.generate(prompts, max_new_tokens=13, block_length=1, eos_token_id=[])
    assert torch.equal(ar, dif)
    assert ar_nfe == dif_nfe == 13


def test_diffusion_threshold_one_and_fixed_schedule_run():
    """Lossy mode: no equality claim, but exact lengths and full blocks."""
    model = tiny_model(seed=3)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    for threshold in (None, 0.5, 1.0):
        out, nfe, stats = model.generate(prompts, max_new_tokens=11, block_length=4, threshold=threshold,
                                         eos_token_id=[], return_stats=True)
        assert stats.tokens_per_row == [11, 11]
        assert model.config.mask_token_id not in out[0, 3:].tolist()


@pytest.fixture(scope="module")
def trained():
    from helpers import quickly_trained_model

    return quickly_trained_model()


@pytest.mark.parametrize("block", [2, 3, 4, 5, 7, 8, 16])
def test_exact_on_trained_model_with_high_acceptance(trained, block):
    from helpers import pattern_batch

    gen = torch.Generator().manual_seed(block)
    prompts = [r[: 3 + i].tolist() for i, r in enumerate(pattern_batch(gen, 3, 12, 24))]
    # Perturb one prompt so some rows leave the learned pattern (and drafts get rejected).
    prompts[1][-1] = 4 + (prompts[1][-1] + 5) % 20
    max_new = 3 * block + 1
    free = _reference(trained, prompts[:1], max_new, eos=set())[0][len(prompts[0]):]
    eos = {free[block + block // 2]}
    want = _reference(trained, prompts, max_new, eos)
    accepted = 0
    for mode in ("linear-spec", "quadratic-spec"):
        out, _, stats = trained.decode_mode(mode, prompts, block_length=block, max_new_tokens=max_new,
                                            eos_token_id=list(eos), return_stats=True)
        for row, ref in zip(out.tolist(), want):
            assert row[:len(ref)] == ref, mode
        accepted += stats.accepted
    assert accepted > 0


def test_trained_model_drafts_are_mostly_accepted(trained):
    """The joint loss trains the diffusion pathway: on in-distribution prompts drafts are accepted."""
    from helpers import pattern_batch

    prompts = pattern_batch(torch.Generator().manual_seed(99), 4, 6, 24)
    _, _, stats = trained.linear_spec_generate(prompts, max_new_tokens=16, block_length=4, eos_token_id=[],
                                               return_stats=True)
    assert stats.acceptance_rate > 0.5
    assert stats.tpf > 1.2


def test_rows_at_their_limit_never_overflow_the_cache(trained):
    """Regression: in a batch, a row near max_new_tokens accepted more drafts than it could emit
    and grew its cache past capacity. Rows of different lengths, high acceptance, odd limits."""
    prompts = [[13, 14, 15], [23, 15, 12, 22, 7], [19, 20, 21, 22, 23]]
    for mode in ("linear-spec", "quadratic-spec", "diffusion"):
        for block, max_new in ((8, 20), (16, 5), (5, 13)):
            out, _, stats = trained.decode_mode(mode, prompts, max_new_tokens=max_new, block_length=block,
                                                eos_token_id=[], return_stats=True)
            assert stats.tokens_per_row == [max_new] * 3
            if mode != "diffusion":
                ref, _ = trained.ar_generate(prompts, max_new_tokens=max_new, eos_token_id=[])
                assert torch.equal(out, ref), (mode, block, max_new)
