"""Configuration of the Nemotron-Labs-Diffusion vision-language model (``nemotron_labs_diffusion_vlm``).

The published VLM config is *flat*: the text-backbone fields sit at the root, exactly as in
:class:`~trimode.configuration.NemotronLabsDiffusionConfig` (there is no ``text_config``), and
the vision fields are a nested ``vision_config`` (a Pixtral vision tower) plus four root fields
of the Mistral-3 projector. Every field and default below, and its source, is collected in
``docs/nld-vlm-layout.md`` (section 2; source short names as there):

- text fields: the parent class; the published ``config.json`` text fields are the fixture
  ``tests/fixtures/published-configs/nld-vlm-8b.json``, which has **no** vision field, so
  every vision default here is second-hand.
- ``vision_config``: transformers ``PixtralVisionConfig`` (``model_type "pixtral"``: FFAI,
  OV-PR). ``None`` gives the published tower: hidden 1024, intermediate 4096, 24 layers,
  16 heads, head_dim 64, patch 14, image_size 1540, 3 channels, gelu (LECT; the projector
  shapes that JEV-VIS loads fit hidden 1024; transformers' own ``Mistral3Config`` uses the
  same defaults), RoPE theta 10000 (LECT, AX-TESTS, JEV-VIS; transformers normalises it to
  ``rope_type "axial"``).
- ``spatial_merge_size`` 2 (FFAI, LECT, JEV-VIS ``MERGE = 2``, AX-TESTS).
- ``projector_hidden_act`` ``"gelu"`` (FFAI, LECT; JEV-VIS applies exact GELU).
- ``multimodal_projector_bias`` False (FFAI, LECT; JEV-VIS loads no bias).
- ``vision_feature_layer`` -1 (LECT; AX-COMPAT ``getattr(config, "vision_feature_layer", -1)``).
- ``image_token_id``: ``None``. The published config has no image-token field: the remote
  model keeps it as a class constant (AX-COMPAT ``IMAGE_TOKEN_ID``) whose value could not be
  confirmed (candidates in the doc: 10, 19, 131072). The processor that builds the prompt
  must supply it (set ``config.image_token_id``); a forward with images and no id raises.
- ``image_start_token_id``, ``image_break_token_id``, ``image_end_token_id``: ``None``. The
  tokens that frame an image's placeholders in the prompt (section 5 of the doc); only the
  prompt builder (:mod:`trimode.image_processing`) reads them, the model only replaces
  ``image_token_id`` positions. Two published layouts, both expressible here:

  * Pixtral/Mistral-3 (transformers ``processing_pixtral.py``, HF-CONV): ``h`` rows of
    ``w`` x ``[IMG]`` each followed by ``[IMG_BREAK]``, the last break replaced by
    ``[IMG_END]``; no start token (ids 10/12/13 there).
  * NLD-VLM (AX-PROC, AX-TESTS): the checkpoint's ``image_processing.py`` has
    ``IMG_START/IMG_PAD/IMG_BREAK/IMG_END``; ``IMG_PAD`` is the placeholder, the image is
    wrapped in ``IMG_START ... IMG_END`` (a 1x1 grid is ``[start, pad, end]``). Whether a
    break follows every row and the numeric ids could not be confirmed.

  Each is optional: no break id = no row separators; no end id = nothing closes the image
  (with a break id the last row keeps its break, as Pixtral with no end); no start id =
  nothing opens it.
- ``max_image_size`` 1400: the longest edge, in pixels, the processor shrinks an image to
  (JEV-IMG: the checkpoint's ``image_processing.py`` caps the longest edge at 1400;
  ``vision_config.image_size`` 1540 is the tower's limit, not the processor's).
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PixtralVisionConfig, PreTrainedConfig

try:  # transformers >= 5.20 declares sub-configs with typed specs
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # older 5.x (e.g. the one vLLM pins): a plain class map
    SubConfigSpec = None

from .configuration import NemotronLabsDiffusionConfig

# The published vision tower (see the module docstring for the sources).
DEFAULT_VISION_CONFIG: dict[str, Any] = {
    "model_type": "pixtral",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "head_dim": 64,
    "patch_size": 14,
    "image_size": 1540,
    "num_channels": 3,
    "hidden_act": "gelu",
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
}


# The placeholder first, then the tokens that frame it in the prompt.
IMAGE_TOKEN_FIELDS = ("image_token_id", "image_start_token_id", "image_break_token_id", "image_end_token_id")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class NemotronLabsDiffusionVLMConfig(NemotronLabsDiffusionConfig):
    r"""The published flat VLM config: the text fields of :class:`NemotronLabsDiffusionConfig` at the
    root, plus the vision tower and projector fields.

    Args (besides the text fields):
        vision_config: a ``PixtralVisionConfig`` or its dict; ``None``: the published tower
            (:data:`DEFAULT_VISION_CONFIG`).
        spatial_merge_size: side of the square of patches the projector merges into one token (2).
        projector_hidden_act: activation between the projector's two linears (``"gelu"``).
        multimodal_projector_bias: whether the projector's linears have biases (False).
        vision_feature_layer: which hidden state of the tower feeds the projector (-1 = last).
        image_token_id: the placeholder token whose embeddings the image features replace.
            ``None`` by default: the published config has none, the processor must supply it.
        image_start_token_id: token before an image's placeholders (NLD's IMG_START), or None.
        image_break_token_id: token after each row of placeholders (Pixtral's [IMG_BREAK]), or None.
        image_end_token_id: token closing an image (replaces the last row's break), or None.
        max_image_size: longest image edge in pixels the processor resizes to (1400); smaller
            images are not enlarged beyond rounding each side up to a merged patch.
    """

    model_type = "nemotron_labs_diffusion_vlm"
    if SubConfigSpec is not None:
        sub_configs_defaults = {"vision_config": SubConfigSpec(config_class=PixtralVisionConfig)}
    else:
        sub_configs = {"vision_config": PixtralVisionConfig}

    vision_config: dict | PreTrainedConfig | None = None
    spatial_merge_size: int = 2
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = False
    vision_feature_layer: int = -1
    image_token_id: int | None = None
    image_start_token_id: int | None = None
    image_break_token_id: int | None = None
    image_end_token_id: int | None = None
    max_image_size: int = 1400

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = copy.deepcopy(DEFAULT_VISION_CONFIG)
        elif isinstance(self.vision_config, dict):
            # PixtralVisionConfig rewrites rope_parameters in place: keep the caller's dict as it was.
            self.vision_config = copy.deepcopy(self.vision_config)
        if SubConfigSpec is None and isinstance(self.vision_config, dict):  # older transformers: build it here
            fields = {k: v for k, v in self.vision_config.items() if k != "model_type"}
            self.vision_config = PixtralVisionConfig(**fields)
        super().__post_init__(**kwargs)

    def _check(self) -> None:
        super()._check()

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"NemotronLabsDiffusionVLMConfig: {msg}")

        need(isinstance(self.spatial_merge_size, int) and self.spatial_merge_size > 0,
             f"spatial_merge_size={self.spatial_merge_size!r} must be a positive integer")
        need(isinstance(self.vision_feature_layer, int),
             f"vision_feature_layer={self.vision_feature_layer!r} must be one integer (a list is not supported)")
        for name in IMAGE_TOKEN_FIELDS:
            value = getattr(self, name)
            need(value is None or (_is_int(value) and 0 <= value < self.vocab_size),
                 f"{name}={value!r} must be null or an integer in [0, vocab_size={self.vocab_size})")
        # A frame token equal to the placeholder would be counted as a placeholder (one feature too many).
        for name in IMAGE_TOKEN_FIELDS[1:]:
            value = getattr(self, name)
            need(value is None or value != self.image_token_id,
                 f"{name}={value!r} must differ from image_token_id={self.image_token_id!r}")
        need(_is_int(self.max_image_size) and self.max_image_size > 0,
             f"max_image_size={self.max_image_size!r} must be a positive integer (pixels of the longest edge)")


__all__ = ["NemotronLabsDiffusionVLMConfig", "DEFAULT_VISION_CONFIG", "IMAGE_TOKEN_FIELDS"]
