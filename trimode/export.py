"""Export the AR pathway of a tri-mode model to a standard ``transformers`` causal LM.

The backbone is Ministral-3 math, so ``Ministral3ForCausalLM`` with the same
weights (``encoder.*`` -> ``model.*``, ``diffusion_head`` -> ``lm_head``)
reproduces the AR logits. Used as the baseline in benchmarks (same weights,
same run) and for users who want to serve only the AR mode elsewhere.
"""

from __future__ import annotations

import torch
from transformers import Ministral3Config, Ministral3ForCausalLM

_SHARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                  "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range")


def to_transformers_causal_lm(model) -> Ministral3ForCausalLM:
    """A ``Ministral3ForCausalLM`` whose logits equal ``model``'s AR logits (same device and dtype)."""
    cfg = model.config
    rope = dict(cfg.rope_parameters)
    # Ministral3 always applies the llama-4 query scaling and needs its keys; trimode applies none
    # without them, which is beta = 0 (rope_type "default" models, e.g. the shipped one).
    if rope.get("llama_4_scaling_beta") is None:
        rope["llama_4_scaling_beta"] = 0.0
        rope.setdefault("original_max_position_embeddings", cfg.max_position_embeddings)
    hf_config = Ministral3Config(**{k: getattr(cfg, k) for k in _SHARED_FIELDS},
                                 rope_parameters=rope, tie_word_embeddings=False)
    param = next(model.parameters())
    with torch.device("meta"):
        hf = Ministral3ForCausalLM(hf_config)
    state = {("model." + k.removeprefix("encoder.")): v for k, v in model.state_dict().items()
             if k.startswith("encoder.") and "lora_" not in k}
    state = {k.replace(".base_layer.", "."): v for k, v in state.items()}  # PEFT-wrapped o_proj
    state["lm_head.weight"] = model.state_dict()["diffusion_head.weight"]
    hf.load_state_dict(state, strict=True, assign=True)
    # Non-persistent rope buffers were created on meta: rebuild them on the real device.
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hf_config).to(param.device)
    return hf.to(device=param.device, dtype=param.dtype).eval()


def save_transformers_causal_lm(model, path) -> None:
    to_transformers_causal_lm(model).save_pretrained(path)
