"""The PEFT LoRA drafter: active only in draft forwards; changes drafts, never the emitted tokens."""

import pytest
import torch
from helpers import TEST_DEVICE, random_prompts, tiny_model
from peft import LoraConfig, PeftModel, get_peft_model

import trimode

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The published drafter (o_proj), and design (b): a draft pathway carried by an adapter on every
# projection of a frozen AR model, whose AR and verification forwards must stay the base model's.
TARGETS = pytest.mark.parametrize("targets", [["o_proj"], ALL_PROJECTIONS], ids=["o_proj", "all"])


def _with_saved_adapter(tmp_path, targets=("o_proj",)):
    base = tiny_model(seed=21)
    base.save_pretrained(tmp_path)
    peft = get_peft_model(trimode.TrimodeModel.from_pretrained(tmp_path),
                          LoraConfig(r=8, lora_alpha=32, target_modules=list(targets), init_lora_weights=False))
    peft.save_pretrained(tmp_path / "linear_spec_lora")
    # The published usage, unchanged:
    loaded = PeftModel.from_pretrained(trimode.TrimodeModel.from_pretrained(tmp_path), tmp_path,
                                       subfolder="linear_spec_lora").eval().to(TEST_DEVICE)
    return base, loaded


@TARGETS
def test_adapter_only_in_draft_forwards(tmp_path, targets):
    base, peft = _with_saved_adapter(tmp_path, targets)
    inner = peft.model
    ids = torch.randint(4, 48, (1, 8)).to(TEST_DEVICE)
    assert torch.equal(inner(ids).logits, base(ids).logits)  # plain / AR forward: adapter off
    assert not torch.allclose(inner(ids, use_drafter=True).logits, base(ids).logits)


@TARGETS
def test_adapter_gated_per_position(tmp_path, targets):
    """A bool gate turns the adapter on at some positions only (quadratic-spec's mask
    groups): positions before the first gated one compute exactly the base model."""
    base, peft = _with_saved_adapter(tmp_path, targets)
    inner = peft.model
    ids = torch.randint(4, 48, (2, 8)).to(TEST_DEVICE)
    gate = torch.arange(8, device=TEST_DEVICE) >= 5
    ref, gated = base(ids).logits, inner(ids, use_drafter=gate).logits
    assert torch.equal(gated[:, :5], ref[:, :5])  # causal: they never see a gated position
    assert not torch.allclose(gated[:, 5:], ref[:, 5:])
    per_row = inner(ids, use_drafter=gate.expand(2, 8)).logits  # (B, Q) gate: same thing
    assert torch.equal(per_row, gated)
    assert torch.equal(inner(ids).logits, ref)  # the gate does not outlive its forward
    with pytest.raises(ValueError, match=r"shape \(8,\) or \(2, 8\)"):
        inner(ids, use_drafter=torch.ones(7, dtype=torch.bool))


@TARGETS
def test_adapter_changes_drafts_not_output(tmp_path, targets):
    base, peft = _with_saved_adapter(tmp_path, targets)
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
    block = torch.tensor([[prompts[0][-1], 3, 3, 3]], device=TEST_DEVICE)
    cache = trimode.KVCache.for_model(model, 1, 32)
    model(torch.tensor([prompts[0][:-1]], device=TEST_DEVICE), past_key_values=cache)
    from trimode.masks import block_pattern
    return model(block, attention_mask=block_pattern(4, device=TEST_DEVICE), past_key_values=cache, cache_write=False,
                 use_drafter=True).logits.argmax(-1).tolist()


def _lora_on_every_projection(seed: int = 21):
    base = tiny_model(seed=seed)
    return base, get_peft_model(tiny_model(seed=seed), LoraConfig(r=4, lora_alpha=8, target_modules=ALL_PROJECTIONS))


