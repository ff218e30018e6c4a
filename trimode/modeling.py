"""The tri-mode model: a Ministral-3 style decoder with one untied head.

The model does math only. It takes tokens, positions, an attention mask (or a
pattern among the new tokens, see :mod:`trimode.masks`), an optional
:class:`~trimode.cache.KVCache` and a write/peek flag, and returns logits. It
does not know which decoding mode runs; the decoders live in
:mod:`trimode.generation` and are attached as methods for the published API.

The backbone (:mod:`trimode.backbone`) computes what ``transformers``'
``Ministral3Model`` does. Weight names follow the published checkpoints:
``encoder.*`` and ``diffusion_head.weight``.

Shapes: B batch, Q new tokens, K attended slots, H query heads, Hkv key/value
heads, D head dim, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from .backbone import Encoder, RMSNorm, Rotary
from .cache import KVCache
from .configuration import NemotronLabsDiffusionConfig, TrimodeConfig
from .drafter_gate import set_drafter_active
from .generation.api import DecodingMixin
from .masks import causal_pattern, with_prefix
from .projections import PackedWeights, Projection, base_projection, packable


@dataclass
class TrimodeOutput(ModelOutput):
    """logits: (B, Q', V) for the kept positions; loss: AR cross-entropy when labels are given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class TrimodePreTrainedModel(PreTrainedModel):
    config_class = TrimodeConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):  # includes Projection
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, Rotary):
            # Non-persistent buffer: rebuild it when weights were created on the meta device.
            fresh = Rotary(self.config)
            module.inv_freq = fresh.inv_freq.to(module.inv_freq.device)


