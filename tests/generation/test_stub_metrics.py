"""Stub models force accept-all / accept-none: nfe, TPF, acceptance and draft counts are exact.

Hand-computed for max_new_tokens N = 21 and block B = 4 (prefill emits the first token,
so 20 tokens remain = 5 full cycles when everything is accepted):

mode            drafts  nfe                         acceptance lengths
ar              -       21                           [1] * 20
linear-spec     right   1 + 2*5 = 11                 [4] * 5
linear-spec     wrong   1 + 2*19 + 1 = 40 (last cycle has 1 token left: no draft forward)  [1] * 20
quadratic-spec  right   1 + 5 = 6                    [4] * 5
quadratic-spec  wrong   1 + 20 = 21                  [1] * 20
diffusion       right   1 + 5*(1 denoise + 1 write) = 11   [4] * 5
diffusion       unsure  1 + 5*(3 denoise + 1 write) = 21   [4] * 5
"""

import pytest
from helpers import StubModel, stub_decode, truth

N, B = 21, 4
PROMPT = [[5, 6, 7]]


@pytest.mark.parametrize("mode,drafts,nfe,acc,drafted,accepted", [
    ("ar", "right", 21, [1] * 20, 0, 0),
    ("linear-spec", "right", 11, [4] * 5, 15, 15),
    ("linear-spec", "wrong", 40, [1] * 20, 17 * 3 + 2 + 1, 0),
    ("quadratic-spec", "right", 6, [4] * 5, 15, 15),
    ("quadratic-spec", "wrong", 21, [1] * 20, 17 * 3 + 2 + 1, 0),
    ("diffusion", "right", 11, [4] * 5, 15, 15),
    ("diffusion", "unsure", 21, [4] * 5, 15, 15),
])
def test_forced_behaviour_metrics(mode, drafts, nfe, acc, drafted, accepted):
    stub = StubModel(drafts)
    out, got_nfe, stats = stub_decode(stub, mode, PROMPT, max_new_tokens=N, block_length=B, eos_token_id=[])
    assert got_nfe == stats.nfe == nfe
    assert stats.tokens_generated == N  # prompt tokens never count
    assert stats.tpf == pytest.approx(N / nfe)
    assert stats.acceptance_lengths == acc
    assert stats.drafted == drafted and stats.accepted == accepted
    assert stats.rolled_back == drafted - accepted
    assert stats.prefill_forwards == 1
    if mode != "diffusion" or drafts == "right":
        # Lossless modes (and a right-drafting diffusion) emit the stub's true sequence.
        expected = [int(truth(__import__("torch").tensor(3 + i), 32)) for i in range(N)]
        assert out[0, 3:].tolist() == expected


def test_batch_rows_count_separately():
    stub = StubModel("right")
    _, nfe, stats = stub_decode(stub, "quadratic-spec", [[5, 6], [5, 6, 7, 8, 9]], max_new_tokens=N,
                                block_length=B, eos_token_id=[])
    assert stats.tokens_per_row == [N, N]
    assert nfe == 6  # rows advance together: one forward serves both
    assert stats.tpf == pytest.approx(2 * N / 6)


def test_eos_stops_row_and_nothing_after_it():
    stub = StubModel("right")
    eos = int(truth(__import__("torch").tensor(3 + 6), 32))  # the 7th generated token
    for mode in ("ar", "diffusion", "linear-spec", "quadratic-spec"):
        out, _, stats = stub_decode(stub, mode, PROMPT, max_new_tokens=N, block_length=B, eos_token_id=eos)
        assert stats.tokens_per_row == [7], mode
        assert out[0, -1].item() == eos
