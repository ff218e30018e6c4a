"""Turn a ``transformers`` AR checkpoint (Llama, Mistral, Ministral-3) into a tri-mode model.

This is how users make their own AR model tri-mode: convert on load, then train the
``joint`` stage from it. The converted model's AR (causal) logits equal the original's.

Mapping:
- config: the backbone fields keep their names; RoPE is read from the transformers
  config object (``AutoConfig`` standardises legacy ``rope_scaling`` into
  ``rope_parameters``): Llama/Mistral default RoPE -> ``{"rope_type": "default",
  "rope_theta": ...}``; Llama-3 / YaRN / Ministral-3 (YaRN + llama-4 query scaling)
  parameters are kept as they are.
- weights (safetensors only, never pickles): ``model.*`` -> ``encoder.*``,
  ``lm_head.weight`` -> ``diffusion_head.weight``; tied embeddings are copied into the
  untied head.
- mask token: ``mask_token_id`` if given, else the tokenizer's mask token if it has one,
  else a new token: an unused embedding row when the vocab is padded beyond the
  tokenizer, otherwise one appended row (embeddings and head resized). Its embedding
  and head rows start as the mean of the existing rows; the mean logit is never the
  largest, so greedy AR output is unchanged. The token ``<|mask|>`` is added to the
  tokenizer with that id.
- Mistral's ``sliding_window`` is dropped (trimode attends to the whole context): outputs
  are identical up to the window length, and a warning says so.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .checkpoint_files import require_safetensors
from .configuration import TrimodeConfig
from .modeling import TrimodeModel

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "ministral3")
TRIMODE_MODEL_TYPES = ("trimode", "nemotron_labs_diffusion")
MASK_TOKEN = "<|mask|>"


@dataclass
class Converted:
    model: TrimodeModel
    tokenizer: object | None
    source_type: str
    mask_token_id: int
    added_mask_token: bool
    notes: list[str] = field(default_factory=list)


def model_type_of(path: Path) -> str:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no model at {path}: expected a directory with config.json")
    return json.loads(cfg_file.read_text()).get("model_type", "")


def is_convertible(path: Path) -> bool:
    return model_type_of(path) in SUPPORTED_MODEL_TYPES


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    files = require_safetensors(path)
    state = {}
    for name in files:
        with safe_open(name, "pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key)
    return state


def _map_weights(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a buffer some old checkpoints carry; recomputed from the config
        if key.startswith("model."):
            out["encoder." + key[len("model."):]] = value
        elif key == "lm_head.weight":
            out["diffusion_head.weight"] = value
        else:
            raise ValueError(f"unexpected weight {key!r} in a {source} checkpoint; expected model.* and lm_head.weight")
    if "diffusion_head.weight" not in out:  # tied embeddings: the head is the embedding matrix
        out["diffusion_head.weight"] = out["encoder.embed_tokens.weight"].clone()
    return out


def _trimode_config(hf, source: str, mask_token_id: int, vocab_size: int, block_size: int,
                    notes: list[str]) -> TrimodeConfig:
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise ValueError(f"{source} checkpoint has hidden_act={hf.hidden_act!r}; only 'silu' (SwiGLU) is supported")
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    if not rope:
        rope = {"rope_type": "default", "rope_theta": float(getattr(hf, "rope_theta", 10000.0))}
    rope.setdefault("rope_type", rope.pop("type", "default"))
    rope.pop("type", None)
    window = getattr(hf, "sliding_window", None)
    if window is not None:
        note = (f"sliding_window={window} dropped: trimode attends to the whole context, so outputs equal the "
                f"original for sequences up to {window} tokens")
        if window < hf.max_position_embeddings:
            warnings.warn(note, stacklevel=3)
        notes.append(note)
    heads = hf.num_attention_heads
    eos = hf.eos_token_id
    return TrimodeConfig(
        vocab_size=vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        num_hidden_layers=hf.num_hidden_layers, num_attention_heads=heads,
        num_key_value_heads=getattr(hf, "num_key_value_heads", None) or heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // heads,
        max_position_embeddings=hf.max_position_embeddings, rms_norm_eps=hf.rms_norm_eps,
        rope_parameters=rope, attention_bias=bool(getattr(hf, "attention_bias", False)),
        mlp_bias=bool(getattr(hf, "mlp_bias", False)), initializer_range=getattr(hf, "initializer_range", 0.02),
        bos_token_id=hf.bos_token_id, eos_token_id=eos, pad_token_id=getattr(hf, "pad_token_id", None),
        tie_word_embeddings=False, mask_token_id=mask_token_id, block_size=block_size,
    )


def _read_directory(path: Path, tokenizer):
    """(transformers config, raw state dict, tokenizer) of a transformers checkpoint directory."""
    from transformers import AutoConfig, AutoTokenizer

    source = model_type_of(path)
    if source not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{path} has model_type={source!r}; convertible AR checkpoints are "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)} (trimode checkpoints load directly)")
    hf = AutoConfig.from_pretrained(path)
    if tokenizer is None and ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        tokenizer = AutoTokenizer.from_pretrained(path)
    return hf, _read_safetensors(path), tokenizer


def _read_gguf(path: Path, tokenizer):
    """(transformers config, float32 state dict, tokenizer) of a GGUF file, through transformers'
    GGUF loader (it dequantises every tensor; the ``gguf`` package must be installed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ValueError(f"reading {path.name} needs the gguf package: pip install gguf") from None
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (ValueError, NotImplementedError, KeyError) as e:
        # transformers names the unsupported architecture or quantisation type; keep its first line
        raise ValueError(f"{path.name}: transformers cannot read this GGUF file: {str(e).splitlines()[0]}") from None
    hf = hf_model.config
    if hf.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{path.name} holds a {hf.model_type!r} model; convertible architectures are "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    state = {k: v for k, v in hf_model.state_dict().items()}
    if getattr(hf, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the embedding itself; _map_weights copies it into the head
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return hf, state, tokenizer


def convert_hf_checkpoint(path: str | Path, mask_token_id: int | None = None, block_size: int = 32,
                          tokenizer=None, dtype: torch.dtype = torch.float32) -> Converted:
    """Load a Llama / Mistral / Ministral-3 AR checkpoint as a :class:`TrimodeModel`.

    ``path``: a transformers ``*ForCausalLM`` directory (safetensors), or a ``.gguf`` file of
    one (dequantised to float32 by transformers' GGUF loader).
    ``tokenizer``: the checkpoint's tokenizer (default: loaded from ``path`` when present);
    it receives the mask token when one is added.
    """
    path = Path(path)
    if path.suffix == ".gguf" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf file; give a GGUF file or a checkpoint directory")
        hf, raw, tokenizer = _read_gguf(path, tokenizer)
    else:
        hf, raw, tokenizer = _read_directory(path, tokenizer)
    source = hf.model_type
    state = _map_weights(raw, source)
    vocab = state["encoder.embed_tokens.weight"].shape[0]
    if vocab != hf.vocab_size:
        raise ValueError(f"{path}: embedding has {vocab} rows but config vocab_size={hf.vocab_size}")

    notes: list[str] = []
    added = False
    if mask_token_id is None and tokenizer is not None and tokenizer.mask_token_id is not None:
        mask_token_id = tokenizer.mask_token_id
        notes.append(f"mask token: the tokenizer's {tokenizer.mask_token!r} (id {mask_token_id})")
    if mask_token_id is None:
        # The tokenizer's next id: a free row when the vocab is padded beyond the tokenizer, else
        # new rows at the end (a tokenizer may already hold ids beyond the embedding: those rows
        # are added too). New rows start as the mean of the original rows.
        mask_token_id = len(tokenizer) if tokenizer is not None else vocab
        added = True
        grow = mask_token_id + 1 - vocab
        for key in ("encoder.embed_tokens.weight", "diffusion_head.weight"):
            w = state[key]
            mean = w[:min(vocab, mask_token_id)].float().mean(0).to(w.dtype)
            w = torch.cat([w, mean.expand(grow, -1)]) if grow > 0 else w.clone()
            w[mask_token_id] = mean
            state[key] = w
        vocab = max(vocab, mask_token_id + 1)
        if tokenizer is not None:
            tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
            if tokenizer.mask_token_id != mask_token_id:
                raise RuntimeError(f"tokenizer gave the new mask token id {tokenizer.mask_token_id}, "
                                   f"expected {mask_token_id}")
        notes.append(f"mask token: new id {mask_token_id}, initialised as the mean embedding")
    elif not 0 <= mask_token_id < vocab:
        raise ValueError(f"mask_token_id={mask_token_id} must be in [0, vocab_size={vocab})")

    config = _trimode_config(hf, source, mask_token_id, vocab, block_size, notes)
    model = TrimodeModel(config)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the converted architecture "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return Converted(model.to(dtype), tokenizer, source, mask_token_id, added, notes)
