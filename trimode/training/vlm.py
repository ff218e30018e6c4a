"""Stage ``vlm``: a vision-language model built on a tri-mode text checkpoint, trained on generated image tasks.

``--init`` is a text model (trimode, or a published ``nemotron_labs_diffusion`` one) or a VLM (to train on).
From a text model, :func:`build_vlm` makes a :class:`~trimode.modeling_vlm.NemotronLabsDiffusionVLMModel`:

- the text weights are the init's; the vocabulary grows by the image tokens (:data:`IMAGE_TOKENS`,
  ids after the text vocabulary), whose embedding and head rows start as the mean of the text rows
  (a new token then looks like an average token, not like a random one to the trained layers);
- a Pixtral tower of ``cfg.vlm``'s shape (2-D RoPE over patches) and the Mistral-3 projector
  (RMSNorm, 2x2 patch merger, two linears with GELU) start from random weights, from ``cfg.seed``.

Every weight trains. Data: :mod:`trimode.training.vlm_data` (task ``i`` of the training seed for
sample ``i``); objective: :mod:`trimode.training.vlm_objective` (the joint loss on the answer, its
blocks from the answer start, the image only in the clean prefix).

The stage writes the model's ``config.json`` and tokenizer to ``--out`` before the first step, so a
checkpoint's ``weights.safetensors`` plus that directory is a loadable model while the run goes on.

The drafter of a VLM is stage ``drafter`` with the VLM as ``--init``: :func:`vlm_drafter_parts` gives it
image-task prompts (with their images in the clean prefix) instead of code and text tasks, and keeps the
LoRA off the vision tower (whose attention has ``o_proj`` layers too).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..configuration_vlm import NemotronLabsDiffusionVLMConfig
from ..image_tasks import KINDS
from ..modeling_vlm import NemotronLabsDiffusionVLMModel
from .config import TrainConfig, VLMSpec
from .data import global_batch_size
from .distributed import DistInfo, barrier
from .drafter import DrafterObjective, fingerprint, greedy_continuations
from .objectives import Prepared, Terms
from .vlm_data import IMAGE_TOKENS, ImageTaskSamples, IndexBatcher, add_image_tokens, eval_batches
from .vlm_objective import IMAGE_KEYS, VLMJointObjective, image_embeddings

VLM_MODEL_TYPE = NemotronLabsDiffusionVLMConfig.model_type
# Text-config keys not carried over to the VLM config (transformers bookkeeping, the text tasks' families).
_DROPPED_KEYS = {"model_type", "architectures", "transformers_version", "task_families", "_name_or_path", "dtype",
                 "torch_dtype", "auto_map"}
# Drafter prompts: a training seed the vlm stage did not read (so the drafter distils fresh images).
DRAFTER_SEED_OFFSET = 1


def is_vlm(model) -> bool:
    return isinstance(model, NemotronLabsDiffusionVLMModel)


def vision_config(spec: VLMSpec) -> dict:
    """The Pixtral tower's config dict; ``image_size`` (the longest edge its RoPE grid covers) is the processor's cap."""
    return {"model_type": "pixtral", "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_hidden_layers, "num_attention_heads": spec.hidden_size // spec.head_dim,
            "head_dim": spec.head_dim, "patch_size": spec.patch_size, "image_size": spec.max_image_size,
            "num_channels": 3, "hidden_act": "gelu", "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}


def vlm_config(text_config, tokenizer, spec: VLMSpec) -> NemotronLabsDiffusionVLMConfig:
    """The text config's fields, the grown vocabulary, the image token ids and the tower's shape."""
    ids = add_image_tokens(tokenizer)
    fields = {k: v for k, v in text_config.to_dict().items() if k not in _DROPPED_KEYS}
    fields.update(vocab_size=max(len(tokenizer), text_config.vocab_size), vision_config=vision_config(spec),
                  spatial_merge_size=spec.spatial_merge_size, max_image_size=spec.max_image_size, **ids)
    return NemotronLabsDiffusionVLMConfig(**fields)


def build_vlm(text_model, tokenizer, spec: VLMSpec, seed: int) -> NemotronLabsDiffusionVLMModel:
    """A VLM with ``text_model``'s weights, new image-token rows (the mean row) and a new tower and projector.

    Adds the image tokens to ``tokenizer`` (in place). The new weights are drawn from ``seed`` without
    touching the global RNG.
    """
    config = vlm_config(text_model.config, tokenizer, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NemotronLabsDiffusionVLMModel(config)
    text = text_model.state_dict()
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in text.items():
            if name not in state:
                raise ValueError(f"the text model's weight {name} has no place in the VLM")
            if state[name].shape == tensor.shape:
                state[name].copy_(tensor)
            else:  # embeddings and head: the text rows, then the mean row for each new token
                n = tensor.shape[0]
                state[name][:n].copy_(tensor)
                state[name][n:].copy_(tensor.mean(0, keepdim=True).expand_as(state[name][n:]))
    model.load_state_dict(state)
    return model.float()


def save_model_files(model, tokenizer, out: Path) -> None:
    """``config.json`` and the tokenizer: with a checkpoint's weights, a loadable model directory."""
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def vlm_stage_parts(cfg: TrainConfig, dist: DistInfo, out: Path, model, tokenizer, info: dict):
    """(model, objective, batcher, eval source, lr scale by parameter name) of stage vlm: the model built on
    the text init (or the VLM init as it is), image-task data, the answer-window objective, and the tower's
    and projector's learning rate (``vlm.vision_lr_scale`` x lr)."""
    if not is_vlm(model):
        model = build_vlm(model, tokenizer, cfg.vlm, cfg.seed)
        info["model"] += f"; new vision tower ({cfg.vlm.num_hidden_layers} x {cfg.vlm.hidden_size}) and projector"
    else:
        add_image_tokens(tokenizer)  # its tokenizer has them already: checks they map where the config says
    _check_image_tokens(model.config, tokenizer)
    model.config.image_task_kinds = evaluated_kinds(cfg.vlm.kinds)
    model.to(dist.device).train()
    if dist.is_main:
        save_model_files(model, tokenizer, out)
    barrier(dist)
    G = global_batch_size(cfg, dist.world_size)
    grounding = cfg.vlm.grounding_weight > 0
    train_samples = ImageTaskSamples(tokenizer, model.config, cfg.vlm.train_seed, cfg.seq_len, cfg.vlm.kinds,
                                     cfg.n_tasks, grounding=grounding)
    heldout = ImageTaskSamples(tokenizer, model.config, cfg.vlm.eval_seed, cfg.seq_len, cfg.vlm.kinds,
                               grounding=grounding)
    info["image_tokens"] = {k: getattr(model.config, k) for k in IMAGE_TOKENS}
    scale = cfg.vlm.vision_lr_scale
    for name, p in model.named_parameters():
        if is_vision_parameter(name):
            p.requires_grad_(scale > 0)  # 0: the tower and projector stay as they are

    def lr_scale(name: str) -> float:
        return scale if is_vision_parameter(name) else 1.0

    return (model, VLMJointObjective(cfg, model, dist.device), IndexBatcher(train_samples, G),
            lambda: eval_batches(heldout, cfg.eval_batches, G), lr_scale)


