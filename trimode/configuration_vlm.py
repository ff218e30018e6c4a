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
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PixtralVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

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
    """

    model_type = "nemotron_labs_diffusion_vlm"
    sub_configs_defaults = {"vision_config": SubConfigSpec(config_class=PixtralVisionConfig)}

    vision_config: dict | PreTrainedConfig | None = None
    spatial_merge_size: int = 2
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = False
    vision_feature_layer: int = -1
    image_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = copy.deepcopy(DEFAULT_VISION_CONFIG)
        elif isinstance(self.vision_config, dict):
            # PixtralVisionConfig rewrites rope_parameters in place: keep the caller's dict as it was.
            self.vision_config = copy.deepcopy(self.vision_config)
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
        need(self.image_token_id is None or 0 <= self.image_token_id < self.vocab_size,
             f"image_token_id={self.image_token_id!r} must be null or in [0, vocab_size={self.vocab_size})")


__all__ = ["NemotronLabsDiffusionVLMConfig", "DEFAULT_VISION_CONFIG"]
