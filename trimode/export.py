"""Export the AR pathway of a tri-mode model: a ``transformers`` causal LM directory, or a GGUF file.

The backbone is Ministral-3 math: ``encoder.*`` -> ``model.*``, ``diffusion_head`` -> ``lm_head``
reproduces the AR logits in ``Ministral3ForCausalLM``. Without the "llama 4" query scaling
(``rope_parameters.llama_4_scaling_beta`` absent or 0, e.g. trimode-smol and trimode-tiny) the
same weights are exactly a ``LlamaForCausalLM``, the architecture every serving engine runs
(vLLM, SGLang, TGI, llama.cpp), so :func:`export_transformers` writes that; published
Nemotron-Labs-Diffusion checkpoints keep ``Ministral3ForCausalLM`` (position-dependent query
scaling has no Llama equivalent).

:func:`export_gguf` writes the llama.cpp ``llama`` architecture with the ``gguf`` package: tensor
names from its own name map, the query/key rows reordered for GGML's interleaved RoPE (the
reverse of what ``transformers``' GGUF loader undoes), the byte-level BPE vocabulary and merges,
and the chat template. Only llama-style models can be written (see :func:`gguf_blocker`).

Self-speculation and diffusion need the diffusion head's bidirectional blocks and trimode's
decoders: an exported AR pathway serves AR only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Ministral3Config, Ministral3ForCausalLM

_SHARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                  "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range")
# RoPE kinds llama.cpp's llama architecture computes the way transformers does.
GGUF_ROPE_TYPES = ("default",)


def _rope(cfg) -> dict:
    return dict(cfg.rope_parameters or {})


def has_query_scaling(cfg) -> bool:
    """Whether the model applies Ministral-3's position-dependent ("llama 4") query scaling."""
    return bool(_rope(cfg).get("llama_4_scaling_beta"))


def _check_text_model(model) -> None:
    if hasattr(model.config, "vision_config"):
        raise ValueError("exporting a vision-language model is not supported: only the text models' AR pathway "
                         "exports (the vision tower has no place in a causal-LM directory)")


def _ar_state_dict(model) -> dict[str, torch.Tensor]:
    """The AR pathway's weights under transformers' causal-LM names (adapters left out)."""
    raw = model.state_dict()
    state = {("model." + k.removeprefix("encoder.")).replace(".base_layer.", "."): v
             for k, v in raw.items() if k.startswith("encoder.") and "lora_" not in k}
    state["lm_head.weight"] = raw["diffusion_head.weight"]
    return state


def to_transformers_causal_lm(model, architecture: str = "ministral3"):
    """A transformers causal LM whose logits equal ``model``'s AR logits (same device and dtype).

    ``architecture``: ``"ministral3"`` (any trimode text model) or ``"llama"`` (models without
    the llama-4 query scaling; ``"auto"`` picks it for them)."""
    _check_text_model(model)
    cfg = model.config
    if architecture == "auto":
        architecture = "ministral3" if has_query_scaling(cfg) else "llama"
    if architecture not in ("ministral3", "llama"):
        raise ValueError(f"architecture={architecture!r} must be one of auto, llama, ministral3")
    rope = _rope(cfg)
    fields = {k: getattr(cfg, k) for k in _SHARED_FIELDS}
    if architecture == "llama":
        if has_query_scaling(cfg):
            raise ValueError("this model scales queries by position (rope_parameters.llama_4_scaling_beta="
                             f"{rope['llama_4_scaling_beta']}), which LlamaForCausalLM cannot express; "
                             "export it as ministral3")
        rope.pop("llama_4_scaling_beta", None)
        hf_config, cls = LlamaConfig(**fields, rope_parameters=rope, tie_word_embeddings=False,
                                     attention_bias=False, mlp_bias=False), LlamaForCausalLM
    else:
        # Ministral3 always applies the llama-4 query scaling and needs its keys; trimode applies none
        # without them, which is beta = 0 (rope_type "default" models, e.g. the shipped one).
        if rope.get("llama_4_scaling_beta") is None:
            rope["llama_4_scaling_beta"] = 0.0
            rope.setdefault("original_max_position_embeddings", cfg.max_position_embeddings)
        hf_config, cls = Ministral3Config(**fields, rope_parameters=rope, tie_word_embeddings=False), \
            Ministral3ForCausalLM
    param = next(model.parameters())
    with torch.device("meta"):
        hf = cls(hf_config)
    hf.load_state_dict(_ar_state_dict(model), strict=True, assign=True)
    # Non-persistent rope buffers were created on meta: rebuild them on the real device.
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hf_config).to(param.device)
    return hf.to(device=param.device, dtype=param.dtype).eval()


