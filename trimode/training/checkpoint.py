"""Atomic, pickle-free training checkpoints for exact resume.

Layout of ``OUT/checkpoints/step-00000200/``::

    weights.safetensors     trainable parameters by name (full model, or the LoRA adapter), exact
    optimizer.safetensors   AdamW moments and step counts, keyed ``state.<param index>.<name>``
    rng.safetensors         torch's global RNG states (CPU, and CUDA when present)
    state.json              step, scheduler, data-iterator state, optimizer hyper-parameters,
                            counters and the config the run was started with

Design choices:
- safetensors + JSON only (no pickles): a checkpoint can be inspected and loaded safely.
- Atomic: everything is written into ``.tmp-step-...`` and then renamed with
  ``os.replace``; a crash leaves either the complete checkpoint or none, and a
  ``step-*`` directory is always complete.
- The trainer draws every random choice from generators seeded by (seed, step, sample),
  so no RNG state is needed for exact resume; the global RNG states are saved anyway
  for code outside the trainer (e.g. a model with dropout).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and p.name[len(PREFIX):].isdigit() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


# ------------------------------------------------------------------ optimizer
def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and plain values (JSON)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------ RNG
def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")),
                                       key=lambda k: int(k.split(".")[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------ save / load
def save_checkpoint(root: Path, step: int, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / "weights.safetensors",
              metadata={"format": "pt"})
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    save_file(opt_tensors, tmp / "optimizer.safetensors", metadata={"format": "pt"})
    save_file(rng_tensors(), tmp / "rng.safetensors")
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=1))
    if final.exists():  # an older run reached this step before a crash: the new one wins
        trash = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore the optimizer and global RNG from ``path``; return (weights, state)."""
    state = json.loads((path / "state.json").read_text())
    optimizer_from_flat(optimizer, load_file(path / "optimizer.safetensors"), state.pop("optimizer"))
    restore_rng(load_file(path / "rng.safetensors"))
    return load_file(path / "weights.safetensors"), state
