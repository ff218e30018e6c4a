"""The four stages as small strategies for the one trainer loop: model + data + objective + export.

=========  ================================  =====================  ===========================
stage      starts from (``--init``)          data                   objective
=========  ================================  =====================  ===========================
ar         nothing (new model + tokenizer),  code + task text       causal CE
           or any AR checkpoint
joint      an AR checkpoint: trimode, or     code + task text       joint loss (AR + 0.3 diff.)
           Llama/Mistral/Ministral-3 (HF)
sft        a joint (or any) checkpoint       task prompt/response   joint loss on responses
drafter    a trimode checkpoint (or a VLM)   AR greedy self-distil  draft CE, LoRA (o_proj default)
vlm        a text checkpoint (or a VLM)      generated image tasks  joint loss on answers, image
                                                                    in the clean prefix
=========  ================================  =====================  ===========================

Every stage writes a complete model directory (config + safetensors + tokenizer;
``linear_spec_lora/`` for the drafter) loadable by :func:`trimode.loading.load`. The vision-language
stage lives in :mod:`trimode.training.vlm`; the drafter of a VLM drafts for image-task prompts.

Tokenizer resolution, first match: ``--tokenizer DIR``, the init checkpoint's, or, for
``ar`` from scratch, a new byte-level BPE trained on the code corpus and task texts (rank 0
trains it into the output directory, all ranks load it; a resumed run reuses it).
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..configuration import TrimodeConfig
from ..configuration_vlm import NemotronLabsDiffusionVLMConfig
from ..conversion import TRIMODE_MODEL_TYPES, convert_hf_checkpoint, is_convertible, model_type_of
from ..data.corpus import CodeCorpus
from ..data.packing import Batcher
from ..data.tasks import FAMILIES, iter_tasks
from ..loading import DRAFTER_SUBFOLDER, quiet_transformers
from ..modeling import TrimodeModel
from .config import TrainConfig
from .data import fixed_batches, global_batch_size, make_batcher, pretraining_sequences, sft_sequences
from .distributed import DistInfo, barrier
from .objectives import AutoregressiveObjective, JointObjective, Objective

# Model types a stage loads as they are (no conversion): the text ones and the VLM.
LOADABLE_MODEL_TYPES = (*TRIMODE_MODEL_TYPES, NemotronLabsDiffusionVLMConfig.model_type)


@dataclass
class Stage:
    name: str
    model: TrimodeModel  # the module trained (with the LoRA adapter injected for the drafter)
    tokenizer: object
    objective: Objective
    batcher: Batcher
    eval_source: Callable[[], list[dict[str, torch.Tensor]]]  # fixed held-out global batches
    # Write the complete model directory (rank 0). The second argument: the whole model's state dict when
    # the model itself holds shards (FSDP2, gathered by every rank), else None (the model's own).
    export: Callable[[Path, dict[str, torch.Tensor] | None], None]
    info: dict = field(default_factory=dict)
    lr_scale: Callable[[str], float] | None = None  # learning rate of a parameter (by name), as a multiple of lr

    def trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.trainable()}

    def load_trainable_state(self, weights: dict[str, torch.Tensor]) -> None:
        params = dict(self.trainable())
        missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match this stage's parameters (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}): was it written by another stage or model?")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name])


# ------------------------------------------------------------------ tokenizer
def _has_tokenizer(path: Path | None) -> bool:
    return path is not None and ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file())


def train_default_tokenizer(cfg: TrainConfig):
    """Byte-level BPE on the stdlib code corpus plus task texts (so digits and the task words merge)."""
    from ..tokenization import train_tokenizer

    def texts():
        yield from CodeCorpus("train", max_files=cfg.tokenizer_max_files).texts()
        for task in itertools.islice(iter_tasks("train", cfg.seed, cfg.task_families or None), cfg.tokenizer_tasks):
            yield task.prompt + "\n" + task.answer

    return train_tokenizer(texts(), vocab_size=cfg.model.vocab_size)


def resolve_tokenizer(cfg: TrainConfig, dist: DistInfo, out: Path, init: Path | None, tokenizer_dir: Path | None,
                      resume: bool):
    from transformers import AutoTokenizer

    if resume and init is None and tokenizer_dir is None and _has_tokenizer(out):
        # ar from scratch: the tokenizer this run trained. (With --init, resolving it again gives
        # the same tokenizer, and a converted checkpoint must see the original, mask-less one.)
        return AutoTokenizer.from_pretrained(out), "output directory (resume)"
    if tokenizer_dir is not None:
        if not _has_tokenizer(tokenizer_dir):
            raise FileNotFoundError(f"--tokenizer {tokenizer_dir}: no tokenizer.json / tokenizer_config.json there")
        return AutoTokenizer.from_pretrained(tokenizer_dir), str(tokenizer_dir)
    if _has_tokenizer(init):
        return AutoTokenizer.from_pretrained(init), str(init)
    if init is not None:
        raise FileNotFoundError(f"--init {init} has no tokenizer; pass --tokenizer DIR")
    if dist.is_main:
        train_default_tokenizer(cfg).save_pretrained(out)
    barrier(dist)
    return AutoTokenizer.from_pretrained(out), "trained (byte-level BPE)"


# ------------------------------------------------------------------ model
def new_model_config(cfg: TrainConfig, tokenizer) -> TrimodeConfig:
    m = cfg.model
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token; a tri-mode model needs one (train one with trimode's "
                         "tokenizer, or pass a tokenizer that defines mask_token)")
    rope = {"rope_type": "default", "rope_theta": m.rope_theta}
    if m.rope_type == "yarn":  # the Ministral-3 flavour, scaled to this context
        rope = {"rope_type": "yarn", "rope_theta": m.rope_theta, "factor": 4.0,
                "original_max_position_embeddings": max(1, m.max_position_embeddings // 4), "beta_fast": 32.0,
                "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
    return TrimodeConfig(
        vocab_size=len(tokenizer), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads, head_dim=m.head_dim,
        max_position_embeddings=m.max_position_embeddings, rope_parameters=rope,
        initializer_range=m.initializer_range, mask_token_id=tokenizer.mask_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, block_size=m.block_size)


def load_model(cfg: TrainConfig, init: Path | None, tokenizer) -> tuple[TrimodeModel, object, str]:
    """(model in float32, tokenizer (maybe with a new mask token), how it was obtained)."""
    if init is None:
        if cfg.stage != "ar":
            raise ValueError(f"stage {cfg.stage} needs --init DIR: the previous stage's output, or (joint) a "
                             "Llama/Mistral/Ministral-3 transformers checkpoint to convert")
        with torch.random.fork_rng(devices=[]):  # init weights from the seed, leave the global RNG alone
            torch.manual_seed(cfg.seed)
            model = TrimodeModel(new_model_config(cfg, tokenizer))
        return model, tokenizer, "new"
    kind = model_type_of(init)
    if kind in LOADABLE_MODEL_TYPES:
        from transformers import AutoModel

        from .._registration import register_auto_classes

        register_auto_classes()  # the command line defers what `import trimode` does
        with quiet_transformers():
            model = AutoModel.from_pretrained(init, dtype=torch.float32)
        return model, tokenizer, f"trimode checkpoint {init}"
    if is_convertible(init):
        if cfg.stage == "drafter":
            raise ValueError(f"stage drafter needs a tri-mode checkpoint (after joint/sft); {init} is a plain "
                             f"{kind} AR model: run --stage joint on it first")
        conv = convert_hf_checkpoint(init, mask_token_id=cfg.mask_token_id,
                                     block_size=cfg.block_size or cfg.model.block_size, tokenizer=tokenizer)
        return conv.model, conv.tokenizer, f"converted {kind} checkpoint {init} ({'; '.join(conv.notes)})"
    raise ValueError(f"--init {init}: model_type={kind!r} is not supported; allowed: "
                     f"{', '.join(LOADABLE_MODEL_TYPES)} (trimode) or llama, mistral, ministral3 (converted)")


def _check_lengths(cfg: TrainConfig, model: TrimodeModel) -> None:
    block = (cfg.drafter.block_length or model.config.block_size) if cfg.stage == "drafter" else 0
    need = cfg.seq_len + block  # drafter: a block may start at the last token
    if need > model.config.max_position_embeddings:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's max_position_embeddings="
                         f"{model.config.max_position_embeddings}")


# ------------------------------------------------------------------ stages
def build_stage(cfg: TrainConfig, dist: DistInfo, out: Path, init: Path | None = None,
                tokenizer_dir: Path | None = None, resume: bool = False) -> Stage:
    """Tokenizer, model (on ``dist.device``, in train mode), data, objective and export of ``cfg.stage``."""
    tokenizer, tok_source = resolve_tokenizer(cfg, dist, out, init, tokenizer_dir, resume)
    model, tokenizer, model_source = load_model(cfg, init, tokenizer)
    _check_lengths(cfg, model)
    if model.config.vocab_size < len(tokenizer):
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}")
    model.to(dist.device).train()
    info = {"tokenizer": tok_source, "model": model_source}
    if cfg.stage == "drafter":
        return _drafter_stage(cfg, dist, out, model, tokenizer, info, resume)
    if cfg.stage == "vlm":
        from .vlm import vlm_stage_parts

        model, objective, batcher, eval_source, lr_scale = vlm_stage_parts(cfg, dist, out, model, tokenizer, info)
        return Stage("vlm", model, tokenizer, objective, batcher, eval_source,
                     lambda path, state_dict=None: _export_full(model, tokenizer, path, state_dict), info, lr_scale)
    # Recorded in config.json so `trimode eval` / `bench` draw held-out tasks of these families.
    model.config.task_families = list(dict.fromkeys(cfg.task_families or FAMILIES))
    return _text_stage(cfg, dist, model, tokenizer, info)


def _export_full(model: TrimodeModel, tokenizer, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write the complete model directory: config, safetensors, tokenizer (weights: ``state_dict`` if given)."""
    path.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)