def test_lora_trains_on_the_joint_loss_in_the_diffusion_stream_only():
    """An adapter attached for joint-loss training gets gradients and lowers the loss; by default it acts
    on the diffusion stream only, so the AR term and every AR forward stay the base model's, bit for bit."""
    from trimode.loss import corrupt, joint_loss

    base, peft = _lora_on_every_projection()
    ids = torch.randint(4, 48, (4, 16), generator=torch.Generator().manual_seed(0)).to(TEST_DEVICE)
    corruption = corrupt(ids, base.config.mask_token_id, generator=torch.Generator().manual_seed(1))
    reference = joint_loss(base, ids, corruption=corruption)
    trainable = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    first = None
    for _ in range(6):
        out = joint_loss(peft, ids, corruption=corruption)
        out.loss.backward()
        assert all(p.grad is not None for p in trainable)
        assert sum(p.grad.abs().sum() for p in trainable) > 0
        opt.step()
        opt.zero_grad()
        first = first if first is not None else out
        assert torch.equal(out.ar_loss, reference.ar_loss)  # clean stream: the base model
    assert out.diffusion_loss < first.diffusion_loss
    probe = torch.randint(4, 48, (2, 10), generator=torch.Generator().manual_seed(2)).to(TEST_DEVICE)
    with torch.no_grad():
        assert torch.equal(peft.model(probe).logits, base(probe).logits)  # AR / verification forwards: off
        assert not torch.allclose(peft.model(probe, use_drafter=True).logits, base(probe).logits)


def test_joint_loss_adapter_scope():
    from trimode.loss import corrupt, joint_loss

    base, peft = _lora_on_every_projection()
    ids = torch.randint(4, 48, (2, 12), generator=torch.Generator().manual_seed(0)).to(TEST_DEVICE)
    corruption = corrupt(ids, base.config.mask_token_id, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in peft.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)  # a trained-looking adapter (LoRA starts as a no-op)
        ref = joint_loss(base, ids, corruption=corruption)
        on_all = joint_loss(peft, ids, corruption=corruption, adapters="all")
        off = joint_loss(peft, ids, corruption=corruption, adapters="none")
    assert not torch.allclose(on_all.ar_loss, ref.ar_loss)  # "all": the AR term sees the adapter too
    assert torch.equal(off.ar_loss, ref.ar_loss) and torch.equal(off.diffusion_loss, ref.diffusion_loss)
    with pytest.raises(ValueError, match="adapters='clean' is not supported; allowed: noisy, all, none"):
        joint_loss(peft, ids, corruption=corruption, adapters="clean")


def test_diffusion_denoises_with_the_drafter_when_the_config_says_so(tmp_path, monkeypatch):
    """config.diffusion_drafter: a converted AR model's diffusion pathway is its drafter (design b)."""
    from trimode.generation.loop import Runner

    base, peft = _with_saved_adapter(tmp_path, ALL_PROJECTIONS)
    model = peft.model
    seen = []
    peek = Runner.peek_block
    monkeypatch.setattr(Runner, "peek_block", lambda self, tokens, drafter=False: seen.append(drafter) or
                        peek(self, tokens, drafter))
    prompts = random_prompts(torch.Generator().manual_seed(1), 2)
    kw = dict(max_new_tokens=12, block_length=4, eos_token_id=[], threshold=0.5)
    assert model.config.diffusion_drafter is False
    without = model.generate(prompts, **kw)[0]
    assert seen and not any(seen)
    seen.clear()
    model.config.diffusion_drafter = True
    with_drafter = model.generate(prompts, **kw)[0]
    assert seen and all(seen)
    assert not torch.equal(with_drafter, without)
    assert torch.equal(model.ar_generate(prompts, max_new_tokens=12, eos_token_id=[])[0],
                       base.ar_generate(prompts, max_new_tokens=12, eos_token_id=[])[0])


def test_adapters_injected_after_forwards_are_switched_too():
    """The adapter layers are looked up once per adapter set: one injected after the model
    already ran must still be off in plain forwards and on in draft forwards."""
    model = tiny_model(seed=3)
    ids = torch.randint(4, 48, (1, 6)).to(TEST_DEVICE)
    base = model(ids).logits
    inner = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=ALL_PROJECTIONS,
                                             init_lora_weights=False)).model
    assert torch.equal(inner(ids).logits, base)
    assert not torch.allclose(inner(ids, use_drafter=True).logits, base)
