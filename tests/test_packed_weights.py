"""Packed projection weights (CPU inference layout): same math, same checkpoints, same LoRA."""

import pytest
import torch
from helpers import TEST_DEVICE, random_prompts, tiny_model
from peft import LoraConfig, get_peft_model

import trimode
from trimode.projections import Projection, base_projection

# oneDNN's packed layout is a CPU one: pack_weights leaves CUDA weights as they are.
pytestmark = pytest.mark.skipif(TEST_DEVICE.type != "cpu", reason="weight packing is for CPU inference")

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _projections(model):
    return [m for m in model.modules() if isinstance(m, Projection)]


def test_packed_forward_matches_dense_and_frees_the_dense_copy():
    model = tiny_model(seed=9)
    ids = torch.randint(4, 48, (2, 7))
    with torch.no_grad():
        want = [model(ids[:, :k]).logits for k in (1, 3, 7)]
        model.pack_weights(min_elements=0)
        got = [model(ids[:, :k]).logits for k in (1, 3, 7)]
    for w, g in zip(want, got):
        assert torch.allclose(g, w, atol=1e-4)
    attn, mlp = model.encoder.layers[0].self_attn, model.encoder.layers[0].mlp
    assert attn.q_proj._packed is attn.k_proj._packed is attn.v_proj._packed  # one matmul for q, k, v
    assert mlp.gate_proj._packed is mlp.up_proj._packed and mlp.down_proj._packed is not mlp.up_proj._packed
    for proj in _projections(model):
        assert proj.packed
        assert proj.weight.untyped_storage().nbytes() == proj.weight.element_size()  # no dense copy kept
        assert proj.weight.shape == (proj.out_features, proj.in_features)  # name and shape unchanged


def test_groups_below_the_size_threshold_stay_dense():
    model = tiny_model(seed=9)  # hidden 32, intermediate 64: q/k/v 2048 weights, o 1024, gate/up 4096, down 2048
    ids = torch.randint(4, 48, (1, 5))
    with torch.no_grad():
        want = model(ids).logits
        model.pack_weights(min_elements=4096)
        got = model(ids).logits
    mlp, attn = model.encoder.layers[0].mlp, model.encoder.layers[0].self_attn
    assert mlp.gate_proj.packed and mlp.up_proj.packed  # 2 * 64 * 32 = 4096 weights: packed
    assert not attn.q_proj.packed and not attn.o_proj.packed and not mlp.down_proj.packed
    assert torch.allclose(got, want, atol=1e-4)


def test_state_dict_and_save_of_a_packed_model_are_the_dense_weights(tmp_path):
    dense = tiny_model(seed=3)
    want = {k: v.clone() for k, v in dense.state_dict().items()}
    packed = tiny_model(seed=3).pack_weights(min_elements=0)
    got = packed.state_dict()
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    packed.save_pretrained(tmp_path)
    reloaded = trimode.TrimodeModel.from_pretrained(tmp_path)
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, want[name]), name


def test_load_state_dict_into_a_packed_model_unpacks_it():
    model = tiny_model(seed=4).pack_weights(min_elements=0)
    other = tiny_model(seed=5)
    model.load_state_dict(other.state_dict())
    assert not any(p.packed for p in _projections(model))
    ids = torch.randint(4, 48, (1, 5))
    assert torch.equal(model(ids).logits, other(ids).logits)


def test_a_forward_with_gradients_unpacks_and_trains_the_dense_weights():
    model = tiny_model(seed=6).train()
    ids = torch.randint(4, 48, (2, 6))
    dense_grads = torch.autograd.grad(model(ids, labels=ids).loss, list(model.parameters()))
    model.pack_weights(min_elements=0)
    loss = model(ids, labels=ids).loss  # grad enabled and weights need it: back to dense first
    assert not any(p.packed for p in _projections(model))
    for g, want in zip(torch.autograd.grad(loss, list(model.parameters())), dense_grads):
        assert torch.allclose(g, want, atol=1e-6)


