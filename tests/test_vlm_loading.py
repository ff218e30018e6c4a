"""Loading a vision-language model directory in the published layout (``nemotron_labs_diffusion_vlm``):
``trimode.loading.load`` (single file and sharded, with and without a LoRA drafter), the image token ids
taken from the tokenizer, ``AutoModel`` without remote code, and lossless speculation on an image prompt."""

import json
import sys

import pytest
import torch
from peft.tuners.lora import LoraLayer
from serving.vlm_model_dir import (
    BREAK,
    END,
    PAD,
    build_vlm_dir,
    image_tokenizer,
    picture,
    png_bytes,
    tiny_vlm,
    tiny_vlm_config,
)
from transformers import AutoModel, AutoModelForCausalLM

from trimode.image_processing import ImageProcessor, build_inputs
from trimode.loading import SHIPPED_MODEL, fill_image_token_ids, image_token_candidates, load
from trimode.modeling_vlm import NemotronLabsDiffusionVLMModel

MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]
MARKER_CODE = ("import pathlib\n"
               "pathlib.Path(__file__).with_name('EXECUTED').write_text(__name__)\n"
               "raise RuntimeError('remote code was executed')\n")
AUTO_MAP = {"AutoConfig": "configuration_nemotron_labs_diffusion_vlm.NemotronLabsDiffusionVLMConfig",
            "AutoModel": "modeling_nemotron_labs_diffusion_vlm.NemotronLabsDiffusionVLMModel"}


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory):
    return build_vlm_dir(tmp_path_factory.mktemp("vlm") / "single")


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    """Sharded safetensors with an index, a LoRA drafter, and an ``auto_map`` naming remote code that
    leaves a marker if it ever runs (the published directory's shape)."""
    path = build_vlm_dir(tmp_path_factory.mktemp("vlm") / "sharded", max_shard_size="300KB", drafter=True)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "auto_map": AUTO_MAP}))
    for module in AUTO_MAP.values():
        (path / f"{module.split('.')[0]}.py").write_text(MARKER_CODE)
    return path


def chat_inputs(loaded, *images, text="def f(x):"):
    parts = [{"type": "image", "image": png_bytes(im)} for im in images] + [{"type": "text", "text": text}]
    built = build_inputs(loaded.tokenizer, [{"role": "user", "content": parts}], loaded.model.config,
                         loaded.image_processor)
    return built["input_ids"], {"pixel_values": built["pixel_values"], "image_sizes": built["image_sizes"]}


def decode(model, mode, ids, images, n=10):
    out, _ = model.decode_mode(mode, [ids], max_new_tokens=n, block_length=4, eos_token_id=[], **images)
    return out[0, len(ids):].tolist()


# ------------------------------------------------------------------------------------------ load()
@pytest.mark.parametrize("which", ["single", "sharded"])
def test_load_gives_the_vlm_its_processor_and_the_tokenizer_image_ids(request, which):
    path = request.getfixturevalue(f"{which}_dir")
    saved = json.loads((path / "config.json").read_text())
    assert saved["model_type"] == "nemotron_labs_diffusion_vlm" and saved["image_token_id"] is None
    assert (path / "model.safetensors.index.json").is_file() == (which == "sharded")
    loaded = load(path)
    model, config = loaded.model, loaded.model.config
    assert type(model) is NemotronLabsDiffusionVLMModel and loaded.is_vlm
    assert loaded.has_drafter == (which == "sharded")
    assert isinstance(loaded.image_processor, ImageProcessor) and loaded.image_processor.cell == 8
    # The published config names no image token: [IMG], [IMG_BREAK], [IMG_END] come from the tokenizer.
    assert (config.image_token_id, config.image_break_token_id, config.image_end_token_id,
            config.image_start_token_id) == (PAD, BREAK, END, None)
    assert loaded.image_support_error() is None
    # The weights are the saved ones: the same logits as the model that was saved, images in.
    reference = tiny_vlm(image_token_id=PAD, image_break_token_id=BREAK, image_end_token_id=END)
    ids, images = chat_inputs(loaded, picture(30, 20))
    assert ids.count(PAD) == 3 * 4
    with torch.no_grad():
        got = model(torch.tensor([ids]), **images).logits
        want = reference(torch.tensor([ids]), **images).logits
        text_only = reference(torch.tensor([ids])).logits
    assert (got - want).abs().max() < 1e-4 < (want - text_only).abs().max()


def test_sharded_directory_with_drafter_loads_through_auto_classes_without_remote_code(sharded_dir):
    for auto in (AutoModel, AutoModelForCausalLM):
        for trust in (False, True):
            model = auto.from_pretrained(sharded_dir, trust_remote_code=trust)
            assert type(model) is NemotronLabsDiffusionVLMModel
    assert not (sharded_dir / "EXECUTED").exists()
    assert not [m for m in sys.modules if m.startswith("transformers_modules")]
    assert load(sharded_dir).model.config.to_dict().get("auto_map") is None


