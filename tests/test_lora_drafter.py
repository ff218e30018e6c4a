"""The PEFT LoRA drafter: active only in draft forwards; changes drafts, never the emitted tokens."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import trimode
from helpers import random_prompts, tiny_model


def _with_saved_adapter(tmp_path):
    base = tiny_model(seed=21)
    base.save_pretrained(tmp_path)
    peft = get_peft_model(trimode.TrimodeModel.from_pretrained(tmp_path),
                          LoraConfig(r=8, lora_alpha=32, target_modules=["o_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "linear_spec_lora")
    # The published usage, unchanged:
    loaded = PeftModel.from_pretrained(trimode.TrimodeModel.from_pretrained(tmp_path), tmp_path,
                                       subfolder="linear_spec_lora").eval()
    return base, loaded


def test_adapter_only_in_draft_forwards(tmp_path):
    base, peft = _with_saved_adapter(tmp_path)
    inner = peft.model
    ids = torch.randint(4, 48, (1, 8))
    assert torch.equal(inner(ids).logits, base(ids).logits)  # plain / AR forward: adapter off
    assert not torch.allclose(inner(ids, use_drafter=True).logits, base(ids).logits)


def test_adapter_gated_per_position(tmp_path):
    """A bool gate turns the adapter on at some positions only (quadratic-spec's mask
    groups): positions before the first gated one compute exactly the base model."""
    base, peft = _with_saved_adapter(tmp_path)
    inner = peft.model
    ids = torch.randint(4, 48, (2, 8))
    gate = torch.arange(8) >= 5
    ref, gated = base(ids).logits, inner(ids, use_drafter=gate).logits
    assert torch.equal(gated[:, :5], ref[:, :5])  # causal: they never see a gated position
    assert not torch.allclose(gated[:, 5:], ref[:, 5:])
    per_row = inner(ids, use_drafter=gate.expand(2, 8)).logits  # (B, Q) gate: same thing
    assert torch.equal(per_row, gated)
    assert torch.equal(inner(ids).logits, ref)  # the gate does not outlive its forward
    with pytest.raises(ValueError, match=r"shape \(8,\) or \(2, 8\)"):
        inner(ids, use_drafter=torch.ones(7, dtype=torch.bool))


def test_adapter_changes_drafts_not_output(tmp_path):
    base, peft = _with_saved_adapter(tmp_path)
    prompts = random_prompts(torch.Generator().manual_seed(0), 3)
    kw = dict(max_new_tokens=17, block_length=4, eos_token_id=[], return_stats=True)
    ref, _ = base.ar_generate(prompts, max_new_tokens=17, eos_token_id=[])
    for method in ("linear_spec_generate", "quadratic_spec_generate"):
        with_lora, _, s1 = getattr(peft.model, method)(prompts, **kw)
        without, _, s0 = getattr(base, method)(prompts, **kw)
        assert torch.equal(with_lora, ref) and torch.equal(without, ref)
        # Both modes draft with the adapter: other drafts, so other acceptance lengths.
        assert s1.acceptance_lengths != s0.acceptance_lengths, method
    # The drafter's proposals differ with the adapter, on the same prefix.
    assert _draft_tokens(peft.model, prompts) != _draft_tokens(base, prompts)
    out, _ = peft.model.ar_generate(prompts, max_new_tokens=17, eos_token_id=[])
    assert torch.equal(out, ref)


def _draft_tokens(model, prompts):
    block = torch.tensor([[prompts[0][-1], 3, 3, 3]])
    cache = trimode.KVCache.for_model(model, 1, 32)
    model(torch.tensor([prompts[0][:-1]]), past_key_values=cache)
    from trimode.masks import block_pattern
    return model(block, attention_mask=block_pattern(4), past_key_values=cache, cache_write=False,
                 use_drafter=True).logits.argmax(-1).tolist()
