"""Configuration of a tri-mode model.

One config class, ``TrimodeConfig`` (``model_type = "trimode"``), holds the
Ministral-3 text-backbone fields under their usual transformers names plus the
tri-mode fields of the published checkpoints (``mask_token_id``, ``block_size``,
``dlm_paradigm``, loss weights). Field names match the published flat
``config.json`` so a published checkpoint's config loads without renaming.

``NemotronLabsDiffusionConfig`` is the same config under the published
``model_type = "nemotron_labs_diffusion"``: registering it lets
``AutoModel.from_pretrained`` open a published directory and return our model.

Design choices:
- RoPE is described only by ``rope_parameters`` (transformers 5 convention);
  YaRN and the "llama 4" query scaling (``llama_4_scaling_beta``) live there.
- Validation raises ``ValueError`` naming the field and what is allowed, so a
  bad config never surfaces as a shape error deep inside torch.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

# The rope parameters of the published Ministral-3 / Nemotron-Labs-Diffusion configs
# (YaRN with the "llama 4" position-dependent query scaling).
DEFAULT_ROPE_PARAMETERS: dict[str, Any] = {
    "rope_type": "yarn",
    "rope_theta": 1_000_000.0,
    "factor": 16.0,
    "original_max_position_embeddings": 16384,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "llama_4_scaling_beta": 0.1,
}

DLM_PARADIGMS = ("block_diff",)


class TrimodeConfig(PreTrainedConfig):
    r"""Config of a tri-mode (AR + block diffusion + self-speculation) decoder-only model.

    Args:
        vocab_size: number of token ids.
        hidden_size: width of the residual stream.
        intermediate_size: width of the SwiGLU MLP.
        num_hidden_layers: number of decoder layers.
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads (grouped-query attention; divides the query heads).
        head_dim: per-head width (defaults to hidden_size // num_attention_heads).
        hidden_act: MLP activation (``"silu"`` for SwiGLU).
        max_position_embeddings: longest sequence the model is meant for.
        rms_norm_eps: RMSNorm epsilon.
        rope_parameters: RoPE description (``rope_type`` default/yarn/..., ``rope_theta``,
            YaRN fields, ``llama_4_scaling_beta`` for the query scaling).
        mask_token_id: the ``[MASK]`` token of the diffusion pathway.
        block_size: default block length of the diffusion / speculative decoders.
        dlm_paradigm: diffusion paradigm of the published checkpoints (only ``"block_diff"``).
        ar_loss_weight: weight of the AR term of the joint loss.
        dlm_loss_weight: weight (alpha) of the diffusion term of the joint loss.
        dp_varying_mask_ratio: published training flag (each data-parallel rank draws its own t).
        threshold: default confidence threshold of block diffusion (``generate``).
    """

    model_type = "trimode"
    keys_to_ignore_at_inference = ["past_key_values"]
    # These keys are read by our own rope code, not validated by transformers' rope checks.
    ignore_keys_at_rope_validation = {"llama_4_scaling_beta", "max_position_embeddings"}

    vocab_size: int = 131072
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 34
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 262144
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    sliding_window: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    mask_token_id: int = 100
    block_size: int = 32
    dlm_paradigm: str = "block_diff"
    ar_loss_weight: float = 1.0
    dlm_loss_weight: float = 0.3
    dp_varying_mask_ratio: bool = False
    threshold: float = 0.9

    def __post_init__(self, **kwargs):
        # Published configs name the kernel of the original code ("flex_attention", ...).
        # trimode always runs torch's scaled_dot_product_attention, so the field is dropped
        # instead of letting transformers refuse a kernel this model never dispatches to.
        kwargs.pop("attn_implementation", None)
        if self.rope_parameters is None:
            self.rope_parameters = dict(DEFAULT_ROPE_PARAMETERS)
        else:
            self.rope_parameters = dict(self.rope_parameters)
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        self.standardize_rope_params()
        self._check()

    def _check(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"TrimodeConfig: {msg}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "block_size"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive integer")
        need(self.num_attention_heads % self.num_key_value_heads == 0,
             f"num_key_value_heads={self.num_key_value_heads} must divide "
             f"num_attention_heads={self.num_attention_heads}")
        need(self.head_dim % 2 == 0, f"head_dim={self.head_dim} must be even (RoPE rotates pairs)")
        need(0 <= self.mask_token_id < self.vocab_size,
             f"mask_token_id={self.mask_token_id} must be in [0, vocab_size={self.vocab_size})")
        need(self.dlm_paradigm in DLM_PARADIGMS,
             f"dlm_paradigm={self.dlm_paradigm!r} is not supported; allowed: {DLM_PARADIGMS}")
        need(self.sliding_window is None, f"sliding_window={self.sliding_window!r}: only null is supported")
        need(self.hidden_act == "silu", f"hidden_act={self.hidden_act!r}: only 'silu' (SwiGLU) is supported")
        need(not self.tie_word_embeddings, "tie_word_embeddings=true is not supported: the head is untied")
        need(0.0 < self.threshold <= 1.0, f"threshold={self.threshold} must be in (0, 1]")

    @property
    def eos_token_ids(self) -> list[int]:
        """EOS ids as a list (the config may hold one id or several)."""
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]


class NemotronLabsDiffusionConfig(TrimodeConfig):
    """The published Nemotron-Labs-Diffusion flat config: same fields, published ``model_type``."""

    model_type = "nemotron_labs_diffusion"