def _text_stage(cfg: TrainConfig, dist: DistInfo, model: TrimodeModel, tokenizer, info: dict) -> Stage:
    """ar, joint (code + task text) and sft (task prompt/response pairs): every weight trained and exported."""
    G = global_batch_size(cfg, dist.world_size)
    objective = AutoregressiveObjective(cfg, dist.device) if cfg.stage == "ar" else \
        JointObjective(cfg, model.config, dist.device)
    sequences, eval_kind = (sft_sequences, "task") if cfg.stage == "sft" else (pretraining_sequences, "code/task")
    batcher = make_batcher(lambda: sequences(tokenizer, cfg, "train"), cfg, dist.world_size)

    def eval_source() -> list[dict[str, torch.Tensor]]:
        return fixed_batches(sequences(tokenizer, cfg, "heldout"), cfg.eval_batches, G, eval_kind)

    def export(path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        _export_full(model, tokenizer, path, state_dict)

    return Stage(cfg.stage, model, tokenizer, objective, batcher, eval_source, export, info)


def _drafter_stage(cfg: TrainConfig, dist: DistInfo, out: Path, model: TrimodeModel, tokenizer, info: dict,
                   resume: bool) -> Stage:
    """drafter: the base frozen, a LoRA adapter trained on the base's own greedy continuations.

    The base is written to ``out`` once (it never changes); each export writes only the adapter.
    A VLM base drafts for image-task prompts, its images in the clean prefix (:mod:`trimode.training.vlm`).
    """
    from . import vlm
    from .drafter import DATA_FILE, DrafterObjective, attach_drafter, distillation_data

    G = global_batch_size(cfg, dist.world_size)
    image_model = vlm.is_vlm(model)
    make_data = vlm.vlm_distillation_data if image_model else distillation_data
    if dist.is_main:
        _export_full(model, tokenizer, out)
        stale = out / DRAFTER_SUBFOLDER
        if stale.exists() and not resume:  # a fresh run: an adapter there is an earlier run's
            shutil.rmtree(stale)
    # Rank 0 generates (or finds) the distillation targets; the others read its cache file.
    if dist.is_main:
        data = make_data(model, tokenizer, cfg, out / DATA_FILE, write=True)
    barrier(dist)
    if not dist.is_main:
        data = make_data(model, tokenizer, cfg, out / DATA_FILE, write=False)
    targets = vlm.text_lora_targets(cfg.drafter.target_modules) if image_model else None
    peft_model = attach_drafter(model, cfg.drafter, cfg.seed, targets)
    model.to(dist.device).train()
    objective = (vlm.VLMDrafterObjective if image_model else DrafterObjective)(cfg, model, dist.device)

    def samples(split: str) -> list[dict[str, torch.Tensor]]:
        if image_model:
            return vlm.expand_with_images(data[split], tokenizer, model.config, cfg, split)
        return [{k: v[i] for k, v in data[split].items()} for i in range(len(data[split]["tokens"]))]

    train_samples = samples("train")
    if len(train_samples) < G:
        raise ValueError(f"drafter.n_prompts={len(train_samples)} is smaller than the global batch {G}")
    batcher = make_batcher(lambda: train_samples, cfg, dist.world_size)

    def eval_source() -> list[dict[str, torch.Tensor]]:
        ev = samples("eval")
        n = min((len(ev) // G) * G, cfg.eval_batches * G)
        return [{k: torch.stack([s[k] for s in ev[i:i + G]]) for k in ev[0]} for i in range(0, n, G)]

    def export(path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        # PEFT picks the adapter's weights out of a state dict keyed as its own (``base_model.model.`` + name).
        peft_state = None if state_dict is None else {f"base_model.model.{k}": v for k, v in state_dict.items()}
        peft_model.save_pretrained(path / DRAFTER_SUBFOLDER, state_dict=peft_state)

    info["drafter_samples"] = len(train_samples)
    return Stage("drafter", model, tokenizer, objective, batcher, eval_source, export, info)
