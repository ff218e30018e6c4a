"""The tri-mode model: a Ministral-3 style decoder with one untied head.

The model does math only. It takes tokens, positions, an attention mask (or a
pattern among the new tokens, see :mod:`trimode.masks`), an optional
:class:`~trimode.cache.KVCache` and a write/peek flag, and returns logits. It
does not know which decoding mode runs; the decoders live in
:mod:`trimode.generation` and are attached as methods for the published API.

Backbone math equals ``transformers``' ``Ministral3Model``: RMSNorm (computed in
float32), RoPE from transformers' rope registry (default, YaRN, ...), the
"llama 4" query scaling ``1 + beta * log(1 + floor(pos / original_max))``,
grouped-query attention, SwiGLU. Weight names follow the published
checkpoints: ``encoder.*`` and ``diffusion_head.weight``.

Shapes: B batch, Q new tokens, K attended slots, H query heads, Hkv key/value
heads, D head dim, V vocab.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .cache import KVCache
from .configuration import NemotronLabsDiffusionConfig, TrimodeConfig
from .generation.api import DecodingMixin
from .masks import causal_pattern, with_prefix


class Projection(nn.Linear):
    """``nn.Linear`` whose weight can be packed for fast CPU inference.

    A bandwidth-bound forward streams every weight once; how fast depends on the layout
    the matmul reads. :meth:`TrimodeModel.pack_weights` hands each projection's weight to
    a :class:`PackedWeights` (oneDNN's blocked layout, one for q/k/v together and one for
    gate/up together), which serves a 1-token decode step and a 16-token verify alike.
    The parameter keeps its name and shape (checkpoints, PEFT targeting and LoRA work as
    before) but no longer holds its own copy: its data becomes a one-element placeholder.
    ``state_dict`` still returns the real values, and anything that needs the dense
    weight back (a forward with gradients, ``.to()``, ``load_state_dict``) unpacks first.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._packed: PackedWeights | None = None
        self._precomputed: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, output) from a group

    @property
    def packed(self) -> bool:
        return self._packed is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self._precomputed
        if pre is not None:
            self.__dict__["_precomputed"] = None  # skips nn.Module.__setattr__: this runs per projection call
            if pre[0] is x:  # computed together with its group (see project_together)
                return pre[1]
        if self._packed is not None:
            if not (torch.is_grad_enabled() and self.weight.requires_grad):
                return self._packed(x)[self._packed.members.index(self)]
            self._packed.unpack()  # training: gradients need the dense weight
        return F.linear(x, self.weight, self.bias)

    def __setstate__(self, state):
        super().__setstate__(state)
        if self._packed is not None:  # a copy (deepcopy, pickle) of a packed projection: no dense stand-in
            _drop_dense(self.weight)

    def _apply(self, fn, recurse=True):
        # .to(), .float(), .cuda(), ...: move the real values, not the placeholder.
        if self._packed is not None:
            self._packed.unpack()
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._packed is not None:
            destination[prefix + "weight"] = self._packed.dense(self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self._packed is not None:
            self._packed.unpack()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _drop_dense(weight: nn.Parameter) -> None:
    """Free a packed weight's dense values: its data becomes one element expanded to its shape
    (the same Parameter object, name and shape, which optimizers and PEFT hold)."""
    weight.data = torch.empty(1, dtype=weight.dtype, device=weight.device).expand(weight.shape)


class PackedWeights:
    """oneDNN-packed weights for one or more :class:`Projection` s that read the same input.

    Stacking q/k/v (or gate/up) makes one bigger matmul instead of three (two) small
    ones; the packed layout is what oneDNN's CPU kernels stream fastest for any number
    of rows. The stacked rows are packed in chunks of at most ``CHUNK_BYTES``, each
    member's dense weight released as soon as its rows are packed, so packing a model
    never holds more than one chunk twice. CPU float32 only (see :func:`packable`).
    """

    ROWS_HINT = 16  # the row count oneDNN tunes the layout for; it stays fast from 1 to hundreds
    CHUNK_BYTES = 32 * 2**20
    # Below this many weights a group stays dense: oneDNN's packed call costs about 20 us whatever the
    # size, more than a plain matmul of a (512, 256) weight takes for one row.
    MIN_ELEMENTS = 2**18

    def __init__(self, members: list[Projection]):
        self.members = members
        self.sizes = [m.out_features for m in members]
        w = members[0].weight
        rows = self.rows = max(1, self.CHUNK_BYTES // (w.shape[1] * w.element_size()))
        self.chunks: list[torch.Tensor] = []  # packed (rows_i, in) pieces of the stacked (sum(out), in) matrix
        total, done = sum(self.sizes), 0
        ends = [sum(self.sizes[:i + 1]) for i in range(len(members))]
        for start in range(0, total, rows):
            stop = min(start + rows, total)
            self.chunks.append(torch.ops.mkldnn._reorder_linear_weight(self._rows(start, stop), self.ROWS_HINT))
            while done < len(members) and ends[done] <= stop:  # every row of this member is packed
                self._release(members[done])
                done += 1
        biases = [m.bias for m in members]
        self._bias_chunks = None if biases[0] is None else list(torch.cat([b.detach() for b in biases]).split(rows))

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the members' weights stacked, as one contiguous (stop - start, in) tensor."""
        pieces, offset = [], 0
        for m, size in zip(self.members, self.sizes):
            lo, hi = max(start, offset), min(stop, offset + size)
            if lo < hi:
                pieces.append(m.weight.detach()[lo - offset:hi - offset])
            offset += size
        return pieces[0].contiguous() if len(pieces) == 1 else torch.cat(pieces)

    def _release(self, member: Projection) -> None:
        _drop_dense(member.weight)
        member._packed = self

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (..., in) -> one (..., out_i) view per member."""
        outs = [torch.ops.mkldnn._linear_pointwise(x, w, None if self._bias_chunks is None else self._bias_chunks[i],
                                                   "none", [], "")
                for i, w in enumerate(self.chunks)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (..., sum(out))
        return list(out.split(self.sizes, dim=-1)) if len(self.sizes) > 1 else [out]

    # copy.deepcopy / pickle: oneDNN's opaque tensors have no storage to copy; their dense values do.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["chunks"] = [c.to_dense() for c in self.chunks]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.chunks = [torch.ops.mkldnn._reorder_linear_weight(c, self.ROWS_HINT) for c in self.chunks]

    def _dense_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the stacked matrix as a new dense (stop - start, in) tensor; only the
        chunks holding them are converted."""
        first, last = start // self.rows, (stop - 1) // self.rows
        dense = torch.cat([c.to_dense() for c in self.chunks[first:last + 1]])
        offset = first * self.rows
        return dense[start - offset:stop - offset].clone()

    def dense(self, member: Projection) -> torch.Tensor:
        """member's dense (out, in) weight."""
        i = self.members.index(member)
        start = sum(self.sizes[:i])
        return self._dense_rows(start, start + self.sizes[i])

    def unpack(self) -> None:
        """Give every member its dense weight back and drop the packed copy."""
        for m, w in zip(self.members, self._dense_rows(0, sum(self.sizes)).split(self.sizes)):
            m.weight.data = w.clone()
            m._packed = None
        self.members, self.chunks = [], []


def packable(projections: list[Projection]) -> bool:
    """Packing pays for float32 CPU weights (bfloat16 is the choice when memory is short, and packing a
    memory-mapped checkpoint would keep its file pages beside the packed copy); a group packs
    together when dtype, device and bias agree."""
    w = projections[0].weight
    return (torch.backends.mkldnn.is_available() and w.device.type == "cpu" and w.dtype == torch.float32
            and all(p.weight.dtype == w.dtype and p.weight.device == w.device
                    and (p.bias is None) == (projections[0].bias is None) and p._packed is None
                    for p in projections))


def base_projection(module: nn.Module) -> nn.Module:
    """The layer under PEFT wrappers (``base_layer`` chains); the module itself otherwise."""
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def project_together(modules: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """``[m(x) for m in modules]``, with one matmul when their weights are packed together.

    Each module is a :class:`Projection` or a PEFT layer wrapping one. The group's
    output is handed to each base projection for exactly this input, then every module
    is called as usual, so a wrapping LoRA adds its update (and per-position gate) to it.
    """
    bases = [base_projection(m) for m in modules]
    group = getattr(bases[0], "_packed", None)
    if (group is not None and len(group.members) == len(bases)
            and all(b._packed is group for b in bases)
            and not (torch.is_grad_enabled() and bases[0].weight.requires_grad)):
        for base, out in zip(bases, group(x)):
            base.__dict__["_precomputed"] = (x, out)
    return [m(x) for m in modules]


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

    def forward(self, input_ids, position_ids, mask, cache):
        x = self.embed_tokens(input_ids)
        rope = self.rotary_emb(position_ids, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, mask, cache)
        return self.norm(x)


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


def set_drafter_active(model: nn.Module, active: bool | torch.Tensor) -> None:
    """Switch every PEFT adapter layer inside ``model`` on (draft forwards) or off (all others).

    ``active`` may also be a bool tensor over the forward's tokens, (B, Q) or (Q,): the
    adapter then acts only at the True positions (quadratic-spec's mask groups). At the
    other positions the LoRA update is multiplied by zero before it is added, so a position
    that attends to no gated one (quadratic-spec's verified chain never attends to its mask
    groups) gets exactly the adapter-free model's logits and keys/values: lossless.

    A no-op when PEFT is not loaded or the model carries no adapter.
    """
    if "peft" not in sys.modules:
        return
    gate = active if isinstance(active, torch.Tensor) else None
    on = gate is not None or bool(active)
    for layer, downs in _adapter_layers(model):
        if layer.disable_adapters == on:
            layer.enable_adapters(on)
        for down in downs:
            _set_lora_gate(down, gate)


def _adapter_layers(model: nn.Module) -> list[tuple[nn.Module, list[nn.Module]]]:
    """Every PEFT adapter layer in ``model`` with its LoRA down-projections, found once per adapter set.

    Walking every module on each forward cost milliseconds (a decode step of a 135M model
    runs in tens); PEFT records its adapters in ``model.peft_config`` when it injects or adds
    them, so that dict (its identity and keys) says when to look again.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    config = getattr(model, "peft_config", None)
    key = (id(config), tuple(config) if isinstance(config, dict) else None)
    cached = model.__dict__.get("_trimode_adapter_layers")
    if cached is None or cached[0] != key:
        layers = [(m, list(getattr(m, "lora_A", {}).values())) for m in model.modules()
                  if isinstance(m, BaseTunerLayer)]
        cached = (key, layers)
        object.__setattr__(model, "_trimode_adapter_layers", cached)  # a plain attribute, not a submodule
    return cached[1]


def _set_lora_gate(down: nn.Module, gate: torch.Tensor | None) -> None:
    """Gate a LoRA down-projection's output per position (None: ungated). The hook is
    registered the first time a gate is set, and does nothing while the gate is None."""
    if not hasattr(down, "_trimode_gate"):
        if gate is None:
            return
        down.register_forward_hook(_apply_lora_gate)
    down._trimode_gate = gate


def _apply_lora_gate(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
    gate = module._trimode_gate  # (B, Q) or (Q,) bool
    if gate is None:
        return None
    return output * gate.expand(output.shape[:-1]).unsqueeze(-1).to(output.dtype)  # (B, Q, r)


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
        """
        if unused:
            bad = sorted(k for k, v in unused.items() if v is not None and k not in ("return_dict", "use_cache"))
            if bad:
                raise TypeError(f"TrimodeModel.forward got unsupported arguments {bad}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        B, Q = input_ids.shape
        cache = past_key_values
        if position_ids is None:
            offset = cache.lengths[:, None] if cache is not None else 0
            position_ids = offset + torch.arange(Q, device=input_ids.device)[None, :].expand(B, Q)
        mask = self._build_mask(attention_mask, cache, B, Q, input_ids.device)

        if isinstance(use_drafter, torch.Tensor) and (
                use_drafter.dtype != torch.bool or use_drafter.shape not in ((Q,), (B, Q))):
            raise ValueError(f"use_drafter must be a bool or a bool tensor of shape ({Q},) or ({B}, {Q}), "
                             f"got {use_drafter.dtype} {tuple(use_drafter.shape)}")
        set_drafter_active(self, use_drafter)
        compiled = self._compiled
        if compiled is not None and cache is not None and cache.full_width and Q in compiled.widths:
            cache.check_room(Q)  # on the host, outside the graph
            hidden = compiled(input_ids, position_ids, mask, cache)
        else:
            hidden = self.encoder(input_ids, position_ids, mask, cache)  # (B, Q, hidden)
        if cache is not None and cache_write:
            cache.advance(Q)

        if isinstance(logits_to_keep, torch.Tensor):
            idx = logits_to_keep.to(hidden.device)
            hidden = torch.gather(hidden, 1, idx[..., None].expand(-1, -1, hidden.shape[-1]))
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.diffusion_head(hidden)  # (B, Q', V)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                   ignore_index=-100)
        return TrimodeOutput(loss=loss, logits=logits)

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
