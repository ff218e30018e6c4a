"""Typed training configs, named presets, and ``key=value`` overrides.

Three dataclasses describe a run:

- :class:`ModelSpec`: the architecture of a model trained from scratch (stage ``ar``
  without ``--init``); ignored when a stage starts from an existing checkpoint.
- :class:`DrafterConfig`: the LoRA drafter and its self-distillation data (stage ``drafter``).
- :class:`TrainConfig`: one stage of the recipe; holds the two above as ``model`` and ``drafter``.

Design choices:
- Every field carries ``metadata["help"]``; the CLI prints it (``trimode train --help``),
  so the dataclass is the single place a setting is documented.
- The dataclass defaults are the recipe of the shipped model (``tiny``); a preset is a
  named function ``preset(stage) -> TrainConfig`` that adjusts per stage (steps, lr, ...).
  ``PRESETS`` is the registry the CLI offers.
- Overrides are ``dotted.key=value`` strings parsed by the field's type
  (``model.hidden_size=512``, ``block_sizes=4,8,16``, ``max_files=none``); a bad key or
  value raises ``ValueError`` naming it and what is allowed.
- Batch sizes: ``micro_batch`` is per process and per forward; the *global* batch of
  one optimizer step is ``micro_batch * grad_accum * world_size`` sequences. Data order,
  masks and the loss normalisation depend only on the global batch, so 2 processes x b
  train exactly like 1 process x 2b (see :mod:`trimode.training.trainer`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

STAGES = ("ar", "joint", "sft", "drafter")
PRECISIONS = ("fp32", "bf16")
ROPE_TYPES = ("default", "yarn")


def _f(default: Any, help: str, **kw) -> Any:
    """A dataclass field with CLI help (mutable defaults go through a factory)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


# Bound of copy_windows (per code file); training/data.py numbers each file's windows below it.
MAX_COPY_WINDOWS = 64


@dataclass
class ModelSpec:
    """Architecture of a model trained from scratch (Ministral-3 style decoder, untied head)."""

    vocab_size: int = _f(4096, "tokenizer vocabulary size when the tokenizer is trained by the ar stage")
    hidden_size: int = _f(256, "width of the residual stream")
    intermediate_size: int = _f(768, "width of the SwiGLU MLP")
    num_hidden_layers: int = _f(6, "decoder layers")
    num_attention_heads: int = _f(4, "query heads")
    num_key_value_heads: int = _f(2, "key/value heads (grouped-query attention; divides the query heads)")
    head_dim: int | None = _f(None, "per-head width (none: hidden_size // num_attention_heads)")
    max_position_embeddings: int = _f(1024, "longest sequence (prompt + generation) the model is meant for")
    rope_type: str = _f("default", "RoPE flavour: default, or yarn (with the Ministral-3 llama-4 query scaling)")
    rope_theta: float = _f(10000.0, "RoPE base frequency")
    block_size: int = _f(16, "default block length of the diffusion / speculative decoders (saved in config.json)")
    initializer_range: float = _f(0.02, "std of the normal weight init")


# The projections of a decoder layer (published weight names) a LoRA adapter may target.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class DrafterConfig:
    """LoRA self-speculation drafter: adapter shape and self-distillation data."""

    r: int | None = _f(None, "LoRA rank (none: hidden_size // 32, capped at 128: the published 128 at 4096 wide)")
    alpha: int | None = _f(None, "LoRA alpha (none: 4 * r, the published 512 / 128 ratio)")
    dropout: float = _f(0.0, "LoRA dropout")
    target_modules: list[str] = _f(["o_proj"], "projections the LoRA adapts: the published o_proj, or any of "
                                   "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj (all seven: an "
                                   "adapter that carries the draft pathway of a frozen AR model)")
    block_length: int | None = _f(None, "draft block length B trained for (none: the model's block_size)")
    n_prompts: int = _f(2048, "training prompts whose AR greedy continuations are distilled")
    n_eval_prompts: int = _f(64, "held-out prompts for the eval loss")
    code_prompt_fraction: float = _f(0.5, "share of prompts that are code prefixes (the rest: task prompts)")
    code_prompt_tokens: list[int] = _f([16, 128], "min,max length in tokens of a code-prefix prompt")
    instruction_fraction: float = _f(0.0, "share of prompts that are chat-style instructions (general ones and "
                                     "questions about the standard library; the rest after code and these: "
                                     "task prompts)")
    gen_tokens: int = _f(96, "tokens of AR greedy continuation generated per prompt (the distillation targets)")
    gen_batch: int = _f(32, "prompts per batched AR generation call")
    blocks_per_sequence: int = _f(8, "draft blocks (random cut points in the continuation) per sample and step")


