"""Typed training configs, named presets, and ``key=value`` overrides.

Three pydantic models describe a run:

- :class:`ModelSpec`: the architecture of a model trained from scratch (stage ``ar``
  without ``--init``); ignored when a stage starts from an existing checkpoint.
- :class:`DrafterConfig`: the LoRA drafter and its self-distillation data (stage ``drafter``).
- :class:`VLMSpec`: the vision tower, projector and image-task data of stage ``vlm`` (a
  vision-language model built on a text checkpoint, :mod:`trimode.training.vlm`).
- :class:`TrainConfig`: one stage of the recipe; holds the three above as ``model``, ``drafter``
  and ``vlm``.

Design choices:
- Each setting is declared once, as a ``Field`` with its default, description and bounds
  (choices as ``Literal``); validation, ``trimode train --help`` and the saved JSON all read
  that declaration. Validators are only for rules that span fields.
- Assignment is not validated: the CLI and tests set fields one by one, then call
  :meth:`TrainConfig.validate` once (which also checks nested configs changed in place).
- The defaults are the recipe of the shipped model (``tiny``); a preset is a named function
  ``preset(stage) -> TrainConfig`` that adjusts per stage (steps, lr, ...). ``PRESETS`` is the
  registry the CLI offers.
- Overrides are ``dotted.key=value`` strings parsed with the field's type
  (``model.hidden_size=512``, ``block_sizes=4,8,16``, ``max_files=none``); a bad key or
  value raises ``ValueError`` naming it and what is allowed (worded by :mod:`trimode.typed_config`,
  as every config's errors are).
- Batch sizes: ``micro_batch`` is per process and per forward; the *global* batch of
  one optimizer step is ``micro_batch * grad_accum * world_size`` sequences. Data order,
  masks and the loss normalisation depend only on the global batch, so 2 processes x b
  train exactly like 1 process x 2b (see :mod:`trimode.training.trainer`).
"""

from __future__ import annotations

import json
import typing
from typing import Annotated, Any, Callable, ClassVar, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo

from ..typed_config import CheckedConfig, ConfigError, must_be
from .config_text import type_name

StageName = Literal["ar", "joint", "sft", "drafter", "vlm"]
Precision = Literal["fp32", "bf16"]
Parallel = Literal["ddp", "fsdp"]
RopeType = Literal["default", "yarn"]
# The projections of a decoder layer (published weight names) a LoRA adapter may target.
LoraTarget = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STAGES, PRECISIONS, PARALLEL_MODES, ROPE_TYPES, LORA_TARGETS = map(
    typing.get_args, (StageName, Precision, Parallel, RopeType, LoraTarget))
# Bound of copy_windows (per code file); training/data.py numbers each file's windows below it.
MAX_COPY_WINDOWS = 64
AtLeast1 = Annotated[int, Field(ge=1)]
AtLeast0 = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
SUBCONFIGS = ("model", "drafter", "vlm")
# The generated image task kinds (trimode.image_tasks.KINDS; listed here so --help needs no PIL).
IMAGE_KINDS = ("bars", "table", "shapes", "text")
ImageKind = Literal["bars", "table", "shapes", "text"]


class _Config(CheckedConfig):
    # Lax, unlike the other configs: saved JSON and `--set` text are read by the field types. Unknown keys
    # are errors (CheckedConfig); `revalidate_instances`: nested configs passed in are checked again too.
    model_config = ConfigDict(strict=False, revalidate_instances="always")
    error_prefix: ClassVar[str] = "train config: "


