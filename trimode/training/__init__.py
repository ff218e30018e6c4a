"""Training pipeline of tri-mode models: ``ar`` -> ``joint`` -> ``sft`` -> ``drafter``
(AR pretraining, joint AR + diffusion training, fine-tuning on instructions, the LoRA drafter),
and ``vlm`` -> ``drafter`` for a vision-language model on a text checkpoint.

Files (each small, one job):

- ``config.py``: typed configs (pydantic: :class:`TrainConfig`, :class:`ModelSpec`,
  :class:`DrafterConfig`), presets ``debug`` / ``tiny`` / ``smol`` (:data:`PRESETS`), ``key=value``
  overrides; ``config_text.py``: their type names in ``--help`` (errors: :mod:`trimode.typed_config`).
- ``trainer.py``: :func:`train`, the one loop every stage shares (DDP or FSDP2, grad accumulation,
  global loss normalisation, logging, eval, checkpoints, exact resume).
- ``stages.py``: what differs per stage: model init (new / trimode / converted HF),
  tokenizer, data, objective, export.
- ``objectives.py``: AR cross-entropy and the joint AR + diffusion loss as sums.
- ``drafter.py``: the LoRA drafter and its self-distillation objective.
- ``vlm.py``: stage ``vlm`` (a Pixtral tower + projector on a text checkpoint) and the drafter of a VLM;
  ``vlm_data.py``: generated image tasks as samples by index; ``vlm_objective.py``: the joint loss on
  the answer with the image in the clean prefix.
- ``data.py``: code + task streams, SFT packing, global-batch sharding, per-sample seeds.
- ``optim.py``: AdamW + warmup-stable-decay; ``checkpoint.py``: atomic safetensors + JSON
  checkpoints (sharded ones under FSDP2); ``distributed.py``: the usual DDP / FSDP2 setup;
  ``activation_checkpointing.py``: per-layer recomputation; ``logs.py``: JSONL, tqdm, PNG.

Llama / Mistral / Ministral-3 ``transformers`` checkpoints are converted by :mod:`trimode.conversion`
(re-exported here).

Library use (the CLI ``trimode train`` is a thin map onto this)::

    from trimode.training import preset_config, train
    cfg = preset_config("debug", "ar")
    train(cfg, out="runs/ar")
    train(preset_config("debug", "joint"), out="runs/joint", init="runs/ar")
"""

from .._lazy import lazy_exports

# The configs need only pydantic (no torch): `trimode train --help` lists them without
# importing torch. The trainer and the converter are imported on first use (PEP 562).
from .config import PRESETS, DrafterConfig, ModelSpec, TrainConfig, apply_overrides, debug, preset_config, tiny

_LAZY = {"Converted": "..conversion", "convert_hf_checkpoint": "..conversion", "TrainResult": ".trainer", "train": ".trainer"}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

__all__ = ["PRESETS", "DrafterConfig", "ModelSpec", "TrainConfig", "apply_overrides", "debug", "preset_config",
           "tiny", "Converted", "convert_hf_checkpoint", "TrainResult", "train"]