def test_drafter_stays_out_of_the_vision_tower_and_speculation_equals_ar(sharded_dir):
    """The drafter targets every ``o_proj``, the vision tower's too; loaded, it adapts the text layers only,
    so the image features never depend on the adapter state the previous forward left."""
    loaded = load(sharded_dir)
    model = loaded.model
    adapted = [name for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert adapted == ["encoder.layers.0.self_attn.o_proj", "encoder.layers.1.self_attn.o_proj"]
    ids, images = chat_inputs(loaded, picture(30, 20), picture(13, 24, seed=3))
    plain = load(sharded_dir, drafter=False).model
    ar = decode(plain, "ar", ids, images)
    other = decode(plain, "ar", ids, {"pixel_values": -images["pixel_values"], "image_sizes": images["image_sizes"]})
    assert ar != other  # the pixels decide the tokens
    # Every order of modes (the drafter on or gated in the forward before each prefill): AR's tokens.
    for mode in ["quadratic-spec", "linear-spec", "ar", "quadratic-spec", "diffusion", "linear-spec", "ar"]:
        out = decode(model, mode, ids, images)
        assert (out[:1] if mode == "diffusion" else out) == (ar[:1] if mode == "diffusion" else ar), mode


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_decodes_a_loaded_image_prompt(single_dir, mode):
    loaded = load(single_dir)
    ids, images = chat_inputs(loaded, picture(16, 16), picture(30, 20, seed=2))
    ar = decode(loaded.model, "ar", ids, images)
    out = decode(loaded.model, mode, ids, images)
    assert len(out) == 10
    assert out == ar if mode != "diffusion" else out[0] == ar[0]  # diffusion: its prefill token is AR's


# ------------------------------------------------------------------------------------------ image token ids
@pytest.mark.parametrize("tokens,want", [
    (("[IMG]", "[IMG_BREAK]", "[IMG_END]"), dict(image_token_id=2048, image_break_token_id=2049,
                                                image_end_token_id=2050)),
    (("<|IMG_START|>", "<|IMG_PAD|>", "<|IMG_BREAK|>", "<|IMG_END|>"),
     dict(image_start_token_id=2048, image_token_id=2049, image_break_token_id=2050, image_end_token_id=2051)),
    (("<|image_start|>", "<|image_pad|>", "<|image_end|>"),
     dict(image_start_token_id=2048, image_token_id=2049, image_end_token_id=2050)),
    (("<|img|>", "<|img_break|>", "<|img_end|>"), dict(image_token_id=2048, image_break_token_id=2049,
                                                      image_end_token_id=2050)),
    (("[IMG_BREAK]", "[IMG_END]"), {}),  # frame tokens without a placeholder place no image
    ((), {}),
])
def test_image_token_ids_come_from_the_tokenizer(tokens, want):
    config = tiny_vlm_config()
    assert fill_image_token_ids(config, image_tokenizer(tokens)) == want
    for field in ("image_token_id", "image_start_token_id", "image_break_token_id", "image_end_token_id"):
        assert getattr(config, field) == want.get(field), field


def test_config_ids_win_and_ids_outside_the_vocabulary_are_not_used():
    config = tiny_vlm_config(image_token_id=7)
    from trimode.loading import _image_processor

    _image_processor(config, image_tokenizer())  # the config names its placeholder: nothing is looked up
    assert (config.image_token_id, config.image_break_token_id) == (7, None)
    small = tiny_vlm_config(vocab_size=2049)  # [IMG] is 2048: inside; [IMG_BREAK] 2049: outside
    assert fill_image_token_ids(small, image_tokenizer()) == {"image_token_id": 2048}
    assert image_token_candidates("image_token_id")[:3] == ["[IMG]", "[img]", "<|IMG|>"]


def test_a_vlm_without_image_tokens_and_a_text_model_say_why_they_take_no_images(tmp_path):
    loaded = load(build_vlm_dir(tmp_path / "no-ids", tokens=()))
    assert loaded.is_vlm and loaded.model.config.image_token_id is None
    problem = loaded.image_support_error()
    assert "names no image_token_id" in problem and "[IMG]" in problem and "<|image_pad|>" in problem
    assert str(tmp_path / "no-ids" / "config.json") in problem
    text = load(SHIPPED_MODEL)
    assert not text.is_vlm and text.image_processor is None
    assert text.image_support_error() == ("model 'trimode-tiny' (TrimodeModel, model_type 'trimode') has no vision "
                                          "tower: it takes no images; a vision-language model (model_type "
                                          "'nemotron_labs_diffusion_vlm') does")
