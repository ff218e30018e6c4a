"""The decoder backbone (``encoder.*`` in published checkpoints): embeddings, layers, final norm.

Its math equals ``transformers``' ``Ministral3Model``: RMSNorm (computed in float32),
RoPE from transformers' rope registry (default, YaRN, ...), the "llama 4" query scaling
``1 + beta * log(1 + floor(pos / original_max))``, grouped-query attention, SwiGLU.
q/k/v and gate/up run as one matmul each when packed (:mod:`trimode.projections`).

Shapes: B batch, Q new tokens, K attended slots, H query heads, Hkv key/value heads,
D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .cache import KVCache
from .configuration import TrimodeConfig
from .projections import Projection, project_together


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 (as Ministral-3 does), scale in the input dtype; one fused kernel.
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


class Rotary(nn.Module):
    """RoPE tables from transformers' registry (so YaRN etc. match the reference exactly)."""

    def __init__(self, config: TrimodeConfig):
        super().__init__()
        rope = config.rope_parameters
        rope_type = rope.get("rope_type", "default")
        if rope_type == "default":
            dim = config.head_dim
            inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
            self.attention_scaling = 1.0
        elif rope_type in ROPE_INIT_FUNCTIONS:
            inv_freq, self.attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](config)
        else:
            raise ValueError(f"rope_parameters.rope_type={rope_type!r} is not supported; "
                             f"allowed: default, {', '.join(sorted(ROPE_INIT_FUNCTIONS))}")
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # "llama 4" query scaling (Ministral-3): stronger attention far beyond the original context.
        self.q_scale_beta = rope.get("llama_4_scaling_beta")
        self.q_scale_period = rope.get("original_max_position_embeddings") or config.max_position_embeddings

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        """position_ids (B, Q) -> cos, sin (B, 1, Q, D) and query scale (B, 1, Q, 1) or None."""
        freqs = position_ids[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_scaling).to(dtype)[:, None]
        sin = (emb.sin() * self.attention_scaling).to(dtype)[:, None]
        q_scale = None
        if self.q_scale_beta:
            q_scale = 1 + self.q_scale_beta * torch.log1p(torch.floor(position_ids.float() / self.q_scale_period))
            q_scale = q_scale.to(dtype)[:, None, :, None]
        return cos, sin, q_scale


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: TrimodeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        bias = config.attention_bias
        self.q_proj = Projection(config.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = Projection(config.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = Projection(config.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = Projection(self.n_heads * self.head_dim, config.hidden_size, bias=bias)
        self.scale = self.head_dim ** -0.5

    def forward(self, x, rope, mask, cache: KVCache | None):
        B, Q, _ = x.shape
        cos, sin, q_scale = rope
        q, k, v = project_together([self.q_proj, self.k_proj, self.v_proj], x)
        q = q.view(B, Q, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, Q, D)
        k = k.view(B, Q, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, Q, D)
        v = v.view(B, Q, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if q_scale is not None:
            q = q * q_scale
        if cache is not None:
            k, v = cache.store(self.layer_idx, k, v)  # (B, Hkv, K, D)
        if mask is None:
            # Only reached when every query may see every key (uniform single-token step).
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale, enable_gqa=self.n_kv != self.n_heads)
        elif isinstance(mask, str):  # "causal", no cache, no padding
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                                 enable_gqa=self.n_kv != self.n_heads)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                                 enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, Q, -1))


class MLP(nn.Module):
    def __init__(self, config: TrimodeConfig):
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = Projection(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = Projection(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = Projection(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x):
        gate, up = project_together([self.gate_proj, self.up_proj], x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: TrimodeConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, rope, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Encoder(nn.Module):
    """The backbone (``encoder.*`` in published checkpoints): embeddings, layers, final norm."""

    def __init__(self, config: TrimodeConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = Rotary(config)

    def forward(self, input_ids, position_ids, mask, cache, inputs_embeds: torch.Tensor | None = None):
        """inputs_embeds (B, Q, hidden): used instead of embedding input_ids (image features placed in)."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        rope = self.rotary_emb(position_ids, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, mask, cache)
        return self.norm(x)