@dataclass
class TrainConfig:
    """One stage of the tri-mode recipe: ar -> joint -> sft -> drafter."""

    stage: str = _f("ar", f"training stage, one of {', '.join(STAGES)}")
    model: ModelSpec = field(default_factory=ModelSpec, metadata={"help": "architecture (from-scratch ar only)"})
    drafter: DrafterConfig = field(default_factory=DrafterConfig, metadata={"help": "LoRA drafter (drafter stage)"})
    # ---- optimisation
    steps: int = _f(2000, "optimizer steps of this stage")
    micro_batch: int = _f(16, "sequences per forward, per process")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step")
    seq_len: int = _f(256, "tokens per training sequence (drafter: prompt + continuation)")
    lr: float = _f(1e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of lr, reached at the end of the decay")
    warmup_frac: float = _f(0.05, "fraction of steps of linear warmup (warmup-stable-decay schedule)")
    decay_frac: float = _f(0.2, "fraction of steps of linear decay at the end of the schedule")
    weight_decay: float = _f(0.1, "AdamW weight decay (matrices only; norms are not decayed)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    adam_eps: float = _f(1e-8, "AdamW epsilon")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0: no clipping)")
    # ---- objective
    block_size: int | None = _f(None, "training block size of the diffusion term (none: the model's block_size)")
    block_sizes: list[int] = _f([], "if set, each step draws its block size from this list (random smaller blocks)")
    dlm_loss_weight: float | None = _f(None, "alpha of the diffusion term (none: the model config's, 0.3)")
    ar_loss_weight: float | None = _f(None, "weight of the AR term (none: the model config's, 1.0)")
    mask_eps: float = _f(1e-3, "minimum masking probability eps: p = (1 - eps) t + eps")
    # ---- data
    task_fraction: float = _f(0.3, "ar/joint: share of training tokens from task text (the rest: stdlib code)")
    task_families: list[str] = _f([], "task families to use (empty: all); a family listed k times gets k shares")
    copy_windows: float = _f(0.0, "ar/joint: mean number of windows of each code file appended repeated twice "
                             "(predictable only by copying: teaches the model to copy from its context)")
    n_tasks: int = _f(20000, "sft: distinct training tasks per epoch")
    code_replay: float = _f(0.0, "sft: share of sequences that are stdlib code (loss on all tokens), so code "
                            "is not forgotten")
    max_files: int | None = _f(None, "ar/joint/drafter: use only the first N stdlib files (none: all)")
    tokenizer_max_files: int | None = _f(None, "files used to train the tokenizer (none: all train files)")
    tokenizer_tasks: int = _f(2000, "task texts added to the tokenizer's training text")
    shuffle_buffer: int = _f(256, "sequences in the shuffle buffer of the batcher")
    mask_token_id: int | None = _f(None, "HF init only: the mask token (none: the tokenizer's, else a new token)")
    # ---- bookkeeping
    seed: int = _f(0, "seed of model init, data order and every random mask")
    log_interval: int = _f(10, "steps between JSONL log lines")
    eval_interval: int = _f(250, "steps between held-out evaluations, plus one before the first step (0: only at the end)")
    eval_batches: int = _f(2, "global batches in the held-out evaluation (0: no evaluation)")
    checkpoint_interval: int = _f(200, "steps between checkpoints (0: none)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk (oldest deleted first)")
    device: str = _f("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    precision: str = _f("fp32", f"compute precision, one of {', '.join(PRECISIONS)} (bf16: autocast)")
    progress: bool | None = _f(None, "show the progress bar (none: only on a terminal, never in CI)")

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"train config: {msg}")

        need(self.stage in STAGES, f"stage={self.stage!r} is not one of {', '.join(STAGES)}")
        for name in ("steps", "micro_batch", "grad_accum", "seq_len", "log_interval", "keep_checkpoints"):
            need(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        for name in ("eval_interval", "eval_batches", "checkpoint_interval", "grad_clip", "weight_decay",
                     "n_tasks", "tokenizer_tasks", "shuffle_buffer"):
            need(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        need(self.lr > 0, f"lr={self.lr} must be > 0")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        for name in ("warmup_frac", "decay_frac", "task_fraction"):
            need(0 <= getattr(self, name) <= 1, f"{name}={getattr(self, name)} must be in [0, 1]")
        need(0 <= self.code_replay < 1, f"code_replay={self.code_replay} must be in [0, 1)")
        need(0 <= self.copy_windows <= MAX_COPY_WINDOWS,
             f"copy_windows={self.copy_windows} must be in [0, {MAX_COPY_WINDOWS}]")
        need(self.warmup_frac + self.decay_frac <= 1,
             f"warmup_frac + decay_frac = {self.warmup_frac + self.decay_frac} must be <= 1")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, f"betas ({self.beta1}, {self.beta2}) must be in [0, 1)")
        need(0 < self.mask_eps < 1, f"mask_eps={self.mask_eps} must be in (0, 1)")
        need(self.block_size is None or self.block_size >= 1, f"block_size={self.block_size} must be >= 1")
        need(all(b >= 1 for b in self.block_sizes), f"block_sizes={self.block_sizes} must all be >= 1")
        need(self.precision in PRECISIONS, f"precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("max_files", "tokenizer_max_files"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"{name}={value} must be >= 1 or none")
        if self.task_families:
            from ..data.tasks import FAMILIES

            bad = [f for f in self.task_families if f not in FAMILIES]
            need(not bad, f"task_families has unknown {bad}; allowed: {', '.join(FAMILIES)}")
        m = self.model
        need(m.rope_type in ROPE_TYPES, f"model.rope_type={m.rope_type!r} is not one of {', '.join(ROPE_TYPES)}")
        need(m.num_attention_heads % max(1, m.num_key_value_heads) == 0,
             f"model.num_key_value_heads={m.num_key_value_heads} must divide "
             f"model.num_attention_heads={m.num_attention_heads}")
        d = self.drafter
        need(d.r is None or d.r >= 1, f"drafter.r={d.r} must be >= 1 or none")
        bad = sorted(set(d.target_modules) - set(LORA_TARGETS))
        need(bool(d.target_modules) and not bad, f"drafter.target_modules={d.target_modules}: "
             f"{'unknown ' + ', '.join(bad) if bad else 'empty'}; allowed: {', '.join(LORA_TARGETS)}")
        need(d.alpha is None or d.alpha >= 1, f"drafter.alpha={d.alpha} must be >= 1 or none")
        need(d.block_length is None or d.block_length >= 2, f"drafter.block_length={d.block_length} must be >= 2")
        need(d.n_prompts >= 1 and d.gen_tokens >= 2 and d.gen_batch >= 1 and d.blocks_per_sequence >= 1,
             "drafter.n_prompts, gen_batch, blocks_per_sequence must be >= 1 and drafter.gen_tokens >= 2")
        need(0 <= d.instruction_fraction <= 1 and d.code_prompt_fraction + d.instruction_fraction <= 1,
             f"drafter.instruction_fraction={d.instruction_fraction} must be in [0, 1] and leave "
             f"code_prompt_fraction={d.code_prompt_fraction} + instruction_fraction <= 1")
        need(0 <= d.code_prompt_fraction <= 1, f"drafter.code_prompt_fraction={d.code_prompt_fraction} "
             "must be in [0, 1]")
        need(len(d.code_prompt_tokens) == 2 and 1 <= d.code_prompt_tokens[0] <= d.code_prompt_tokens[1],
             f"drafter.code_prompt_tokens={d.code_prompt_tokens} must be two ints min,max with 1 <= min <= max")
        if self.stage == "drafter":
            need(d.gen_tokens < self.seq_len, f"drafter.gen_tokens={d.gen_tokens} must be < seq_len={self.seq_len} "
                 "(seq_len holds prompt + continuation)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        model = ModelSpec(**data.pop("model", {}))
        drafter = DrafterConfig(**data.pop("drafter", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"train config: unknown keys {unknown}")
        return cls(model=model, drafter=drafter, **data)


# ---------------------------------------------------------------------- presets
# The shipped model's task mix: the copy families, whose items are random letter strings and
# numbers, from the first step of ar; `add` (fetching the k-th digit from the right) is left out.
# Copying from the prompt forms only in the copy phase of scripts/train_trimode_tiny.sh (an sft
# run on `repeat` alone) and carries over to the other families in sft: see
# models/trimode-tiny/README.md.
TINY_FAMILIES = ["json", "enumerate", "repeat"]
# joint and sft weight `repeat` (pure copying) x2: copying had not formed after 600 steps of ar
# with equal shares, and in the second recipe it formed within SFT when half the tasks were repeats.
TINY_COPY_HEAVY = ["json", "enumerate", "repeat", "repeat"]


def tiny(stage: str = "ar") -> TrainConfig:
    """The shipped model, trimode-tiny: 4 x 256, vocab 2048, seq 256, block 16.

    Sized so the whole recipe (scripts/train_trimode_tiny.sh) runs in under 2 hours on
    2 CPU cores; see models/trimode-tiny/README.md for what it reaches. Between joint and
    sft the script runs a copy phase: stage sft with ``--set steps=450 --set
    task_families=repeat --set code_replay=0``.
    """
    per_stage = {
        "ar": dict(steps=1000, lr=2e-3),
        "joint": dict(steps=350, lr=1e-3, block_sizes=[4, 8, 16], task_families=TINY_COPY_HEAVY),
        "sft": dict(steps=600, lr=1e-3, block_sizes=[4, 8, 16], code_replay=0.25, task_families=TINY_COPY_HEAVY),
        "drafter": dict(steps=500, lr=1e-3, micro_batch=16),
    }
    return TrainConfig(
        stage=stage,
        model=ModelSpec(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, block_size=16),
        # r=32 (hidden / 8, alpha 4r) for 500 steps: draft accuracy 0.57 vs 0.42 with the default r=8 for
        # 250 steps, linear-spec TPF on code 1.72 vs 1.51; r=64 with twice the prompts was no better.
        drafter=DrafterConfig(n_prompts=512, n_eval_prompts=32, gen_tokens=96, gen_batch=32, r=32),
        task_fraction=0.5, n_tasks=40000, eval_interval=100, checkpoint_interval=25, log_interval=5,
        **{"task_families": TINY_FAMILIES, **per_stage[_check_stage(stage)]},
    )


def debug(stage: str = "ar") -> TrainConfig:
    """Trains in seconds on a CPU: a 2-layer 64-wide model on 20 stdlib files, few steps per stage."""
    per_stage = {
        "ar": dict(steps=30, lr=3e-3),
        "joint": dict(steps=20, lr=2e-3, block_sizes=[4, 8]),
        "sft": dict(steps=20, lr=1e-3, code_replay=0.25),
        "drafter": dict(steps=20, lr=3e-3),
    }
    return TrainConfig(
        stage=stage,
        model=ModelSpec(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, block_size=8),
        drafter=DrafterConfig(n_prompts=32, n_eval_prompts=8, gen_tokens=24, gen_batch=16, blocks_per_sequence=4,
                              code_prompt_tokens=[8, 32]),
        micro_batch=4, seq_len=128, max_files=20, tokenizer_max_files=20, tokenizer_tasks=200, n_tasks=400,
        shuffle_buffer=32, log_interval=1, eval_interval=10, eval_batches=1, checkpoint_interval=10,
        **per_stage[_check_stage(stage)],
    )


def smol(stage: str = "drafter") -> TrainConfig:
    """trimode-smol: the drafter of a converted SmolLM2-135M-Instruct (``trimode convert``), design (b).

    The base stays frozen and bit-identical; a LoRA on all seven projections (active only in
    draft positions) carries the draft pathway, self-distilled from the base's own greedy
    continuations of code prefixes, chat-style instructions and task prompts.
    ``scripts/train_trimode_smol.sh`` runs it; ``models/trimode-smol/README.md`` says what it reached.
    """
    if _check_stage(stage) != "drafter":
        raise ValueError(f"preset smol has only the drafter stage (the base is frozen), not stage={stage!r}")
    return TrainConfig(
        stage=stage,
        drafter=DrafterConfig(r=32, target_modules=list(LORA_TARGETS), block_length=8, n_prompts=4096,
                              n_eval_prompts=64, gen_tokens=96, gen_batch=256, code_prompt_fraction=0.4,
                              instruction_fraction=0.4, blocks_per_sequence=8),
        steps=1200, lr=1e-3, micro_batch=32, seq_len=256, eval_interval=100, checkpoint_interval=200,
        log_interval=10,
    )


PRESETS: dict[str, Callable[[str], TrainConfig]] = {"debug": debug, "tiny": tiny, "smol": smol}


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not one of {', '.join(STAGES)}")
    return stage


def preset_config(name: str, stage: str) -> TrainConfig:
    """``PRESETS[name](stage)`` with a clear error for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[name](stage)


# -------------------------------------------------------------------- overrides
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(text: str, tp: Any, key: str) -> Any:
    """Parse ``text`` as type ``tp`` (int, float, str, bool, X | None, list[X])."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if text.strip().lower() in ("none", "null"):
            return None
        return _parse_value(text, inner[0], key)
    if origin is list:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return [_parse_value(p, args[0], key) for p in parts]
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}={text!r}: expected a boolean (true/false)")
    try:
        return tp(text)
    except (TypeError, ValueError):
        raise ValueError(f"--set {key}={text!r}: expected {getattr(tp, '__name__', tp)}") from None


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings (dotted keys reach ``model.*`` and ``drafter.*``) in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (see `trimode train --help` for the keys)")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        target, name = cfg, key
        if "." in key:
            head, name = key.split(".", 1)
            if head not in ("model", "drafter") or "." in name:
                raise ValueError(f"--set {key}: unknown key; nested keys are model.* and drafter.*")
            target = getattr(cfg, head)
        types_ = _field_types(type(target))
        if name not in types_ or name in ("model", "drafter"):
            allowed = ", ".join(k for k in config_keys())
            raise ValueError(f"--set {key}: unknown key; allowed: {allowed}")
        setattr(target, name, _parse_value(value, types_[name], key))
    return cfg


def config_keys() -> list[str]:
    keys = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model", "drafter"):
            sub = ModelSpec if f.name == "model" else DrafterConfig
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(sub)]
        else:
            keys.append(f.name)
    return keys


def config_help() -> str:
    """One line per key: name, type, default (the tiny recipe) and help; used as CLI epilog."""
    lines = []

    def add(prefix: str, cls) -> None:
        hints = _field_types(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            if f.name in ("model", "drafter"):
                continue
            tp = hints[f.name]
            tname = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
            lines.append(f"  {prefix}{f.name} ({tname}, default {getattr(default, f.name)!r}): "
                         f"{f.metadata.get('help', '')}")

    add("", TrainConfig)
    add("model.", ModelSpec)
    add("drafter.", DrafterConfig)
    return "\n".join(lines)