def test_moving_a_packed_model_moves_its_real_weights():
    model = tiny_model(seed=7)
    want = model.diffusion_head.weight.detach().double().clone()
    model.pack_weights(min_elements=0).to(torch.float64)
    assert torch.equal(model.diffusion_head.weight, want)


@pytest.mark.parametrize("targets", [["o_proj"], ALL_PROJECTIONS], ids=["o_proj", "all"])
def test_lora_on_packed_weights_matches_lora_on_dense(targets):
    """PEFT wraps the projections; the grouped matmul feeds each wrapped base layer, the
    LoRA update (and its per-position gate) is added on top, exactly as with dense weights."""
    peft = get_peft_model(tiny_model(seed=21),
                          LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False)).model
    ids = torch.randint(4, 48, (2, 8))
    gate = torch.arange(8) >= 5
    with torch.no_grad():
        want = [peft(ids).logits, peft(ids, use_drafter=True).logits, peft(ids, use_drafter=gate).logits]
        peft.pack_weights(min_elements=0)
        assert base_projection(peft.encoder.layers[0].self_attn.o_proj).packed
        got = [peft(ids).logits, peft(ids, use_drafter=True).logits, peft(ids, use_drafter=gate).logits]
    for w, g in zip(want, got):
        assert torch.allclose(g, w, atol=1e-4)
    assert torch.equal(got[2][:, :5], got[0][:, :5])  # ungated positions: exactly the base model
    assert not torch.allclose(got[1], got[0])


def test_speculation_is_exact_with_packed_weights():
    model = tiny_model(seed=12).pack_weights(min_elements=0)
    prompts = random_prompts(torch.Generator().manual_seed(12), 3)
    ref, _ = model.ar_generate(prompts, max_new_tokens=19, eos_token_id=[])
    for mode in ("linear-spec", "quadratic-spec"):
        out, _ = model.decode_mode(mode, prompts, max_new_tokens=19, block_length=5, eos_token_id=[])
        assert torch.equal(out, ref), mode


def test_a_packed_model_can_be_deep_copied_and_pickled():
    import copy
    import io

    model = tiny_model(seed=8).requires_grad_(False).pack_weights(min_elements=0)  # as load() returns it
    ids = torch.randint(4, 48, (2, 5))
    want = model(ids).logits  # no gradients asked for: stays packed
    assert model.diffusion_head.packed
    twin = copy.deepcopy(model)
    assert twin.encoder.layers[0].self_attn.q_proj._packed is twin.encoder.layers[0].self_attn.k_proj._packed
    assert twin.encoder.layers[0].self_attn.q_proj._packed is not model.encoder.layers[0].self_attn.q_proj._packed
    assert torch.equal(twin(ids).logits, want)
    assert all(p.weight.untyped_storage().nbytes() == p.weight.element_size() for p in _projections(twin))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(ids).logits, want)


def test_weights_packed_in_many_chunks_round_trip(monkeypatch):
    """Small chunks (7 rows): members straddle chunk boundaries; forward, state_dict and unpack agree."""
    from trimode.projections import PackedWeights

    monkeypatch.setattr(PackedWeights, "CHUNK_BYTES", 7 * 32 * 4)  # 7 rows of 32 float32 inputs
    dense = tiny_model(seed=10, attention_bias=True)
    want = {k: v.clone() for k, v in dense.state_dict().items()}
    ids = torch.randint(4, 48, (2, 6))
    with torch.no_grad():
        ref = dense(ids).logits
        packed = tiny_model(seed=10, attention_bias=True).pack_weights(min_elements=0)
        assert len(packed.encoder.layers[0].self_attn.q_proj._packed.chunks) > 1
        assert torch.allclose(packed(ids).logits, ref, atol=1e-4)
    for name, value in packed.state_dict().items():
        assert torch.equal(value, want[name]), name
    packed.pack_weights(False)
    for name, value in packed.state_dict().items():
        assert torch.equal(value, want[name]), name