def evaluated_kinds(kinds) -> list[str]:
    """What `trimode eval` should draw for a model trained on ``kinds`` (``config.image_task_kinds``): each kind
    once, in :data:`KINDS` order (training may weight a kind by repeating it; the evaluation should not), and
    empty when that is all of them."""
    trained = [kind for kind in KINDS if kind in kinds]
    return [] if trained == list(KINDS) else trained


def is_vision_parameter(name: str) -> bool:
    """A weight of the vision tower or the projector (not of the text model)."""
    return ".vision_tower." in f".{name}" or ".multi_modal_projector." in f".{name}"


def _check_image_tokens(config, tokenizer) -> None:
    for field, token in IMAGE_TOKENS.items():
        if getattr(config, field) != tokenizer.convert_tokens_to_ids(token):
            raise ValueError(f"config.{field}={getattr(config, field)} but the tokenizer maps {token} to "
                             f"{tokenizer.convert_tokens_to_ids(token)}: was the tokenizer changed?")


# ------------------------------------------------------------------ the drafter of a VLM
def text_lora_targets(targets) -> str:
    """A PEFT ``target_modules`` regex for these projections of the *text* decoder layers only."""
    return rf"encoder\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(targets)})"


def drafter_samples(tokenizer, model_config, cfg: TrainConfig, split: str) -> ImageTaskSamples:
    """The drafter's prompts: fresh training tasks, or the held-out tasks of the vlm stage's eval loss."""
    seed = cfg.vlm.train_seed + DRAFTER_SEED_OFFSET if split == "train" else cfg.vlm.eval_seed
    return ImageTaskSamples(tokenizer, model_config, seed, cfg.seq_len, cfg.vlm.kinds)