class ModelSpec(_Config):
    """Architecture of a model trained from scratch (Ministral-3 style decoder, untied head)."""

    vocab_size: int = Field(4096, description="tokenizer vocabulary size when the tokenizer is trained by the ar stage")
    hidden_size: int = Field(256, description="width of the residual stream")
    intermediate_size: int = Field(768, description="width of the SwiGLU MLP")
    num_hidden_layers: int = Field(6, description="decoder layers")
    num_attention_heads: int = Field(4, description="query heads")
    num_key_value_heads: int = Field(2, description="key/value heads (grouped-query attention; divides the query "
                                     "heads)")
    head_dim: int | None = Field(None, description="per-head width (none: hidden_size // num_attention_heads)")
    max_position_embeddings: int = Field(1024, description="longest sequence (prompt + generation) the model is "
                                         "meant for")
    rope_type: RopeType = Field("default", description="RoPE flavour: default, or yarn (with the Ministral-3 "
                                "llama-4 query scaling)")
    rope_theta: float = Field(10000.0, description="RoPE base frequency")
    block_size: int = Field(16, description="default block length of the diffusion / speculative decoders (saved in "
                            "config.json)")
    initializer_range: float = Field(0.02, description="std of the normal weight init")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSpec:
        if self.num_attention_heads % max(1, self.num_key_value_heads):
            raise ValueError(f"num_key_value_heads={self.num_key_value_heads} must divide "
                             f"num_attention_heads={self.num_attention_heads}")
        return self


class DrafterConfig(_Config):
    """LoRA self-speculation drafter: adapter shape and self-distillation data."""

    r: int | None = Field(None, ge=1, description="LoRA rank (none: hidden_size // 32, capped at 128: the published "
                          "128 at 4096 wide)")
    alpha: int | None = Field(None, ge=1, description="LoRA alpha (none: 4 * r, the published 512 / 128 ratio)")
    dropout: float = Field(0.0, description="LoRA dropout")
    target_modules: list[LoraTarget] = Field(["o_proj"], min_length=1, description="projections the LoRA adapts: the "
                                             "published o_proj, or any of q_proj,k_proj,v_proj,o_proj,gate_proj,"
                                             "up_proj,down_proj (all seven: an adapter that carries the draft pathway "
                                             "of a frozen AR model)")
    block_length: int | None = Field(None, ge=2, description="draft block length B trained for (none: the model's "
                                     "block_size)")
    n_prompts: AtLeast1 = Field(2048, description="training prompts whose AR greedy continuations are distilled")
    n_eval_prompts: int = Field(64, description="held-out prompts for the eval loss")
    code_prompt_fraction: Fraction = Field(0.5, description="share of prompts that are code prefixes (the rest: task "
                                           "prompts)")
    code_prompt_tokens: list[AtLeast1] = Field([16, 128], min_length=2, max_length=2, description="min,max length in "
                                               "tokens of a code-prefix prompt")
    instruction_fraction: Fraction = Field(0.0, description="share of prompts that are chat-style instructions "
                                           "(general ones and questions about the standard library; the rest after "
                                           "code and these: task prompts)")
    gen_tokens: int = Field(96, ge=2, description="tokens of AR greedy continuation generated per prompt (the "
                            "distillation targets)")
    gen_batch: AtLeast1 = Field(32, description="prompts per batched AR generation call")
    blocks_per_sequence: AtLeast1 = Field(8, description="draft blocks (random cut points in the continuation) per "
                                          "sample and step")

    @model_validator(mode="after")
    def _prompt_mix(self) -> DrafterConfig:
        if self.code_prompt_fraction + self.instruction_fraction > 1:
            raise ValueError(f"instruction_fraction={self.instruction_fraction} must be in [0, 1] and leave "
                             f"code_prompt_fraction={self.code_prompt_fraction} + instruction_fraction <= 1")
        if self.code_prompt_tokens[0] > self.code_prompt_tokens[1]:
            raise ValueError(f"code_prompt_tokens={self.code_prompt_tokens} must be two ints min,max with "
                             "1 <= min <= max")
        return self


