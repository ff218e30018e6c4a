"""Masks against brute-force constructions from their rules stated in words; the joint loss against a hand computation."""

import math

import torch
import torch.nn.functional as F
from helpers import TEST_DEVICE, tiny_model

from trimode import joint_loss
from trimode.masks import quadratic_pattern, training_mask, with_prefix


def test_training_mask_equals_spec_rules():
    for L, B in [(8, 4), (12, 4), (10, 3), (6, 1), (5, 8)]:
        got = training_mask(L, B)
        want = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
        for qi in range(2 * L):
            for ki in range(2 * L):
                q_xt, k_xt = qi < L, ki < L
                q, k = qi % L, ki % L
                if q_xt and k_xt:
                    want[qi, ki] = q // B == k // B
                elif q_xt and not k_xt:
                    want[qi, ki] = k // B < q // B
                elif not q_xt and not k_xt:
                    want[qi, ki] = k <= q
                else:
                    want[qi, ki] = False
        assert torch.equal(got, want), (L, B)


def test_quadratic_pattern_rules():
    n = 3
    pat = quadratic_pattern(n, [0, 1, 2], n)
    assert pat.shape == (12, 12)
    for qi in range(12):
        for ki in range(12):
            if qi < n:  # chain token: causal over the chain only
                want = ki < n and ki <= qi
            else:
                g = (qi - n) // n
                want = (ki < n and ki <= g) or (ki >= n and (ki - n) // n == g)
            assert bool(pat[qi, ki]) == want, (qi, ki)


def test_with_prefix_ragged_rows():
    pat = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    full = with_prefix(pat, torch.tensor([3, 1]))
    assert full.shape == (2, 1, 2, 5)
    assert full[0, 0].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    # Row 1 has one cached token; slots 3..4 belong to no token of this row and stay hidden.
    assert full[1, 0].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]


def test_joint_loss_equals_hand_computation():
    model = tiny_model(seed=7, std=0.3)
    torch.manual_seed(0)
    L, B = 6, 3
    x0 = torch.randint(4, 48, (2, L)).to(TEST_DEVICE)
    masked = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 1]], dtype=torch.bool, device=TEST_DEVICE)
    p = torch.tensor([0.5, 0.25], device=TEST_DEVICE)
    xt = torch.where(masked, torch.full_like(x0, 3), x0)
    out = joint_loss(model, x0, block_size=B, alpha=0.3, corruption=(xt, masked, p))

    # By hand: run each half separately with its own visibility and sum the terms.
    diff_sum, ar_sum = 0.0, 0.0
    for r in range(2):
        # AR half: plain causal forward on x0.
        ar_logits = model(x0[r:r + 1]).logits[0]
        for i in range(L - 1):
            ar_sum += F.cross_entropy(ar_logits[i], x0[r, i + 1]).item()
        # Diffusion half: block b sees clean x0 of earlier blocks (causal among them) + its own xt block.
        for blk in range(math.ceil(L / B)):
            s, e = blk * B, min(L, blk * B + B)
            ids = torch.cat([x0[r, :s], xt[r, s:e]])[None]
            m = torch.ones(e, e, dtype=torch.bool, device=TEST_DEVICE).tril()
            m[s:, s:] = True
            logits = model(ids, position_ids=torch.arange(e, device=TEST_DEVICE)[None], attention_mask=m).logits[0]
            for i in range(s, e):
                if masked[r, i]:
                    diff_sum += F.cross_entropy(logits[i], x0[r, i]).item() / p[r].item()
    n = int(masked.sum()) + 2 * (L - 1)
    assert math.isclose(out.ar_loss.item(), ar_sum, rel_tol=1e-4)
    assert math.isclose(out.diffusion_loss.item(), diff_sum, rel_tol=1e-4)
    assert math.isclose(out.loss.item(), (0.3 * diff_sum + ar_sum) / n, rel_tol=1e-4)
    assert out.n_masked == 5 and out.n_ar_tokens == 10


def test_joint_loss_respects_loss_mask_and_backprops():
    model = tiny_model(seed=8, std=0.1)
    x0 = torch.randint(4, 48, (3, 8)).to(TEST_DEVICE)
    loss_mask = torch.zeros(3, 8, dtype=torch.bool, device=TEST_DEVICE)
    loss_mask[:, 5:] = True
    out = joint_loss(model, x0, loss_mask=loss_mask, generator=torch.Generator().manual_seed(0))
    assert out.n_ar_tokens == 3 * 3  # targets at positions 5, 6, 7
    assert out.n_masked <= 3 * 3
    out.loss.backward()
    assert model.diffusion_head.weight.grad is not None
