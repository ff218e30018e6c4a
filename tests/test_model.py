"""The model: Ministral-3 parity, transformers Auto* registration, the published layout, config errors."""

import json

import pytest
import torch
from helpers import tiny_model
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, Ministral3Config, Ministral3Model

import trimode

PUBLISHED_ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "beta_fast": 32.0, "beta_slow": 1.0,
                  "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 16,
                  "llama_4_scaling_beta": 0.1}
SHAPE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5)


def test_ar_logits_match_transformers_ministral3():
    model = trimode.TrimodeModel(trimode.TrimodeConfig(**SHAPE, rope_parameters=dict(PUBLISHED_ROPE),
                                                       mask_token_id=5)).eval()
    ref = Ministral3Model(Ministral3Config(**SHAPE, rope_parameters=dict(PUBLISHED_ROPE))).eval()
    backbone = {k.removeprefix("encoder."): v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    ref.load_state_dict(backbone)
    # 70 positions with original_max_position_embeddings=16: YaRN and the llama-4 query scaling both act.
    ids = torch.randint(0, 97, (2, 70))
    with torch.no_grad():
        want = model.diffusion_head(ref(ids).last_hidden_state)
        got = model(ids).logits
    assert (got - want).abs().max().item() <= 1e-4


def test_auto_classes_roundtrip(tmp_path):
    cfg = AutoConfig.for_model("trimode", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=50, mask_token_id=3)
    assert isinstance(cfg, trimode.TrimodeConfig) and cfg.head_dim == 8
    model = AutoModel.from_config(cfg).eval()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    ids = torch.randint(4, 50, (1, 7))
    for trust in (False, True):
        loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=trust)
        assert type(loaded) is trimode.TrimodeModel
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    names = set(model.state_dict())
    assert "diffusion_head.weight" in names and "encoder.layers.0.self_attn.o_proj.weight" in names


def _write_published_checkpoint(path, model, shards=2):
    cfg = {"architectures": ["NemotronLabsDiffusionModel"], "model_type": "nemotron_labs_diffusion",
           **SHAPE, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
           "sliding_window": None, "bos_token_id": 1, "eos_token_id": 2, "mask_token_id": 5, "block_size": 8,
           "dlm_paradigm": "block_diff", "dlm_loss_weight": 0.3, "dp_varying_mask_ratio": False,
           "attn_implementation": "flex_attention", "rope_parameters": dict(PUBLISHED_ROPE)}
    (path / "config.json").write_text(json.dumps(cfg))
    state = model.state_dict()
    keys = sorted(state)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s::shards]
        save_file({k: state[k].contiguous() for k in part}, path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("trust", [False, True])
def test_published_layout_loads_with_all_decoders(tmp_path, trust):
    src = trimode.TrimodeModel(trimode.TrimodeConfig(**SHAPE, rope_parameters=dict(PUBLISHED_ROPE),
                                                     mask_token_id=5, block_size=8)).eval()
    _write_published_checkpoint(tmp_path, src)
    model = AutoModel.from_pretrained(tmp_path, trust_remote_code=trust).eval()
    assert isinstance(model, trimode.TrimodeModel)
    assert model.config.model_type == "nemotron_labs_diffusion" and model.config.block_size == 8
    ids = torch.randint(6, 97, (1, 9))
    assert torch.equal(model(ids).logits, src(ids).logits)
    ref, _ = src.ar_generate(ids, 10, eos_token_id=[])
    for method in ("ar_generate", "linear_spec_generate", "quadratic_spec_generate"):
        out, nfe = getattr(model, method)(ids, 10, eos_token_id=[])
        assert torch.equal(out, ref) and nfe >= 1
    out, nfe = model.generate(ids, 10, block_length=4, threshold=0.9, eos_token_id=[])
    assert out.shape == (1, 19)


@pytest.mark.parametrize("bad,match", [
    (dict(num_key_value_heads=3), "num_key_value_heads=3 must divide"),
    (dict(mask_token_id=500), "mask_token_id=500"),
    (dict(dlm_paradigm="ar"), "dlm_paradigm='ar'"),
    (dict(block_size=0), "block_size=0"),
])
def test_config_errors_name_the_field(bad, match):
    kw = dict(vocab_size=50, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, mask_token_id=3)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        trimode.TrimodeConfig(**kw)


@pytest.mark.parametrize("call,match", [
    (dict(max_new_tokens=-1), "max_new_tokens=-1"),
    (dict(block_length=0), "block_length=0"),
    (dict(threshold=1.5), "threshold=1.5"),
    (dict(temperature=-1.0), "temperature=-1.0"),
    (dict(top_p=0.0), "top_p=0.0"),
    (dict(prompt=[[]]), "prompt 0 is empty"),
    (dict(prompt=[[5, 999]]), "token id 999"),
    (dict(prompt=[{"input_ids": [5, 6], "attention_mask": [1, 1]}]), r"holds 'input_ids' \(str\), not a token id"),
    (dict(prompt=[[5, 6.0]]), r"holds 6.0 \(float\)"),
])
def test_decoder_argument_errors(call, match):
    model = tiny_model()
    prompt = call.pop("prompt", [[5, 6]])
    with pytest.raises(ValueError, match=match):
        model.generate(prompt, **{"max_new_tokens": 4, **call})


def test_max_new_tokens_zero_returns_prompt():
    model = tiny_model()
    out, nfe = model.linear_spec_generate([[5, 6, 7]], max_new_tokens=0)
    assert out.tolist() == [[5, 6, 7]] and nfe == 0
