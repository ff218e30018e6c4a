"""The usual DDP setup, and nothing more: one process per device, launched by ``torchrun``.

- ``WORLD_SIZE > 1`` in the environment (torchrun sets it, with ``RANK``/``LOCAL_RANK``)
  initialises the default process group: gloo on CPU, nccl on CUDA.
- The model is wrapped in :class:`TrainingDDP` (torch's DistributedDataParallel, which
  averages gradients across ranks during backward).
- :func:`all_reduce_sum` sums small bookkeeping tensors across ranks: the token count
  that normalises the loss (so every rank scales its gradient by the *global* count)
  and the logged loss sums. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK when CUDA is available, else cpu; otherwise the named device."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"device=auto gives process LOCAL_RANK={local_rank} cuda:{local_rank}, but only "
                             f"{torch.cuda.device_count()} CUDA device(s) are visible: start at most that many "
                             f"processes per node, or use device=cpu")
        return torch.device(f"cuda:{local_rank}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a torch device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available; use device=cpu or auto")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def setup(device_name: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks (in place; identity on one process)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


class TrainingDDP(DistributedDataParallel):
    """DDP that also exposes the wrapped model's ``config``.

    Loss functions written for the model (``joint_loss`` reads ``model.config``) then
    take the wrapper unchanged, so every gradient-carrying forward goes through DDP.
    """

    @property
    def config(self):
        return self.module.config


def wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """The module the training forward runs through: DDP when distributed, else the model itself."""
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return TrainingDDP(model, device_ids=ids)


def no_sync(engine: torch.nn.Module, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (only the last one syncs)."""
    if sync or not isinstance(engine, DistributedDataParallel):
        return contextlib.nullcontext()
    return engine.no_sync()
