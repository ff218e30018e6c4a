"""The vLLM model class behind :mod:`trimode.vllm_plugin` (imported by vLLM only: it needs vllm).

A trimode text model's AR pathway is Ministral-3 math, which vLLM implements as
``MistralForCausalLM`` (Llama layers plus the optional "llama 4" position-dependent query
scaling). :class:`TrimodeForCausalLM` is that class with two differences:

- the query scaling is read from trimode's ``rope_parameters.llama_4_scaling_beta`` (vLLM's
  Mistral reads a ``llama_4_scaling`` config field that ``transformers``-format configs lack);
- the checkpoint names are mapped (``encoder.*`` -> ``model.*``, ``diffusion_head`` ->
  ``lm_head``); LoRA drafter weights (``linear_spec_lora/``) are not read: AR does not use them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralForCausalLM

# checkpoint prefix -> vLLM module prefix
PREFIXES = {"encoder.": "model.", "diffusion_head.": "lm_head."}


def _vllm_name(name: str) -> str:
    for old, new in PREFIXES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


class TrimodeForCausalLM(MistralForCausalLM):
    """vLLM's Ministral-3 / Llama decoder on a trimode or published Nemotron-Labs-Diffusion checkpoint."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        config = vllm_config.model_config.hf_config
        rope = dict(getattr(config, "rope_parameters", None) or {})
        if getattr(config, "vision_config", None) is not None:
            raise ValueError("trimode's vLLM plugin serves text models only; this checkpoint has a vision tower")
        beta = rope.get("llama_4_scaling_beta")
        if beta:
            # What vLLM's MistralAttention reads to scale queries by position.
            config.llama_4_scaling = {"beta": beta, "original_max_position_embeddings":
                                      rope.get("original_max_position_embeddings", config.max_position_embeddings)}
        super().__init__(vllm_config=vllm_config, prefix=prefix)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # Llama's loader (q/k/v and gate/up stacking) on renamed weights; Mistral's own loader would
        # apply its consolidated-format renames, which these checkpoints do not use.
        return LlamaForCausalLM.load_weights(self, ((_vllm_name(n), w) for n, w in weights if "lora_" not in n))


__all__ = ["TrimodeForCausalLM"]
