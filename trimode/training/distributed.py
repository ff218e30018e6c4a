"""The usual DDP / FSDP2 setup, and nothing more: one process per device, launched by ``torchrun``.

- ``WORLD_SIZE > 1`` in the environment (torchrun sets it, with ``RANK``/``LOCAL_RANK``)
  initialises the default process group: gloo on CPU, nccl on CUDA.
- ``parallel=ddp``: the model is wrapped in :class:`TrainingDDP` (torch's DistributedDataParallel,
  which averages gradients across ranks during backward).
- ``parallel=fsdp``: torch's FSDP2 (``fully_shard``) shards each decoder layer, then the root
  (embeddings, final norm, head); parameters, gradients and AdamW state live as DTensor shards,
  each layer is all-gathered for its forward and backward only, and gradients are averaged over
  ranks by the reduce-scatter, as DDP averages them. With ``precision=bf16`` the layers are gathered
  and run in bf16 (``MixedPrecisionPolicy``); the sharded float32 weights stay the master copy and
  gradients are reduced in float32. One process with ``parallel=fsdp`` runs the same code on a
  one-process group (nothing to shard), so checkpoints have one format per ``parallel``.
- ``activation_checkpointing``: each decoder layer recomputes its activations in backward
  (:mod:`trimode.training.activation_checkpointing`), under either wrapper or none.
- :func:`all_reduce_sum` sums small bookkeeping tensors across ranks: the token count
  that normalises the loss (so every rank scales its gradient by the *global* count)
  and the logged loss sums. Only rank 0 writes files (a sharded checkpoint: every rank its shard).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from .activation_checkpointing import checkpoint_decoder_layers, decoder_layers
from .config import PARALLEL_MODES


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    sharded: bool = False  # parallel=fsdp: FSDP2 shards the model (also on one process)
    owns_group: bool = False  # setup() initialised the process group, so teardown() destroys it

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


def setup(device_name: str = "auto", parallel: str = "ddp") -> DistInfo:
    """Initialise the process group when launched by torchrun with more than one process, or for
    ``parallel=fsdp`` on one process (a one-process group: FSDP2 needs one)."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel={parallel!r} is not supported; allowed: {', '.join(PARALLEL_MODES)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    sharded = parallel == "fsdp"
    owns = (world > 1 or sharded) and not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if world > 1:
            dist.init_process_group(backend=backend)
        else:  # no torchrun: an in-memory store, nothing to rendezvous with
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, sharded=sharded,
                    owns_group=owns)


def teardown(info: DistInfo) -> None:
    """Destroy the process group :func:`setup` created (one the caller set up is the caller's to end)."""
    if info.owns_group and dist.is_initialized():
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


def wrap(model: torch.nn.Module, info: DistInfo, activation_checkpointing: bool = False,
         bf16: bool = False) -> torch.nn.Module:
    """The module the training forward runs through: the model sharded in place by FSDP2 (``info.sharded``),
    DDP when distributed, else the model itself; with its decoder layers checkpointed if asked.

    bf16: FSDP2 gathers and runs the layers in bf16 (float32 master weights and gradient reductions).
    """
    if activation_checkpointing:
        checkpoint_decoder_layers(model)
    if info.sharded:
        return shard(model, info, bf16)
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return TrainingDDP(model, device_ids=ids)


def shard(model: torch.nn.Module, info: DistInfo, bf16: bool) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the root: the usual FSDP2 recipe (a layer is the unit
    gathered at a time, the root holds the embeddings, final norm and head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # The mesh names the device explicitly: a CPU (gloo) run where a GPU is visible must stay on CPU.
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    return fully_shard(model, mesh=mesh, mp_policy=policy)


def no_sync(engine: torch.nn.Module, sync: bool):
    """Skip the gradient reduction on accumulation micro-steps (only the last one syncs): DDP's
    ``no_sync``, FSDP2's ``set_requires_gradient_sync(False)`` (it keeps the unsharded gradients until
    the last micro-step: one reduce-scatter per step, for the memory of a whole gradient meanwhile)."""
    if sync:
        return contextlib.nullcontext()
    if isinstance(engine, DistributedDataParallel):
        return engine.no_sync()
    if isinstance(engine, FSDPModule):
        return _fsdp_no_sync(engine)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(engine: FSDPModule):
    engine.set_requires_gradient_sync(False)  # recurses into the sharded layers
    try:
        yield
    finally:
        engine.set_requires_gradient_sync(True)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for plain and DTensor (FSDP2) parameters: the norm of the *whole* gradient
    (every shard's share summed over ranks), returned as a plain tensor; max_norm <= 0: no clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):  # a partial norm on each rank: reduce it
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm if max_norm > 0 else float("inf"), total)
    return total


def full_state_dict(model: torch.nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict on rank 0 (CPU), gathered from the FSDP2 shards by every rank
    (a collective: all ranks call it); None on other ranks, and for an unsharded model (its own
    ``state_dict`` is already whole)."""
    if not info.sharded:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if info.is_main else None