class VLMSpec(_Config):
    """Stage vlm: the vision tower (Pixtral) and Mistral-3 projector added to a text checkpoint, and the
    generated image tasks (:mod:`trimode.image_tasks`) it trains on."""

    hidden_size: int = Field(256, ge=8, description="width of the vision tower")
    intermediate_size: int = Field(1024, ge=8, description="width of the tower's SwiGLU MLP")
    num_hidden_layers: AtLeast1 = Field(4, description="layers of the vision tower")
    head_dim: int = Field(32, ge=2, description="per-head width of the tower's attention (heads = hidden / this)")
    patch_size: AtLeast1 = Field(14, description="pixels per patch side (the published 14)")
    spatial_merge_size: AtLeast1 = Field(2, description="side of the square of patches the projector merges into "
                                         "one image token (the published 2)")
    max_image_size: AtLeast1 = Field(252, description="longest image edge in pixels the processor resizes to (the "
                                     "generated images are at most 252 px)")
    kinds: list[ImageKind] = Field([], description="image task kinds to train on (empty: all of "
                                   f"{', '.join(IMAGE_KINDS)}); a kind listed k times gets k shares")
    train_seed: int = Field(0, ge=0, lt=10_000, description="seed of the training tasks (task i is make_tasks' "
                            "i-th for this seed; seeds >= 10000 are held out)")
    eval_seed: int = Field(10_001, ge=10_000, description="held-out seed of the eval-loss tasks (10000, "
                           "HELDOUT_SEED, is left to the final evaluation)")
    vision_lr_scale: float = Field(1.0, ge=0, description="learning rate of the tower and projector as a multiple "
                                   "of lr (0: they stay frozen at their initial weights)")
    grounding_weight: float = Field(0.0, ge=0, description="weight of the grounding loss: each image token's "
                                    "projected feature pulled towards the embeddings of the words for what it "
                                    "shows (trimode.training.vlm_grounding); 0: answers only")

    @model_validator(mode="after")
    def _heads_divide(self) -> VLMSpec:
        if self.hidden_size % self.head_dim:
            raise ValueError(f"head_dim={self.head_dim} must divide hidden_size={self.hidden_size}")
        cell = self.patch_size * self.spatial_merge_size
        if self.max_image_size < cell:
            raise ValueError(f"max_image_size={self.max_image_size} must be at least patch_size * "
                             f"spatial_merge_size = {cell} px (one image token)")
        return self