class TrimodeModel(DecodingMixin, TrimodePreTrainedModel):
    """Tri-mode decoder: ``encoder`` backbone + ``diffusion_head`` (the one output head).

    ``model(input_ids)`` returns the causal (AR) logits. The decoders
    (``ar_generate``, ``generate``, ``linear_spec_generate``,
    ``quadratic_spec_generate``) are defined in :mod:`trimode.generation`.
    """

    def __init__(self, config: TrimodeConfig):
        super().__init__(config)
        self.encoder = Encoder(config)
        self.diffusion_head = Projection(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def pack_weights(self, enabled: bool = True, min_elements: int = PackedWeights.MIN_ELEMENTS) -> "TrimodeModel":
        """Pack the projection weights for CPU inference (see :class:`Projection`), or unpack.

        q/k/v share one packed matrix per layer, gate/up another; the others and the
        output head are packed alone. CUDA weights and dtypes oneDNN does not pack stay
        as they are, and so do groups of fewer than ``min_elements`` weights (small matrices
        are faster dense); a forward with gradients unpacks (training sees dense weights).
        Costs no extra memory: each dense weight is released once packed.
        ``trimode.loading.load`` packs CPU models.
        """
        for module in self.modules():
            if isinstance(module, Projection) and module._packed is not None and not enabled:
                module._packed.unpack()
        if enabled:
            for group in self._projection_groups():
                # Compiled forwards read the backbone's dense weights (trimode.compiled): only the head packs.
                big = sum(p.weight.numel() for p in group) >= min_elements
                if big and packable(group) and (self._compiled is None or group[0] is self.diffusion_head):
                    PackedWeights(group)
        return self

    _compiled = None  # a CompiledBackbone when compile_forwards() is on

    def compile_forwards(self, widths=(1,), enabled: bool = True, verbose: bool = True) -> "TrimodeModel":
        """Compile the backbone for forwards of these widths (new tokens per row), or turn it off.

        Inference only: on CPU the weights are frozen into the graphs (see
        :mod:`trimode.compiled`). The backbone's projections go back to dense weights
        (inductor packs them itself); the output head stays packed. A decoder uses the
        graphs for its forwards of these widths, e.g. ``(1, 8, 72)`` for AR, a block of 8
        and quadratic-spec's ``8 + 8 * 8``; any other width runs eagerly.
        """
        from .compiled import CompiledBackbone

        self._compiled = None
        if enabled:
            for layer in self.encoder.layers:
                for module in layer.modules():
                    if isinstance(module, Projection) and module._packed is not None:
                        module._packed.unpack()
            self._compiled = CompiledBackbone(self.encoder, widths, verbose=verbose)
        return self

    @property
    def compiled_forwards(self):
        """The :class:`~trimode.compiled.CompiledBackbone`, or None (eager forwards)."""
        return self._compiled

    def _projection_groups(self) -> list[list[Projection]]:
        """Projections that read the same input, in groups that one matmul can serve."""
        groups = []
        for layer in self.encoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            groups += [[attn.q_proj, attn.k_proj, attn.v_proj], [attn.o_proj],
                       [mlp.gate_proj, mlp.up_proj], [mlp.down_proj]]
        groups.append([self.diffusion_head])
        return [[base_projection(m) for m in g] for g in groups]

    def get_input_embeddings(self):
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value):
        self.encoder.embed_tokens = value

    def get_output_embeddings(self):
        return self.diffusion_head

    def forward(
        self,
        input_ids: torch.LongTensor,
        position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        cache_write: bool = True,
        use_drafter: bool | torch.Tensor = False,
        logits_to_keep: int | torch.Tensor = 0,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **unused,
    ) -> TrimodeOutput:
        """One forward pass.

        Args:
            input_ids: (B, Q) new tokens.
            position_ids: (B, Q); default: each row continues its cache (or 0..Q-1).
            attention_mask: one of
                - None: causal among the new tokens (after the whole cached prefix);
                - (B, Q) 0/1 padding mask (transformers convention), combined with causal;
                - bool (Q, Q) or (B, Q, Q): a *pattern* among the new tokens
                  (see :mod:`trimode.masks`), placed after each row's cached prefix;
                - bool (B, 1, Q, K): the full mask over the K attended slots.
            past_key_values: a :class:`KVCache`. The new keys/values are placed after each
                row's prefix; ``cache_write=True`` commits them (write forward),
                ``False`` leaves the prefix as it was (peek forward).
            use_drafter: run with the LoRA drafter adapter on (draft forwards only); a bool
                (B, Q) or (Q,) tensor turns it on at those positions only (see
                :func:`set_drafter_active`).
            logits_to_keep: 0 = logits at every position; n > 0 = the last n positions;
                a (B, n) LongTensor = those positions of each row.
            labels: (B, Q) next-token targets for a plain AR loss (-100 = ignore).
            inputs_embeds: (B, Q, hidden) used instead of embedding ``input_ids`` (the VLM places
                image features in them; ``input_ids`` still give the shape).
        """
        _check_inputs(input_ids, use_drafter, unused)
        B, Q = input_ids.shape
        cache = past_key_values
        if position_ids is None:
            offset = cache.lengths[:, None] if cache is not None else 0
            position_ids = offset + torch.arange(Q, device=input_ids.device)[None, :].expand(B, Q)
        mask = self._build_mask(attention_mask, cache, B, Q, input_ids.device)
        set_drafter_active(self, use_drafter)
        hidden = self._backbone(input_ids, position_ids, mask, cache, inputs_embeds)  # (B, Q, hidden)
        if cache is not None and cache_write:
            cache.advance(Q)
        logits = self.diffusion_head(_kept(hidden, logits_to_keep))  # (B, Q', V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                   ignore_index=-100)
        return TrimodeOutput(loss=loss, logits=logits)

    def _backbone(self, input_ids, position_ids, mask, cache, inputs_embeds=None) -> torch.Tensor:
        """The encoder's hidden states (B, Q, hidden): its compiled graph when one serves this width
        (token ids only: given embeddings run eagerly)."""
        compiled = self._compiled
        if (compiled is not None and inputs_embeds is None and cache is not None and cache.full_width
                and input_ids.shape[1] in compiled.widths):
            cache.check_room(input_ids.shape[1])  # on the host, outside the graph
            return compiled(input_ids, position_ids, mask, cache)
        return self.encoder(input_ids, position_ids, mask, cache, inputs_embeds=inputs_embeds)

    @staticmethod
    def _build_mask(attention_mask, cache, B, Q, device):
        """Turn the caller's mask argument into what attention takes (see ``forward``).

        Reads the cache's lengths from its host mirror only: a device read would be a host sync.
        """
        full_width = cache is not None and cache.full_width
        if attention_mask is None:
            if not full_width and (cache is None or cache.max_length == 0):
                return "causal" if Q > 1 else None
            if not full_width and Q == 1 and cache.uniform:
                return None  # one new token after equal-length rows sees everything
            attention_mask = causal_pattern(Q, device=device)
        elif attention_mask.dim() == 2 and attention_mask.shape == (B, Q) and attention_mask.dtype != torch.bool:
            # transformers-style padding mask: causal AND key is a real token.
            pattern = causal_pattern(Q, device=device)[None] & attention_mask.bool()[:, None, :]
            attention_mask = pattern
        if attention_mask.dtype != torch.bool:
            raise ValueError(f"attention_mask must be bool (pattern/full mask) or a (B, Q) 0/1 padding "
                             f"mask, got dtype {attention_mask.dtype} shape {tuple(attention_mask.shape)}")
        if attention_mask.dim() == 4:
            return attention_mask
        if attention_mask.shape[-1] != Q or attention_mask.shape[-2] != Q:
            raise ValueError(f"attention_mask pattern must be (Q, Q) or (B, Q, Q) with Q={Q}, "
                             f"got {tuple(attention_mask.shape)}")
        if cache is None:
            return with_prefix(attention_mask, torch.zeros(B, dtype=torch.long, device=device), max_past=0)
        # Full width: the mask spans every slot (its shape never changes with the cached length).
        past = cache.capacity - Q if full_width else cache.max_length
        return with_prefix(attention_mask, cache.lengths, max_past=past)