@torch.no_grad()
def vlm_distillation_data(model, tokenizer, cfg: TrainConfig, cache_file: Path | None,
                          write: bool) -> dict[str, dict[str, torch.Tensor]]:
    """{"train", "eval"}: image-task prompts and the model's own AR greedy answers (tokens, prompt_length,
    length, task_index), cached in ``cache_file`` under a fingerprint of the weights and settings."""
    from .drafter import pack_samples, read_cached_data, write_cached_data

    key = hashlib.sha256((fingerprint(model, cfg) + json.dumps(cfg.vlm.model_dump(), sort_keys=True)).encode())
    key = key.hexdigest()
    cached = read_cached_data(cache_file, key)
    if cached is not None:
        return cached
    d = cfg.drafter
    data = {}
    for split, n in (("train", d.n_prompts), ("eval", d.n_eval_prompts)):
        samples = drafter_samples(tokenizer, model.config, cfg, split)
        prompts, conts = [], []
        for first in range(0, n, d.gen_batch):
            batch = samples.batch(range(first, min(n, first + d.gen_batch)))
            chunk = [row[:int(p)].tolist() for row, p in zip(batch["input_ids"], batch["prompt_length"])]
            prompts += chunk
            conts += _greedy_with_images(model, chunk, batch, d.gen_tokens)
        packed = pack_samples(prompts, conts, cfg.seq_len, samples.pad)
        data[split] = {**packed, "task_index": torch.arange(n)}
    if write and cache_file is not None:
        write_cached_data(cache_file, key, data)
    return data


def _greedy_with_images(model, prompts: list[list[int]], batch: dict[str, torch.Tensor], gen_tokens: int):
    """``greedy_continuations`` of prompts whose images are in ``batch`` (one per prompt, in order)."""
    images = {"pixel_values": batch["pixel_values"], "image_sizes": batch["image_sizes"]}
    return greedy_continuations(_WithImages(model, images), prompts, gen_tokens, len(prompts))


class _WithImages:
    """``model`` whose ``ar_generate`` also gets these images (what ``greedy_continuations`` calls)."""

    def __init__(self, model, images: dict):
        self.model, self.images = model, images
        self.training = model.training

    def eval(self):
        self.model.eval()

    def train(self, mode: bool = True):
        self.model.train(mode)

    def ar_generate(self, prompts, **kwargs):
        return self.model.ar_generate(prompts, **kwargs, **self.images)


def expand_with_images(data: dict[str, torch.Tensor], tokenizer, model_config, cfg: TrainConfig,
                       split: str) -> list[dict[str, torch.Tensor]]:
    """Samples of the drafter: the cached tokens plus each prompt's image, drawn again from its task index."""
    samples = drafter_samples(tokenizer, model_config, cfg, split)
    out = []
    for i in range(len(data["tokens"])):
        task = samples.task(int(data["task_index"][i]))
        inputs = samples.prompt(task)
        row = {k: v[i] for k, v in data.items()}
        out.append({**row, **samples.padded_image(inputs["pixel_values"][0], inputs["image_sizes"][0])})
    return out


class VLMDrafterObjective(DrafterObjective):
    """The drafter's draft CE (:class:`DrafterObjective`), with each sample's image in its clean prefix."""

    def prepare(self, batch, step, first_index, purpose) -> Prepared:
        prepared = super().prepare(batch, step, first_index, purpose)
        prepared.inputs.update({k: batch[k].to(self.device) for k in IMAGE_KEYS})
        return prepared

    def prefix_embeddings(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():  # the prefix is the frozen, adapter-free model's
            return image_embeddings(self.model, inputs["tokens"], inputs["pixel_values"], inputs["image_sizes"])

    def terms(self, engine, prepared) -> Terms:
        return self.draft_terms(engine, prepared, self.prefix_embeddings(prepared.inputs))


__all__ = ["build_vlm", "vlm_config", "vision_config", "vlm_stage_parts", "is_vlm", "VLM_MODEL_TYPE", "text_lora_targets",
           "vlm_distillation_data", "expand_with_images", "VLMDrafterObjective"]