class TrainConfig(_Config):
    """One stage of the tri-mode recipe: ar -> joint -> sft -> drafter; vlm (then drafter) for images."""

    stage: StageName = Field("ar", description=f"training stage, one of {', '.join(STAGES)}")
    model: ModelSpec = Field(default_factory=ModelSpec, description="architecture (from-scratch ar only)")
    drafter: DrafterConfig = Field(default_factory=DrafterConfig, description="LoRA drafter (drafter stage)")
    vlm: VLMSpec = Field(default_factory=VLMSpec, description="vision tower and image tasks (vlm stage)")
    # ---- optimisation
    steps: AtLeast1 = Field(2000, description="optimizer steps of this stage")
    micro_batch: AtLeast1 = Field(16, description="sequences per forward, per process")
    grad_accum: AtLeast1 = Field(1, description="micro-batches accumulated per optimizer step")
    seq_len: AtLeast1 = Field(256, description="tokens per training sequence (drafter: prompt + continuation)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    min_lr_ratio: Fraction = Field(0.1, description="final learning rate as a fraction of lr, reached at the end of "
                                   "the decay")
    warmup_frac: Fraction = Field(0.05, description="fraction of steps of linear warmup (warmup-stable-decay "
                                  "schedule)")
    decay_frac: Fraction = Field(0.2, description="fraction of steps of linear decay at the end of the schedule")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only; norms are not decayed)")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2")
    adam_eps: float = Field(1e-8, description="AdamW epsilon")
    grad_clip: float = Field(1.0, ge=0, description="clip the global gradient norm to this (0: no clipping)")
    # ---- objective
    block_size: int | None = Field(None, ge=1, description="training block size of the diffusion term (none: the "
                                   "model's block_size)")
    block_sizes: list[AtLeast1] = Field([], description="if set, each step draws its block size from this list "
                                        "(random smaller blocks)")
    dlm_loss_weight: float | None = Field(None, description="alpha of the diffusion term (none: the model config's, "
                                          "0.3)")
    ar_loss_weight: float | None = Field(None, description="weight of the AR term (none: the model config's, 1.0)")
    mask_eps: float = Field(1e-3, gt=0, lt=1, description="minimum masking probability eps: p = (1 - eps) t + eps")
    # ---- data
    task_fraction: Fraction = Field(0.3, description="ar/joint: share of training tokens from task text (the rest: "
                                    "stdlib code)")
    task_families: list[str] = Field([], description="task families to use (empty: all); a family listed k times "
                                     "gets k shares")
    copy_windows: float = Field(0.0, ge=0, le=MAX_COPY_WINDOWS, description="ar/joint: mean number of windows of "
                                "each code file appended repeated twice (predictable only by copying: teaches the "
                                "model to copy from its context)")
    n_tasks: AtLeast0 = Field(20000, description="sft: distinct training tasks per epoch; vlm: distinct image "
                              "tasks (0: a new task for every sample)")
    code_replay: float = Field(0.0, ge=0, lt=1, description="sft: share of sequences that are stdlib code (loss on "
                               "all tokens), so code is not forgotten")
    max_files: int | None = Field(None, ge=1, description="ar/joint/drafter: use only the first N stdlib files "
                                  "(none: all)")
    tokenizer_max_files: int | None = Field(None, ge=1, description="files used to train the tokenizer (none: all "
                                            "train files)")
    tokenizer_tasks: AtLeast0 = Field(2000, description="task texts added to the tokenizer's training text")
    shuffle_buffer: AtLeast0 = Field(256, description="sequences in the shuffle buffer of the batcher")
    mask_token_id: int | None = Field(None, description="HF init only: the mask token (none: the tokenizer's, else a "
                                      "new token)")
    # ---- bookkeeping
    seed: int = Field(0, description="seed of model init, data order and every random mask")
    log_interval: AtLeast1 = Field(10, description="steps between JSONL log lines")
    eval_interval: AtLeast0 = Field(250, description="steps between held-out evaluations, plus one before the first "
                                    "step (0: only at the end)")
    eval_batches: AtLeast0 = Field(2, description="global batches in the held-out evaluation (0: no evaluation)")
    checkpoint_interval: AtLeast0 = Field(200, description="steps between checkpoints (0: none)")
    keep_checkpoints: AtLeast1 = Field(2, description="checkpoints kept on disk (oldest deleted first)")
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:N")
    precision: Precision = Field("fp32", description=f"compute precision, one of {', '.join(PRECISIONS)} (bf16: "
                                 "autocast; with parallel=fsdp the layers are also gathered in bf16, float32 master "
                                 "weights and gradient reductions)")
    parallel: Parallel = Field("ddp", description=f"multi-process training, one of {', '.join(PARALLEL_MODES)}: "
                               "ddp (every process holds the whole model) or fsdp (FSDP2: parameters, gradients and "
                               "AdamW state sharded over the processes, sharded checkpoints; one process runs it on "
                               "a one-process group); the exported model directory is the same")
    activation_checkpointing: bool = Field(False, description="recompute each decoder layer's activations in "
                                           "backward instead of keeping them (less memory, about a third more "
                                           "compute; the same gradients)")
    progress: bool | None = Field(None, description="show the progress bar (none: only on a terminal, never in CI)")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> TrainConfig:
        if self.warmup_frac + self.decay_frac > 1:
            raise ValueError(f"warmup_frac + decay_frac = {self.warmup_frac + self.decay_frac} must be <= 1")
        if self.task_families:  # checked here, not as a Literal: the task registry imports torch (--help must not)
            from ..data.tasks import FAMILIES

            if bad := [f for f in self.task_families if f not in FAMILIES]:
                raise ValueError(f"task_families has unknown {bad}; allowed: {', '.join(FAMILIES)}")
        if self.stage == "drafter" and self.drafter.gen_tokens >= self.seq_len:
            raise ValueError(f"drafter.gen_tokens={self.drafter.gen_tokens} must be < seq_len={self.seq_len} "
                             "(seq_len holds prompt + continuation)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)


# ---------------------------------------------------------------------- presets
# The shipped model's task mix: the copy families, whose items are random letter strings and
# numbers, from the first step of ar; `add` (fetching the k-th digit from the right) is left out.
TINY_FAMILIES = ["json", "enumerate", "repeat"]
# joint and sft weight `repeat` (pure copying) x2: copying from the prompt is the hard part of every
# task; models/trimode-tiny/README.md ("How the recipe was found") tells how the recipe came about.
TINY_COPY_HEAVY = ["json", "enumerate", "repeat", "repeat"]


def tiny(stage: str = "ar") -> TrainConfig:
    """The shipped model, trimode-tiny: 4 x 256, vocab 2048, seq 256, block 16.

    Sized for the whole recipe (scripts/train_trimode_tiny.sh) to train on 2 CPU cores;
    models/trimode-tiny/README.md says what it takes and reaches. Between joint and sft the
    script runs a copy phase: stage sft with ``--set steps=450 --set task_families=repeat
    --set code_replay=0``.
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
        # r=32 (hidden / 8, alpha 4r): four times the default rank (models/trimode-tiny/README.md compares them).
        drafter=DrafterConfig(n_prompts=512, n_eval_prompts=32, gen_tokens=96, gen_batch=32, r=32),
        task_fraction=0.5, n_tasks=40000, eval_interval=100, checkpoint_interval=25, log_interval=5,
        **{"task_families": TINY_FAMILIES, **_stage_settings("tiny", per_stage, stage)},
    )


def debug(stage: str = "ar") -> TrainConfig:
    """Trains in seconds on a CPU: a 2-layer 64-wide model on 20 stdlib files, few steps per stage."""
    per_stage = {
        "ar": dict(steps=30, lr=3e-3),
        "joint": dict(steps=20, lr=2e-3, block_sizes=[4, 8]),
        "sft": dict(steps=20, lr=1e-3, code_replay=0.25),
        "drafter": dict(steps=20, lr=3e-3),
        # A 1-layer 32-wide tower on bars and shapes only: every image has the same small grid.
        "vlm": dict(steps=20, lr=2e-3, block_sizes=[4, 8], n_tasks=0, seq_len=256,
                    vlm=VLMSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=1, head_dim=16,
                                max_image_size=112, kinds=["bars", "shapes"])),
    }
    return TrainConfig(
        stage=stage,
        model=ModelSpec(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, block_size=8),
        drafter=DrafterConfig(n_prompts=32, n_eval_prompts=8, gen_tokens=24, gen_batch=16, blocks_per_sequence=4,
                              code_prompt_tokens=[8, 32]),
        **{"micro_batch": 4, "seq_len": 128, "max_files": 20, "tokenizer_max_files": 20, "tokenizer_tasks": 200,
           "n_tasks": 400, "shuffle_buffer": 32, "log_interval": 1, "eval_interval": 10, "eval_batches": 1,
           "checkpoint_interval": 10, **_stage_settings("debug", per_stage, stage)},
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


def tiny_vlm(stage: str = "vlm") -> TrainConfig:
    """trimode-tiny-vlm: trimode-tiny plus a 3 x 192 Pixtral tower, trained on the generated image tasks.

    ``vlm`` starts from ``models/trimode-tiny`` (``--init``); ``drafter`` from the vlm stage's output.
    ``scripts/train_vlm.sh`` runs them (with a second vlm run of 800 steps between the two);
    ``benchmarks/vlm_training_notes.md`` tells how the recipe was found and what each run reached.
    """
    per_stage = {
        # Trained on the answers alone, the text model learned the answer template and to ignore the image tokens
        # before the random tower carried anything (image-blind runs; at 1e-4 text / 1e-3 tower, 23% of the facts
        # after 600 steps). The grounding loss tells each image token what it shows from the first step
        # (trimode.training.vlm_grounding); the tower still learns faster than the text model
        # (benchmarks/vlm_training_notes.md).
        "vlm": dict(steps=2000, lr=2e-4, micro_batch=16, block_sizes=[4, 8, 16], n_tasks=0, eval_batches=2,
                    eval_interval=250, checkpoint_interval=50),
        # Answers are up to 112 tokens: continuations of 128 tokens reach their EOS; prompts are <= 112.
        "drafter": dict(steps=300, lr=1e-3, micro_batch=16, eval_interval=100),
    }
    return TrainConfig(
        stage=stage,
        vlm=VLMSpec(hidden_size=192, intermediate_size=768, num_hidden_layers=3, head_dim=32, vision_lr_scale=5.0,
                    grounding_weight=1.0),
        drafter=DrafterConfig(n_prompts=512, n_eval_prompts=32, gen_tokens=128, gen_batch=32, r=32),
        **{"seq_len": 240, "checkpoint_interval": 25, "log_interval": 5, **_stage_settings("tiny-vlm", per_stage, stage)},
    )


PRESETS: dict[str, Callable[[str], TrainConfig]] = {"debug": debug, "tiny": tiny, "smol": smol, "tiny-vlm": tiny_vlm}


def _stage_settings(preset: str, per_stage: dict[str, dict], stage: str) -> dict:
    """The preset's settings of ``stage``, or a clear error naming the stages it has."""
    if _check_stage(stage) not in per_stage:
        raise ValueError(f"preset {preset} has no {stage} stage; its stages: {', '.join(per_stage)}"
                         + ("; for a vision-language model use --preset tiny-vlm" if stage == "vlm" else ""))
    return per_stage[stage]


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
def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings (dotted keys reach ``model.*`` and ``drafter.*``) in place.

    Values are parsed with the field's type; bounds and cross-field rules are left to
    :meth:`TrainConfig.validate`, which the caller runs once all settings are in.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (see `trimode train --help` for the keys)")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in config_keys():
            raise ValueError(f"--set {key}: unknown key; allowed: {', '.join(config_keys())}")
        *head, name = key.split(".")
        target = getattr(cfg, head[0]) if head else cfg
        setattr(target, name, _parse(key, text, type(target).model_fields[name]))
    return cfg


def _parse(key: str, text: str, field: FieldInfo) -> Any:
    """``text`` as a value of the field's type, by pydantic; a list is comma-separated, an optional field
    takes ``none``. The field's own bounds are left to :meth:`TrainConfig.validate` (an error names them)."""
    tp = field.annotation
    value: Any = text.strip()
    if type(None) in typing.get_args(tp) and value.lower() in ("none", "null"):
        return None
    if typing.get_origin(tp) is list:
        value = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return TypeAdapter(tp).validate_python(value)
    except ValidationError as e:
        raise ConfigError(f"--set {must_be(key, value, tp, field.metadata)}", e.errors()) from None


def config_keys() -> list[str]:
    """Every key ``--set`` accepts, in declaration order (nested ones as ``model.*`` and ``drafter.*``)."""
    keys: list[str] = []
    for name, field in TrainConfig.model_fields.items():
        keys += [f"{name}.{sub}" for sub in field.annotation.model_fields] if name in SUBCONFIGS else [name]
    return keys


def config_help() -> str:
    """One line per key: name, type, default (the tiny recipe) and description; used as CLI epilog."""
    default = TrainConfig()
    lines = []
    for prefix, config in (("", default), *((f"{name}.", getattr(default, name)) for name in SUBCONFIGS)):
        for name, field in type(config).model_fields.items():
            if name not in SUBCONFIGS:
                lines.append(f"  {prefix}{name} ({type_name(field.annotation)}, default "
                             f"{getattr(config, name)!r}): {field.description}")
    return "\n".join(lines)
