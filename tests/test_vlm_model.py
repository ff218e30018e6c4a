"""The VLM (``nemotron_labs_diffusion_vlm``): config, published weight names, parity with transformers'
Pixtral tower + Mistral-3 projector and Mistral3Model, Auto round trip, image-token errors."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, Mistral3Config, Mistral3Model, PixtralVisionConfig, PixtralVisionModel
from transformers.models.mistral3.modeling_mistral3 import Mistral3MultiModalProjector

import trimode
from trimode.configuration_vlm import NemotronLabsDiffusionVLMConfig
from trimode.modeling_vlm import NemotronLabsDiffusionVLMModel

FIXTURE = Path(__file__).parent / "fixtures" / "published-configs" / "nld-vlm-8b.json"
ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 16, "llama_4_scaling_beta": 0.1}
TEXT = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=4,
              image_size=32, num_channels=3, hidden_act="gelu", rope_parameters={"rope_theta": 10000.0})
IMAGE_TOKEN = 7
WEIGHT_STD = 0.15
# Two images, (H, W) in pixels, multiples of patch * merge = 8: 2x1 and 1x3 merged tokens.
IMAGE_SIZES = torch.tensor([[16, 8], [8, 24]])
N_FEATURES = 2 + 3


def tiny_config(**overrides) -> NemotronLabsDiffusionVLMConfig:
    kw = dict(TEXT, rope_parameters=dict(ROPE), mask_token_id=5, vision_config=dict(VISION),
              image_token_id=IMAGE_TOKEN)
    kw.update(overrides)
    return NemotronLabsDiffusionVLMConfig(**kw)


def tiny_model(**overrides) -> NemotronLabsDiffusionVLMModel:
    torch.manual_seed(0)
    model = NemotronLabsDiffusionVLMModel(tiny_config(**overrides)).eval()
    with torch.no_grad():  # non-trivial norms and O(1) features, so a wrong norm or scale shows
        for p in model.parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.dim() == 1 else WEIGHT_STD * torch.randn_like(p))
    return model


def pixels() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 16, 24)


def prompt() -> torch.Tensor:
    """(1, 14): text, 2 placeholders (image 1), text, 3 placeholders (image 2), text."""
    t = IMAGE_TOKEN
    return torch.tensor([[1, 20, t, t, 30, 31, t, t, t, 40, 41, 42, 43, 44]])


def test_published_config_loads_with_vision_defaults_and_round_trips(tmp_path):
    raw = json.loads(FIXTURE.read_text())
    assert raw["model_type"] == "nemotron_labs_diffusion_vlm" and "vision_config" not in raw
    cfg = NemotronLabsDiffusionVLMConfig.from_pretrained(FIXTURE)
    assert type(cfg) is NemotronLabsDiffusionVLMConfig and cfg.model_type == "nemotron_labs_diffusion_vlm"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.mask_token_id) == (4096, 34, 131073, 100)
    v = cfg.vision_config
    assert isinstance(v, PixtralVisionConfig)
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.head_dim,
            v.patch_size, v.image_size, v.num_channels) == (1024, 4096, 24, 16, 64, 14, 1540, 3)
    assert v.rope_parameters["rope_theta"] == 10000.0
    assert (cfg.spatial_merge_size, cfg.projector_hidden_act, cfg.multimodal_projector_bias,
            cfg.vision_feature_layer, cfg.image_token_id) == (2, "gelu", False, -1, None)
    cfg.save_pretrained(tmp_path)
    back = NemotronLabsDiffusionVLMConfig.from_pretrained(tmp_path)
    assert back.to_dict() == cfg.to_dict()
    assert json.loads((tmp_path / "config.json").read_text())["vision_config"]["model_type"] == "pixtral"
    assert "auto_map" not in back.to_dict()
    # A dict vision_config is not mutated, and a custom one round-trips.
    vision = dict(VISION)
    custom = tiny_config(vision_config=vision)
    assert vision == VISION and custom.vision_config.hidden_size == 32 and custom.image_token_id == IMAGE_TOKEN


def test_state_dict_has_published_names():
    names = set(tiny_model().state_dict())
    for name in ("encoder.vision_tower.patch_conv.weight", "encoder.vision_tower.ln_pre.weight",
                 "encoder.vision_tower.transformer.layers.0.attention.q_proj.weight",
                 "encoder.vision_tower.transformer.layers.1.attention.o_proj.weight",
                 "encoder.vision_tower.transformer.layers.0.attention_norm.weight",
                 "encoder.vision_tower.transformer.layers.0.feed_forward.gate_proj.weight",
                 "encoder.vision_tower.transformer.layers.0.feed_forward.down_proj.weight",
                 "encoder.vision_tower.transformer.layers.0.ffn_norm.weight",
                 "encoder.multi_modal_projector.norm.weight",
                 "encoder.multi_modal_projector.patch_merger.merging_layer.weight",
                 "encoder.multi_modal_projector.linear_1.weight", "encoder.multi_modal_projector.linear_2.weight",
                 "encoder.embed_tokens.weight", "encoder.layers.1.self_attn.q_proj.weight", "encoder.norm.weight",
                 "diffusion_head.weight"):
        assert name in names, name
    assert not any("lm_head" in n or n.endswith(".bias") for n in names)
    assert all(n.startswith(("encoder.", "diffusion_head.")) for n in names)


def _reference_vision(model):
    """transformers' tower and projector built from the same config, with the model's weights."""
    cfg = model.config
    tower = PixtralVisionModel(PixtralVisionConfig(**VISION)).eval()
    tower.load_state_dict({k.removeprefix("encoder.vision_tower."): v for k, v in model.state_dict().items()
                           if k.startswith("encoder.vision_tower.")})
    m3 = Mistral3Config(vision_config=dict(VISION), text_config=dict(TEXT, model_type="ministral3"),
                        spatial_merge_size=cfg.spatial_merge_size, projector_hidden_act="gelu",
                        multimodal_projector_bias=False, vision_feature_layer=-1)
    proj = Mistral3MultiModalProjector(m3).eval()
    proj.load_state_dict({k.removeprefix("encoder.multi_modal_projector."): v
                          for k, v in model.state_dict().items() if k.startswith("encoder.multi_modal_projector.")})
    return tower, proj


def test_image_features_match_transformers_tower_and_projector():
    model = tiny_model()
    tower, proj = _reference_vision(model)
    with torch.no_grad():
        got = model.get_image_features(pixels(), IMAGE_SIZES)
        hidden = tower(pixels(), image_sizes=IMAGE_SIZES, output_hidden_states=True).hidden_states[-1]
        want = proj(hidden.squeeze(0), IMAGE_SIZES)
    assert [f.shape for f in got] == [(2, TEXT["hidden_size"]), (3, TEXT["hidden_size"])]
    assert want.abs().max().item() > 0.1
    assert (torch.cat(got) - want).abs().max().item() <= 1e-5


def test_ar_logits_with_images_match_transformers_mistral3():
    model = tiny_model()
    ref_cfg = Mistral3Config(vision_config=dict(VISION),
                             text_config=dict(TEXT, model_type="ministral3", rope_parameters=dict(ROPE)),
                             image_token_index=IMAGE_TOKEN, spatial_merge_size=2, projector_hidden_act="gelu",
                             multimodal_projector_bias=False, vision_feature_layer=-1, tie_word_embeddings=False)
    ref = Mistral3Model(ref_cfg).eval()
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith(("encoder.vision_tower.", "encoder.multi_modal_projector.")):
            state[k.removeprefix("encoder.")] = v
        elif k.startswith("encoder."):
            state["language_model." + k.removeprefix("encoder.")] = v
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if not m.endswith("inv_freq")]
    ids = prompt()
    with torch.no_grad():
        want = model.diffusion_head(ref(input_ids=ids, pixel_values=pixels(),
                                        image_sizes=IMAGE_SIZES).last_hidden_state)
        got = model(ids, pixel_values=pixels(), image_sizes=IMAGE_SIZES).logits
        text_only = model(ids).logits
    assert (got - want).abs().max().item() <= 1e-4
    assert (got - text_only).abs().max().item() > 1e-3  # the images change the logits


def test_features_land_at_placeholders_and_text_path_is_the_text_model():
    model = tiny_model()
    ids = prompt()
    with torch.no_grad():
        embeds = model.embed_inputs(ids, pixels(), IMAGE_SIZES)
        features = torch.cat(model.get_image_features(pixels(), IMAGE_SIZES))
        plain = model.encoder.embed_tokens(ids)
    at = ids[0] == IMAGE_TOKEN
    assert torch.equal(embeds[0, at], features) and torch.equal(embeds[0, ~at], plain[0, ~at])
    # The text path is TrimodeModel's: same text weights, same logits.
    text_model = trimode.NemotronLabsDiffusionModel(trimode.NemotronLabsDiffusionConfig(
        **TEXT, rope_parameters=dict(ROPE), mask_token_id=5)).eval()
    missing, unexpected = text_model.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all("vision_tower" in k or "multi_modal_projector" in k for k in unexpected)
    text = torch.randint(8, 97, (2, 11))
    with torch.no_grad():
        assert torch.equal(model(text).logits, text_model(text).logits)


def test_auto_model_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "nemotron_labs_diffusion_vlm" and "auto_map" not in saved
    assert (tmp_path / "model.safetensors").exists()
    ids = prompt()
    for trust in (False, True):  # registered: no remote code either way
        loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=trust)
        assert type(loaded) is NemotronLabsDiffusionVLMModel
        with torch.no_grad():
            for kwargs in ({}, {"pixel_values": pixels(), "image_sizes": IMAGE_SIZES}):
                assert torch.equal(loaded(ids, **kwargs).logits, model(ids, **kwargs).logits)


def test_placeholder_count_and_missing_image_token_errors():
    model = tiny_model()
    too_few = prompt()[:, :8]  # 4 placeholders, 5 features
    with pytest.raises(ValueError, match=r"4 tokens with image_token_id=7.*5 image features"):
        model(too_few, pixel_values=pixels(), image_sizes=IMAGE_SIZES)
    model.config.image_token_id = None
    with pytest.raises(ValueError, match="image_token_id is None"):
        model(prompt(), pixel_values=pixels(), image_sizes=IMAGE_SIZES)
    # Text-only forwards need no image token.
    assert model(prompt()).logits.shape == (1, 14, TEXT["vocab_size"])


# ------------------------------------------------------------------------------- decoding with images
def _greedy_reference(model, rows, pixel_values, image_sizes, max_new):
    """Obvious reference: the whole batch recomputed from scratch (no cache) for every token, images in."""
    rows = [list(r) for r in rows]
    for _ in range(max_new):
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        logits = model(ids, pixel_values=pixel_values, image_sizes=image_sizes).logits
        for b, r in enumerate(rows):
            r.append(int(logits[b, len(r) - 1].argmax()))
    return rows


def _check(mode, rows, out, want):
    """Lossless modes: exactly the reference tokens. Diffusion (not lossless): its first token, the
    prefill's AR token, equals the reference's (the images are in that forward)."""
    got = [o[:len(w)] for o, w in zip(out.tolist(), want)]
    if mode == "diffusion":
        assert [g[len(r)] for g, r in zip(got, rows)] == [w[len(r)] for w, r in zip(want, rows)]
    else:
        assert got == want


@pytest.mark.parametrize("mode", ["ar", "diffusion", "linear-spec", "quadratic-spec"])
def test_every_decoder_runs_on_an_image_prompt_and_speculation_equals_ar(mode):
    model = tiny_model()
    t = IMAGE_TOKEN
    rows = [[1, 20, t, t, 30], [1, 50, 51], [1, t, t, t, 60, 61]]  # image 1, no image, image 2
    want = _greedy_reference(model, rows, pixels(), IMAGE_SIZES, 9)
    kw = dict(block_length=4, max_new_tokens=9, eos_token_id=[])
    out, _ = model.decode_mode(mode, rows, pixel_values=pixels(), image_sizes=IMAGE_SIZES, **kw)
    _check(mode, rows, out, want)  # batch 3: rows with and without images
    one, _ = model.decode_mode(mode, rows[:1], pixel_values=pixels()[:1], image_sizes=IMAGE_SIZES[:1], **kw)
    _check(mode, rows[:1], one, want[:1])  # batch 1
    plain, _ = model.decode_mode(mode, rows[1:2], **kw)
    _check(mode, rows[1:2], plain, want[1:2])  # a text-only prompt on the VLM


def test_images_for_a_text_model_or_without_sizes_are_refused():
    from helpers import tiny_model as text_model

    with pytest.raises(ValueError, match="takes no images"):
        text_model().ar_generate([[5, 6]], max_new_tokens=2, pixel_values=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="image_sizes was given without pixel_values"):
        tiny_model().ar_generate([[5, 6]], max_new_tokens=2, image_sizes=IMAGE_SIZES)


def test_a_drafter_adapter_inside_the_tower_never_changes_image_features():
    """PEFT targeting every o_proj also wraps the tower's: image features must stay the base model's, in every
    mode and whatever the previous forward left switched on, so speculation still equals AR."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model()
    base_features = torch.cat(model.get_image_features(pixels(), IMAGE_SIZES))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["o_proj"], init_lora_weights=False))
    inner = peft.model.eval()
    assert any("vision_tower" in n and "lora_" in n for n, _ in inner.named_parameters())  # the trap is set
    t = IMAGE_TOKEN
    rows = [[1, 20, t, t, 30], [1, t, t, t, 60, 61]]
    kw = dict(block_length=4, max_new_tokens=8, eos_token_id=[], pixel_values=pixels(), image_sizes=IMAGE_SIZES)
    inner.decode_mode("quadratic-spec", rows, **kw)  # leaves the adapter gated per position
    assert torch.equal(torch.cat(inner.get_image_features(pixels(), IMAGE_SIZES)), base_features)
    ar, _ = inner.decode_mode("ar", rows, **kw)
    for mode in ("linear-spec", "quadratic-spec"):
        assert torch.equal(inner.decode_mode(mode, rows, **kw)[0], ar), mode
