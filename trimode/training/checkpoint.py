"""Atomic training checkpoints for exact resume: safetensors + JSON (``parallel=ddp``), or sharded (``fsdp``).

Layout of ``OUT/checkpoints/step-00000200/``::

    weights.safetensors     trainable parameters by name (full model, or the LoRA adapter), exact
    optimizer.safetensors   AdamW moments and step counts, keyed ``state.<param index>.<name>``
    rng.safetensors         torch's global RNG states (CPU, and CUDA when present)
    state.json              step, scheduler, data-iterator state, optimizer hyper-parameters,
                            counters and the config the run was started with

``parallel=fsdp`` writes ``sharded/`` (``torch.distributed.checkpoint``: each rank writes its
shards of the trainable parameters and AdamW moments, ``model.<name>`` / ``optimizer.<name>.<moment>``,
from ``get_state_dict``) instead of the two weight files; ``rng.safetensors`` and ``state.json``
(with the optimizer's hyper-parameters) are the same. torch's format can be read back on any
number of processes (the global batch must stay the same).

Design choices:
- safetensors + JSON only (no pickles): a checkpoint can be inspected and loaded safely. The one
  exception is the index of a sharded checkpoint, ``sharded/.metadata``, which torch writes and reads
  with pickle (its format, not ours); only tensors go into the shards, the rest is in ``state.json``.
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

from .distributed import DistInfo, barrier

PREFIX = "step-"
SHARDED_DIR = "sharded"


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
    return _publish(tmp, final, keep)


def _publish(tmp: Path, final: Path, keep: int) -> Path:
    """Rename the finished ``tmp`` to ``final`` (atomic) and delete all but the newest ``keep`` checkpoints."""
    if final.exists():  # an older run reached this step before a crash: the new one wins
        trash = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore the optimizer and global RNG from ``path``; return (weights, state)."""
    state = json.loads((path / "state.json").read_text())
    optimizer_from_flat(optimizer, load_file(path / "optimizer.safetensors"), state.pop("optimizer"))
    restore_rng(load_file(path / "rng.safetensors"))
    return load_file(path / "weights.safetensors"), state


# ------------------------------------------------------------------ sharded (FSDP2)
def save_sharded_checkpoint(root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            names: list[str], state: dict[str, Any], keep: int, dist: DistInfo) -> Path:
    """Every rank: write its shards of the parameters ``names`` and of the AdamW state; rank 0 then writes
    the RNG and ``state.json`` and renames the whole checkpoint into place (atomic, as above)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"  # one name for every rank (no pid: the ranks differ)
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier(dist)
    weights, optim = get_state_dict(model, optimizer)
    dcp.save({"model": _only(weights, names), "optimizer": optim["state"]}, checkpoint_id=tmp / SHARDED_DIR)
    if dist.is_main:
        save_file(rng_tensors(), tmp / "rng.safetensors")
        meta = {"param_groups": optim["param_groups"]}
        (tmp / "state.json").write_text(json.dumps({**state, "optimizer": meta}, indent=1))
        _publish(tmp, final, keep)
    barrier(dist)
    return final


def load_sharded_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            names: list[str]) -> dict[str, Any]:
    """Every rank: restore its shards of the parameters ``names``, the AdamW state and the global RNG from
    ``path``; return the JSON state. The checkpoint's parameters must be exactly ``names``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    state = json.loads((path / "state.json").read_text())
    sharded = path / SHARDED_DIR
    if not (sharded / ".metadata").is_file():
        raise ValueError(f"{path} holds no sharded checkpoint ({SHARDED_DIR}/); it was written by a run with "
                         "another parallel setting (resume with the same parallel=...)")
    _check_names(path, dcp.FileSystemReader(sharded).read_metadata().state_dict_metadata, names)
    weights, optim = get_state_dict(model, optimizer)  # the shapes and shards to load into
    loaded = {"model": _only(weights, names), "optimizer": optim["state"]}
    dcp.load(loaded, checkpoint_id=sharded)  # in place, into this rank's shards
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in state.pop("optimizer")["param_groups"]]
    # strict=False: for the drafter, the frozen base is not in the checkpoint (it never changes).
    set_state_dict(model, optimizer, model_state_dict=loaded["model"],
                   optim_state_dict={"state": loaded["optimizer"], "param_groups": groups},
                   options=StateDictOptions(strict=False))
    restore_rng(load_file(path / "rng.safetensors"))
    return state


def _only(weights: dict[str, Any], names: list[str]) -> dict[str, Any]:
    missing = sorted(set(names) - set(weights))
    if missing:
        raise ValueError(f"the model has no parameters named {missing[:3]}")
    return {name: weights[name] for name in names}


def _check_names(path: Path, saved: dict[str, Any], names: list[str]) -> None:
    """The same message as the safetensors format's when a checkpoint belongs to another stage or model."""
    have = {key[len("model."):] for key in saved if key.startswith("model.")}
    missing, unexpected = sorted(set(names) - have), sorted(have - set(names))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match this stage's parameters (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}): was it written by another stage or model?")