def _check_inputs(input_ids: torch.Tensor, use_drafter, unused: dict) -> None:
    if unused:
        bad = sorted(k for k, v in unused.items() if v is not None and k not in ("return_dict", "use_cache"))
        if bad:
            raise TypeError(f"TrimodeModel.forward got unsupported arguments {bad}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    B, Q = input_ids.shape
    if isinstance(use_drafter, torch.Tensor) and (
            use_drafter.dtype != torch.bool or use_drafter.shape not in ((Q,), (B, Q))):
        raise ValueError(f"use_drafter must be a bool or a bool tensor of shape ({Q},) or ({B}, {Q}), "
                         f"got {use_drafter.dtype} {tuple(use_drafter.shape)}")


def _kept(hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The positions of ``hidden`` (B, Q, hidden) whose logits the caller keeps (see forward)."""
    if isinstance(logits_to_keep, torch.Tensor):
        idx = logits_to_keep.to(hidden.device)
        return torch.gather(hidden, 1, idx[..., None].expand(-1, -1, hidden.shape[-1]))
    return hidden[:, -logits_to_keep:] if logits_to_keep else hidden


class NemotronLabsDiffusionModel(TrimodeModel):
    """The same model, registered for published ``nemotron_labs_diffusion`` checkpoints."""

    config_class = NemotronLabsDiffusionConfig


def scaled_init_(model: nn.Module, std: float, generator: torch.Generator | None = None) -> nn.Module:
    """Re-draw every Linear/Embedding weight from N(0, std) (tests: large-logit random models)."""
    with torch.no_grad():
        for p_name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


__all__ = ["TrimodeModel", "NemotronLabsDiffusionModel", "TrimodeOutput", "Projection", "set_drafter_active",
           "scaled_init_"]
