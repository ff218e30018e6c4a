"""A tiny random vision-language model directory in the published VLM layout, for the loader, CLI
and server tests.

``build_vlm_dir(path)`` saves a random :class:`~trimode.modeling_vlm.NemotronLabsDiffusionVLMModel`
(``model_type "nemotron_labs_diffusion_vlm"``, weights ``encoder.vision_tower.*``,
``encoder.multi_modal_projector.*``, ``encoder.*``, ``diffusion_head.*``) beside the trimode-tiny
tokenizer with Pixtral's three image tokens added after its 2048 ids (``[IMG]`` 2048,
``[IMG_BREAK]`` 2049, ``[IMG_END]`` 2050). As the published config, ``config.json`` names no image
token id by default: the loader takes them from the tokenizer. Options: sharded safetensors
(``max_shard_size``), a LoRA drafter in ``linear_spec_lora/``, the ids written into the config.

The weights are O(1) (as in tests/test_image_processing.py), so the image features move the logits
visibly and greedy decoding depends on the pixels.
"""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TINY_TOKENIZER = ROOT / "models" / "trimode-tiny"
IMAGE_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
PAD, BREAK, END = 2048, 2049, 2050
CONTEXT = 512
TEXT = dict(vocab_size=2052, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=CONTEXT, rms_norm_eps=1e-5,
            mask_token_id=3, eos_token_id=2, bos_token_id=1, pad_token_id=0, block_size=4,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=4,
              image_size=64, num_channels=3, hidden_act="gelu", rope_parameters={"rope_theta": 10000.0})
MAX_IMAGE_SIZE = 32  # longest edge in pixels: at most 4 x 4 image tokens (patch 4 x merge 2 = 8 px a token)
# The image limits the serving tests' VLM server runs with: small, so a test picture can exceed each one.
VLM_LIMITS = dict(max_images=3, max_image_bytes=20_000, max_image_pixels=10_000)


def tiny_vlm_config(**overrides):
    from trimode.configuration_vlm import NemotronLabsDiffusionVLMConfig

    kw = dict(TEXT, vision_config=dict(VISION), max_image_size=MAX_IMAGE_SIZE)
    kw.update(overrides)
    return NemotronLabsDiffusionVLMConfig(**kw)


def tiny_vlm(seed: int = 0, **overrides):
    """A random tiny VLM with O(1) weights (norms near 1)."""
    from trimode.modeling_vlm import NemotronLabsDiffusionVLMModel

    torch.manual_seed(seed)
    model = NemotronLabsDiffusionVLMModel(tiny_vlm_config(**overrides)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if p.dim() == 1 else 0.15 * noise)
    return model


def image_tokenizer(tokens=IMAGE_TOKENS):
    """The trimode-tiny tokenizer with ``tokens`` added as special tokens (ids from 2048)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    tok.add_tokens(list(tokens), special_tokens=True)
    return tok


def build_vlm_dir(path: str | Path, *, max_shard_size: str | None = None, drafter: bool = False,
                  ids_in_config: bool = False, tokens=IMAGE_TOKENS, seed: int = 0) -> Path:
    """Write a tiny random VLM (+ tokenizer, + optional drafter) to ``path`` and return it."""
    from trimode.checkpoint_files import quiet_transformers

    path = Path(path)
    ids = dict(image_token_id=PAD, image_break_token_id=BREAK, image_end_token_id=END) if ids_in_config else {}
    model = tiny_vlm(seed, **ids)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    with quiet_transformers():  # no progress bars in the tests' captured output
        model.save_pretrained(path, **kwargs)
        image_tokenizer(tokens).save_pretrained(path)
        if drafter:
            save_drafter(path, seed)
    return path


def save_drafter(path: Path, seed: int = 0) -> None:
    """A random LoRA drafter on every ``o_proj`` (as the published drafter), in ``linear_spec_lora/``.

    ``o_proj`` also names the vision tower's attention output: the adapter lands there too, as a
    drafter trained on the text model would when loaded into the VLM.
    """
    from peft import LoraConfig, get_peft_model

    from trimode.modeling_vlm import NemotronLabsDiffusionVLMModel

    torch.manual_seed(seed + 1)
    base = NemotronLabsDiffusionVLMModel.from_pretrained(path)
    with warnings.catch_warnings():  # PEFT asks transformers a deprecated question
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["o_proj"],
                                               init_lora_weights=False))
    peft.save_pretrained(Path(path) / "linear_spec_lora")


# ------------------------------------------------------------------------------------------ images
def picture(width: int = 30, height: int = 20, seed: int = 0) -> Image.Image:
    """A gradient picture (different seeds, different pixels)."""
    image = Image.new("RGB", (width, height))
    image.putdata([((7 * x + 31 * seed) % 256, (11 * y + 17 * seed) % 256, (x * y + seed) % 256)
                   for y in range(height) for x in range(width)])
    return image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


if __name__ == "__main__":  # python tests/serving/vlm_model_dir.py DIR
    import sys

    print(build_vlm_dir(sys.argv[1] if len(sys.argv) > 1 else "/tmp/trimode-tiny-vlm", drafter=True))