def export_transformers(model, tokenizer, out: str | Path, architecture: str = "auto",
                        dtype: torch.dtype | None = None) -> str:
    """Write ``model``'s AR pathway (and ``tokenizer``) as a transformers causal-LM directory.

    Returns the architecture's class name (what a serving engine reads from config.json)."""
    hf = to_transformers_causal_lm(model, architecture)
    if dtype is not None:
        hf = hf.to(dtype)
    hf.generation_config.do_sample = False  # trimode's AR default: greedy
    hf.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return type(hf).__name__


# ------------------------------------------------------------------------------------------- GGUF
def gguf_blocker(config) -> str | None:
    """Why ``config`` cannot be written as llama.cpp's ``llama`` architecture, or None if it can."""
    if hasattr(config, "vision_config"):
        return "a vision-language model (llama.cpp's llama architecture has no vision tower)"
    rope = _rope(config)
    if has_query_scaling(config):
        return (f"Ministral-3's position-dependent query scaling (rope_parameters.llama_4_scaling_beta="
                f"{rope['llama_4_scaling_beta']}) has no equivalent in llama.cpp's llama architecture")
    if rope.get("rope_type", "default") not in GGUF_ROPE_TYPES:
        return (f"rope_parameters.rope_type={rope.get('rope_type')!r}: only {', '.join(GGUF_ROPE_TYPES)} is "
                "written (the GGUF rope-scaling keys are not mapped yet)")
    return None


def interleave_rope_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """(heads * head_dim, in) q/k weight, rotate-half row order -> GGML's interleaved pairs.

    transformers rotates dimension i with i + head_dim/2; GGML's "normal" RoPE rotates 2j with
    2j+1. Row (h, half, j) moves to (h, j, half)."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _tokenizer_vocab(tokenizer) -> dict:
    """tokens (by id), token types, merges and special ids of a byte-level BPE tokenizer."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"the tokenizer is {model.get('type')}, not byte-level BPE: GGUF export writes BPE only")
    vocab = dict(model["vocab"])
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    for i, t in added.items():
        vocab.setdefault(t["content"], i)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = gguf.TokenType.NORMAL
    for i, t in added.items():
        types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def export_gguf(model, tokenizer, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model``'s AR pathway as a llama.cpp ``llama`` GGUF file (float32 or float16 tensors).

    Raises ValueError naming why when the model cannot be written (:func:`gguf_blocker`)."""
    try:
        import gguf
    except ImportError:
        raise ValueError("writing GGUF needs the gguf package: pip install gguf") from None
    cfg = model.config
    why = gguf_blocker(cfg)
    if why:
        raise ValueError(f"cannot export this model to GGUF: {why}. Export a transformers directory instead "
                         f"(trimode export MODEL --out DIR)")
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"GGUF dtype={dtype} must be torch.float32 or torch.float16")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = gguf.MODEL_ARCH.LLAMA
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(getattr(cfg, "_name_or_path", "") or "trimode")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(float(_rope(cfg)["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == torch.float32 else gguf.LlamaFileType.MOSTLY_F16)
    if tokenizer is not None:
        _add_tokenizer(writer, tokenizer, cfg)
    for name, tensor in _ar_state_dict(model).items():
        tensor = tensor.detach().to(torch.float32)
        if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            heads = cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads
            tensor = interleave_rope_rows(tensor, heads)
        gguf_name = names.get_name(name.removesuffix(".weight"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {name!r}")
        # Norm weights stay float32, as llama.cpp's converter keeps 1-D tensors.
        out_dtype = torch.float32 if tensor.dim() == 1 else dtype
        writer.add_tensor(gguf_name + ".weight", tensor.to(out_dtype).cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, tokenizer, cfg) -> None:
    vocab = _tokenizer_vocab(tokenizer)
    if len(vocab["tokens"]) > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(vocab['tokens'])} tokens, more than the model's "
                         f"vocab_size={cfg.vocab_size}")
    pad = cfg.vocab_size - len(vocab["tokens"])  # rows of the embedding no token uses
    writer.add_tokenizer_model("gpt2")
    # llama.cpp picks its pre-tokenizer regex by this name; "default" is its generic byte-level one
    # (transformers' GGUF loader reads the tokens and merges and tokenizes exactly as the source).
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab["tokens"] + [f"[PAD{i}]" for i in range(len(vocab["tokens"]), cfg.vocab_size)])
    import gguf

    writer.add_token_types(vocab["types"] + [gguf.TokenType.UNUSED] * pad)
    writer.add_token_merges(vocab["merges"])
    for key, setter in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                        ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(cfg, key, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            setter(int(value))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)


__all__ = ["to_transformers_causal_lm", "export_transformers", "export_gguf", "gguf_blocker", "has_query_scaling",
           "interleave_rope_rows"]
