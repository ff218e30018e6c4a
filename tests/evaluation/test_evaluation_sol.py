"""SOL: the oracle diffusion TPF on stub models equals hand-computed values.

N = 21 new tokens, block B = 4, prompt [5, 6, 7]: the prefill emits the token at
position 3, then 5 blocks of 4 tokens (3 masked positions + the seed of the write).

- "unsure" stub: every mask argmax equals the reference (with low confidence), so the
  oracle commits a whole block per denoise step: nfe 1 + 5 * (1 + 1) = 11, while the real
  threshold sampler commits one position per step: nfe 21.
- "wrong" stub: no mask argmax ever matches, so rule 2 commits the leftmost position per
  step: nfe 1 + 5 * (3 + 1) = 21.
- pattern stub (drafts wrong at positions divisible by 5): a block needs one denoise step,
  plus one per wrong position (committed leftmost, one per step), plus its write:
    block masks   4 5 6 (5 wrong): 3     8 9 10 (10): 3     12 13 14: 2
                  16 17 18: 2            20 21 22 (20): 3
  nfe 1 + 13 = 14.
"""

import pytest
import torch
from evaluation_stubs import PatternStub, host
from helpers import StubModel, quickly_trained_model, truth

from trimode.evaluation.sol import ar_references, speed_of_light

N, B = 21, 4
PROMPT = [5, 6, 7]
TRUTH = [int(truth(torch.tensor(3 + i), 32)) for i in range(N)]


@pytest.mark.parametrize("stub,nfe", [(StubModel("unsure"), 11), (StubModel("right"), 11),
                                      (StubModel("wrong"), 21), (PatternStub(5), 14)])
def test_sol_on_stubs_is_hand_computed(stub, nfe):
    stats, generated = speed_of_light(stub, [PROMPT], B, N, eos_token_ids=[])
    assert stats.nfe == nfe
    assert stats.tpf == pytest.approx(N / nfe)
    assert generated == [TRUTH]  # the oracle emits the AR reference


def test_sol_bounds_the_real_sampler_on_unsure_drafts():
    _, real_nfe, _ = host(StubModel("unsure")).decode_mode("diffusion", [PROMPT], max_new_tokens=N, block_length=B,
                                                            eos_token_id=[], return_stats=True)
    stats, _ = speed_of_light(StubModel("unsure"), [PROMPT], B, N, eos_token_ids=[])
    assert (real_nfe, stats.nfe) == (21, 11)


def test_sol_batch_rows_and_references_given():
    """Rows of different prompt lengths share forwards; positions past a row's end are never waited for."""
    stub = PatternStub(5)
    prompts = [PROMPT, [5, 6, 7, 8]]
    refs = ar_references(stub, prompts, N, [])
    stats, generated = speed_of_light(stub, prompts, B, N, eos_token_ids=[], references=refs)
    assert generated == refs
    assert stats.tokens_per_row == [N, N]
    with pytest.raises(ValueError, match="one per prompt"):
        speed_of_light(stub, prompts, B, N, eos_token_ids=[], references=refs[:1])
    with pytest.raises(ValueError, match="block_length=0"):
        speed_of_light(stub, prompts, 0, N)


def test_sol_stops_at_eos_like_the_reference():
    eos = TRUTH[6]  # the 7th generated token
    stats, generated = speed_of_light(StubModel("unsure"), [PROMPT], B, N, eos_token_ids=[eos])
    assert generated == [TRUTH[:7]]
    assert stats.tokens_generated == 7


def test_sol_on_a_trained_model_reproduces_ar_and_beats_one():
    model = quickly_trained_model()
    gen = torch.Generator().manual_seed(0)
    prompts = [(4 + (torch.randint(0, 20, (1,), generator=gen) + 2 * torch.arange(6)) % 20).tolist()
               for _ in range(3)]
    for prompt in prompts:
        ref = ar_references(model, [prompt], 24, [])
        stats, generated = speed_of_light(model, [prompt], 4, 24, eos_token_ids=[], references=ref)
        assert generated == ref
        # Better than AR (drafts of a trained model often match), never above a whole block
        # per (denoise + write) pair: TPF <= B / 2 at batch 1.
        assert 1.0 < stats.tpf <= 2.0
