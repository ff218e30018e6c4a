"""The Nemotron-Labs-Diffusion vision-language model: the tri-mode text model plus a Pixtral tower.

Layout (``docs/nld-vlm-layout.md`` section 1): the vision tower and the projector sit inside
``encoder`` beside the text backbone, so the weight names are the published ones:

- ``encoder.vision_tower.*``: transformers' ``PixtralVisionModel`` (patch_conv, ln_pre,
  transformer.layers.{i}.{attention,feed_forward,attention_norm,ffn_norm}),
- ``encoder.multi_modal_projector.*``: transformers' ``Mistral3MultiModalProjector``
  (norm, patch_merger.merging_layer, linear_1, linear_2),
- the text backbone and ``diffusion_head`` as in :class:`~trimode.modeling.TrimodeModel`.

Both vision modules are transformers' own classes (attention, 2-D RoPE, patch merging are not
re-implemented here). Images enter as in transformers' ``Mistral3Model``: the tower's hidden
state at ``vision_feature_layer`` goes through the projector, and the features replace the
token embeddings where ``input_ids == config.image_token_id`` (``masked_scatter``).

A forward without ``pixel_values`` is exactly :meth:`TrimodeModel.forward` (same code path).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from transformers import PixtralVisionModel
from transformers.models.mistral3.modeling_mistral3 import Mistral3MultiModalProjector

from .backbone import Encoder
from .configuration_vlm import NemotronLabsDiffusionVLMConfig
from .drafter_gate import set_drafter_active
from .modeling import TrimodeModel, TrimodeOutput
from .projections import Projection


def projector_config(config: NemotronLabsDiffusionVLMConfig) -> SimpleNamespace:
    """The fields ``Mistral3MultiModalProjector`` reads, from our flat config."""
    return SimpleNamespace(
        vision_config=config.vision_config,
        text_config=SimpleNamespace(hidden_size=config.hidden_size, rms_norm_eps=config.rms_norm_eps),
        spatial_merge_size=config.spatial_merge_size,
        vision_feature_layer=config.vision_feature_layer,
        multimodal_projector_bias=config.multimodal_projector_bias,
        projector_hidden_act=config.projector_hidden_act,
    )


class VLMEncoder(Encoder):
    """The text backbone plus ``vision_tower`` and ``multi_modal_projector`` (published names)."""

    def __init__(self, config: NemotronLabsDiffusionVLMConfig):
        super().__init__(config)
        self.vision_tower = PixtralVisionModel(config.vision_config)
        self.multi_modal_projector = Mistral3MultiModalProjector(projector_config(config))


class NemotronLabsDiffusionVLMModel(TrimodeModel):
    """Tri-mode VLM: ``encoder`` (text backbone + vision tower + projector) and ``diffusion_head``.

    ``model(input_ids)`` is the text model's forward. ``model(input_ids, pixel_values=...,
    image_sizes=...)`` places the image features at the ``config.image_token_id`` positions
    first. The decoders take the same two arguments: the images enter the prompt's prefill
    forward, and every decoder runs unchanged on the cached prefix.
    """

    config_class = NemotronLabsDiffusionVLMConfig
    _no_split_modules = ["DecoderLayer", "PixtralAttentionLayer"]

    def __init__(self, config: NemotronLabsDiffusionVLMConfig):
        # TrimodeModel.__init__ would build a text-only Encoder: build the VLM one instead.
        super(TrimodeModel, self).__init__(config)
        self.encoder = VLMEncoder(config)
        self.diffusion_head = Projection(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        # The projector's norm (the tower, a PreTrainedModel, initialises its own modules).
        if "RMSNorm" in type(module).__name__ and getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)

    def get_image_features(self, pixel_values: torch.Tensor, image_sizes) -> list[torch.Tensor]:
        """Projected features of each image: a list of (n_i, hidden), n_i = (H/(p*m)) * (W/(p*m)).

        pixel_values: (N, C, H, W); image_sizes: (N, 2) pixel heights and widths (multiples of
        patch_size * spatial_merge_size), as transformers' ``Mistral3Model.get_image_features``.
        """
        encoder = self.encoder
        # A drafter adapter that PEFT placed in the tower too (the published one targets every o_proj,
        # and the tower has o_proj layers) must never change the image features: they are the prompt's,
        # the same in every mode. The tower runs before forward() sets the adapter state of this forward,
        # so switch everything off here (the model-wide switch knows when PEFT injected adapters).
        set_drafter_active(self, False)
        out = encoder.vision_tower(pixel_values, image_sizes=image_sizes, output_hidden_states=True,
                                   return_dict=True)
        selected = out.hidden_states[self.config.vision_feature_layer]  # (1, sum patches, d)
        features = encoder.multi_modal_projector(selected.squeeze(0), image_sizes)
        ratio = self.config.vision_config.patch_size * self.config.spatial_merge_size
        sizes = (torch.as_tensor(image_sizes, device=features.device) // ratio).prod(dim=-1).tolist()
        return list(torch.split(features, sizes))

    def embed_inputs(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None = None,
                     image_sizes=None) -> torch.Tensor:
        """Token embeddings (B, Q, hidden) with the image features at the image-token positions."""
        embeds = self.encoder.embed_tokens(input_ids)
        if pixel_values is None:
            return embeds
        token = self.config.image_token_id
        if token is None:
            raise ValueError("config.image_token_id is None: the published config names no image token; "
                             "set config.image_token_id to the processor's image placeholder id")
        if image_sizes is None:
            raise ValueError("image_sizes is required with pixel_values: (N, 2) pixel (height, width) per image")
        features = torch.cat(self.get_image_features(pixel_values, image_sizes)).to(embeds.device, embeds.dtype)
        mask = input_ids == token
        n_tokens = int(mask.sum())
        if n_tokens != features.shape[0]:
            raise ValueError(f"image features and image tokens do not match: {n_tokens} tokens with "
                             f"image_token_id={token} in input_ids, {features.shape[0]} image features")
        return embeds.masked_scatter(mask[..., None].expand_as(embeds), features)

    def forward(self, input_ids: torch.LongTensor, *args, pixel_values: torch.Tensor | None = None,
                image_sizes=None, **kwargs) -> TrimodeOutput:
        """:meth:`TrimodeModel.forward`, plus ``pixel_values`` (N, C, H, W) and ``image_sizes`` (N, 2)."""
        if pixel_values is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
            kwargs["inputs_embeds"] = self.embed_inputs(input_ids, pixel_values, image_sizes)
        return super().forward(input_ids, *args, **kwargs)


__all__ = ["NemotronLabsDiffusionVLMModel", "VLMEncoder", "projector_config"]
