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
- Published configs load verbatim (``tests/fixtures/published-configs``): their
  ``dlm_paradigm="bidirectional"``, ``dlm_loss_weight=null``, ``dlm_type``,
  ``attn_implementation``, ``use_cache`` and ``torch_dtype`` are accepted, and their
  ``auto_map`` (the published remote code) is dropped when the config is read, so
  trimode never points transformers at code it would have to execute.
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

# dlm_paradigm values. Sources: the published configuration_nemotron_labs_diffusion.py documents
# ("bidirectional", "autoregressive", "block_diff"), default "bidirectional", and every published
# config.json says "bidirectional"; in the published modeling code "bidirectional" keeps plain
# attention whose causal/bidirectional switch is made at inference, "block_diff" builds the
# two-stream training mask, and "autoregressive" turns the diffusion attention off. NVIDIA's
# Megatron-Bridge NLD training provider names the same two-stream mask with a fully causal
# clean stream (trimode's joint loss) "sbd_block_diff". NeMo AutoModel's NLD SFT guide: "block_diff"
# for training, "bidirectional" is the inference mode.
DLM_PARADIGMS = ("bidirectional", "block_diff", "sbd_block_diff")
# A causal-only checkpoint: its diffusion pathway was never trained, so trimode's diffusion and
# speculative decoders would run on a model that cannot draft.
AR_ONLY_PARADIGMS = ("autoregressive",)
# dlm_type of the published VLM text config ("llada"); the related MinistralDLM config also knows
# "dream". LLaDA-style = a masked position predicts its own token (no shift), which is what
# trimode's diffusion head does; Dream-style predicts the next position's token (shifted).
DLM_TYPES = (None, "llada")
DEFAULT_DLM_LOSS_WEIGHT = 0.3  # alpha of the joint AR + diffusion loss; published configs say null = this default
DEFAULT_AR_LOSS_WEIGHT = 1.0
_LOSS_WEIGHT_DEFAULTS = {"dlm_loss_weight": DEFAULT_DLM_LOSS_WEIGHT, "ar_loss_weight": DEFAULT_AR_LOSS_WEIGHT}


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
        dlm_paradigm: which attention the published code builds the model with. trimode's
            inference and training are the same for every accepted value:

            - ``"bidirectional"`` (the published checkpoints' value, the published default):
              inference runs the block-bidirectional diffusion pathway beside
              the causal AR pathway (the attention pattern is chosen per forward, not by this
              field); training uses trimode's joint AR + diffusion loss.
            - ``"block_diff"`` (trimode's default): the name of the training-time two-stream
              block mask of that joint loss; inference as above.
            - ``"sbd_block_diff"``: NVIDIA's training code's name for the same two-stream mask
              with a fully causal clean stream, i.e. exactly trimode's joint loss; as above.

            ``"autoregressive"`` (a causal-only checkpoint, no diffusion pathway) and any other
            string raise ``ValueError``.
        ar_loss_weight: weight of the AR term of the joint loss (``None``: 1.0).
        dlm_loss_weight: weight (alpha) of the diffusion term of the joint loss (``None``, as in
            the published configs: the default 0.3).
        dp_varying_mask_ratio: published training flag (each data-parallel rank draws its own t).
        dlm_type: the published VLM text config's diffusion family, ``"llada"`` (a masked position
            predicts its own token, as trimode does) or absent; stored, informational only.
        threshold: default confidence threshold of block diffusion (``generate``).
        diffusion_drafter: block diffusion denoises with the LoRA drafter on (when one is
            loaded). For a converted AR model whose diffusion pathway is carried by the
            drafter alone (the base stays the original, e.g. trimode-smol); off for models
            whose own weights learned the diffusion pathway (the published ones).

    Published fields that do not change trimode: ``attn_implementation`` (trimode always runs
    torch's ``scaled_dot_product_attention``; dropped), ``auto_map`` (remote code, never run;
    dropped), ``use_cache`` (decoders always keep a KV cache), ``torch_dtype`` (read by
    transformers as ``dtype``: the checkpoint's dtype, see :func:`trimode.loading.load`).
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
    ar_loss_weight: float | None = DEFAULT_AR_LOSS_WEIGHT
    dlm_loss_weight: float | None = DEFAULT_DLM_LOSS_WEIGHT
    dp_varying_mask_ratio: bool = False
    dlm_type: str | None = None
    threshold: float = 0.9
    diffusion_drafter: bool = False

    def __post_init__(self, **kwargs):
        # Published configs name the kernel of the original code ("flex_attention", ...).
        # trimode always runs torch's scaled_dot_product_attention, so the field is dropped
        # instead of letting transformers refuse a kernel this model never dispatches to.
        kwargs.pop("attn_implementation", None)
        # Published configs carry an ``auto_map`` naming their remote code. trimode's registered
        # classes already win over it in transformers >= 5 (a registered, non-transformers class
        # counts as "explicit local code"), but a kept auto_map would be written back by
        # save_pretrained and send other readers to .py files that the directory does not hold.
        kwargs.pop("auto_map", None)
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

    def __setattr__(self, key, value):
        # ``null`` in the published configs means "the default" (the published training code falls
        # back to its own alpha). Mapping it here, on every assignment (from_pretrained sets
        # keyword overrides after __post_init__), keeps None out of the loss arithmetic.
        if value is None and key in _LOSS_WEIGHT_DEFAULTS:
            value = _LOSS_WEIGHT_DEFAULTS[key]
        super().__setattr__(key, value)

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
        need(self.dlm_paradigm not in AR_ONLY_PARADIGMS,
             f"dlm_paradigm={self.dlm_paradigm!r} marks a causal-only checkpoint without a diffusion "
             f"pathway, which trimode's decoders need; allowed: {DLM_PARADIGMS}")
        need(self.dlm_paradigm in DLM_PARADIGMS,
             f"dlm_paradigm={self.dlm_paradigm!r} is not supported; allowed: {DLM_PARADIGMS}")
        need(self.dlm_type in DLM_TYPES,
             f"dlm_type={self.dlm_type!r} is not supported (trimode's diffusion head predicts each "
             f"masked position's own token, LLaDA-style); allowed: {DLM_TYPES}")
        for name in ("dlm_loss_weight", "ar_loss_weight"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                 f"{name}={value!r} must be a number >= 0 (or null for the default)")
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
