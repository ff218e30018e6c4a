"""Cached equals uncached; batched rows equal the same rows alone; cache bookkeeping."""

import pytest
import torch
from helpers import TEST_DEVICE, random_prompts, tiny_model

import trimode
from trimode.masks import block_pattern


def test_cached_step_logits_equal_uncached():
    model = tiny_model(seed=1)
    ids = torch.randint(4, 48, (2, 13)).to(TEST_DEVICE)
    full = model(ids).logits
    cache = trimode.KVCache.for_model(model, 2, 32)
    parts = [model(ids[:, :5], past_key_values=cache).logits]
    for t in range(5, 13):
        parts.append(model(ids[:, t:t + 1], past_key_values=cache).logits)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-4)
    assert cache.lengths.tolist() == [13, 13]


def test_peek_does_not_commit_and_write_equals_recompute():
    model = tiny_model(seed=2)
    ids = torch.randint(4, 48, (1, 9)).to(TEST_DEVICE)
    cache = trimode.KVCache.for_model(model, 1, 32)
    model(ids[:, :6], past_key_values=cache)
    block = torch.tensor([[int(ids[0, 6]), 3, 3]], device=TEST_DEVICE)
    peek = model(block, attention_mask=block_pattern(3), past_key_values=cache, cache_write=False).logits
    assert cache.lengths.tolist() == [6]
    # Uncached reference of the same peek: prefix causal, block bidirectional.
    full_ids = torch.cat([ids[:, :6], block], 1)
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    mask[6:, 6:] = True
    ref = model(full_ids, attention_mask=mask).logits[:, 6:]
    assert torch.allclose(peek, ref, atol=1e-4)
    # Crop then write the true continuation: equals plain causal logits.
    cont = model(ids[:, 6:9], past_key_values=cache).logits
    assert torch.allclose(cont, model(ids).logits[:, 6:9], atol=1e-4)
    cache.crop(7)
    assert cache.lengths.tolist() == [7]
    with pytest.raises(ValueError, match="crop"):
        cache.crop(20)


def test_ragged_cache_rows_equal_rows_alone():
    model = tiny_model(seed=4)
    gen = torch.Generator().manual_seed(4)
    prompts = random_prompts(gen, 3, low=3, high=10)
    for mode in ("ar", "diffusion", "linear-spec", "quadratic-spec"):
        kw = dict(max_new_tokens=9, eos_token_id=[], block_length=3)
        batched, _ = model.decode_mode(mode, prompts, **kw)
        for b, p in enumerate(prompts):
            alone, _ = model.decode_mode(mode, [p], **kw)
            assert batched[b, :alone.shape[1]].tolist() == alone[0].tolist(), mode


def test_left_padded_tensor_with_attention_mask():
    model = tiny_model(seed=5)
    p1, p2 = [5, 6, 7, 8, 9], [10, 11]
    ids = torch.tensor([p1, [0, 0, 0] + p2])
    mask = torch.tensor([[1] * 5, [0, 0, 0, 1, 1]])
    out, _ = model.ar_generate(ids, max_new_tokens=4, attention_mask=mask, eos_token_id=[])
    alone, _ = model.ar_generate([p2], max_new_tokens=4, eos_token_id=[])
    assert out[1, :6].tolist() == alone[0].tolist()
    assert out.shape == (2, 9)
    assert out[1, 6:].tolist() == [0, 0, 0]  # right-padded with pad_token_id


def test_padding_mask_forward_matches_unpadded():
    model = tiny_model(seed=6)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]], device=TEST_DEVICE)
    out = model(ids, attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], device=TEST_DEVICE)).logits
    assert torch.allclose(out[1, :2], model(ids[1:, :2]).logits[0], atol=1e-4)
