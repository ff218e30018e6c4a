"""The one training loop, shared by every stage (a stage only supplies model, data, objective).

One optimizer step::

    batch  = next(global batches)                     # identical on every process
    local  = this rank's rows; split into micro-batches
    prep   = objective.prepare(micro, step, global index of its first row)   # random draws, counts
    N      = all_reduce(sum of counts)                 # tokens the loss is summed over, globally
    for each micro-batch (gradient sync only on the last):
        backward(objective.terms(engine, prep).numerator * world_size / N)
    clip, AdamW step, WSD lr step; all-reduce the logged sums; log / eval / checkpoint

Why this gives 2 processes x b == 1 process x 2b (and == 1 x b with grad_accum 2):
the data order depends only on the global batch, every random draw depends only on
(seed, step, global sample index), and the loss is normalised by the *global* count,
so each rank's gradient is its share of one global sum; DDP averages over ranks, which
the ``* world_size`` undoes. Only float summation order differs.

Exact resume: model (trainable) weights, AdamW state, lr-schedule step and data-iterator
position are checkpointed (see :mod:`trimode.training.checkpoint`); nothing else carries
state, so a resumed run reproduces the uninterrupted one bit for bit on the same machine.

Stopping early: SIGTERM (what ``timeout``, SLURM and Kubernetes send before killing a job)
ends the run after the step in flight with a checkpoint and an export of the weights
reached, so nothing is lost; ``--resume`` continues it exactly.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import global_batch_size, local_rows, micro_batches
from .distributed import DistInfo, all_reduce_sum, barrier, no_sync, setup, teardown, wrap
from .logs import CURVE_FILE, LOG_FILE, JsonlLog, Progress, plot_loss_curve, show_progress
from .optim import build_optimizer, build_scheduler
from .stages import Stage, build_stage

CONFIG_FILE = "train_config.json"
CHECKPOINT_DIR = "checkpoints"
# Settings a resumed run may change: they do not change the trained weights.
RESUMABLE_CHANGES = {"device", "progress", "log_interval", "checkpoint_interval", "keep_checkpoints",
                     "micro_batch", "grad_accum", "eval_interval", "eval_batches"}


@dataclass
class TrainResult:
    out: Path
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)  # records logged by this run (rank 0)
    eval_loss: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def train(cfg: TrainConfig, out: str | Path, init: str | Path | None = None, tokenizer: str | Path | None = None,
          resume: bool = False, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Run one stage of ``cfg`` and write a complete model directory to ``out``.

    init: the checkpoint to start from (previous stage, or a Llama/Mistral/Ministral-3
    directory); tokenizer: a tokenizer directory (ar from scratch: else one is trained);
    resume: continue from the latest checkpoint in ``out/checkpoints``;
    on_step(step, record): called after every optimizer step (record = that step's metrics).
    """
    cfg.validate()
    out = Path(out)
    init = Path(init) if init is not None else None
    if init is None and cfg.stage != "ar":
        raise ValueError(f"stage {cfg.stage} needs --init DIR: the previous stage's output, or (joint) a "
                         "Llama/Mistral/Ministral-3 transformers checkpoint to convert")
    if init is not None and out.resolve() == init.resolve():
        raise ValueError(f"--out {out} is the --init directory; write each stage to a new directory")
    dist = setup(cfg.device)
    try:
        return _train(cfg, dist, out, init, Path(tokenizer) if tokenizer else None, resume, on_step)
    finally:
        teardown(dist)


def _check_resume(cfg: TrainConfig, state: dict[str, Any], G: int, path: Path) -> None:
    saved = TrainConfig.from_dict(state["config"]).to_dict()
    now = cfg.to_dict()

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    a, b = dict(flat(saved)), dict(flat(now))
    changed = sorted(k for k in a if a[k] != b.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        detail = ", ".join(f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in changed)
        raise ValueError(f"--resume from {path}: the config differs from the interrupted run's ({detail}); "
                         f"resume with the same settings (only {', '.join(sorted(RESUMABLE_CHANGES))} may change)")
    if state["global_batch"] != G:
        raise ValueError(f"--resume from {path}: global batch was {state['global_batch']} sequences, now {G} "
                         "(micro_batch x grad_accum x processes); keep it equal for an exact resume")


def _train(cfg: TrainConfig, dist: DistInfo, out: Path, init: Path | None, tokenizer_dir: Path | None,
           resume: bool, on_step) -> TrainResult:
    G = global_batch_size(cfg, dist.world_size)
    ckpt_root = out / CHECKPOINT_DIR
    start_ckpt = None
    if resume:
        start_ckpt = latest_checkpoint(ckpt_root)
        if start_ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_root}")
        _check_resume(cfg, json.loads((start_ckpt / "state.json").read_text()), G, start_ckpt)
    elif list_checkpoints(ckpt_root):
        raise ValueError(f"{out} already holds checkpoints of a run: pass --resume to continue it, or choose "
                         "another --out")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(dist)

    stage = build_stage(cfg, dist, out, init, tokenizer_dir, resume)
    engine = wrap(stage.model, dist)
    params = [p for _, p in stage.trainable()]
    optimizer = build_optimizer(stage.trainable(), cfg, dist.device)
    scheduler = build_scheduler(optimizer, cfg)
    step, tokens_seen, elapsed_before = 0, 0, 0.0
    if start_ckpt is not None:
        weights, state = load_checkpoint(start_ckpt, optimizer)
        stage.load_trainable_state(weights)
        scheduler.load_state_dict(state["scheduler"])
        stage.batcher.load_state_dict(state["data"])
        step, tokens_seen, elapsed_before = state["step"], state["tokens"], state["elapsed"]
    info = {**stage.info, "stage": stage.name, "rank": dist.rank, "world_size": dist.world_size, "global_batch": G,
            "device": str(dist.device), "start_step": step,
            "parameters": sum(p.numel() for p in stage.model.parameters()),
            "trainable_parameters": sum(p.numel() for p in params)}
    if dist.is_main:
        (out / CONFIG_FILE).write_text(cfg.to_json())

    log = JsonlLog(out / LOG_FILE, dist.is_main, step if resume else None)
    bar = Progress(cfg.steps, step, f"train {stage.name}", dist.is_main and show_progress(cfg.progress))
    autocast = (lambda: torch.autocast(dist.device.type, dtype=torch.bfloat16)) if cfg.precision == "bf16" \
        else nullcontext
    objective = stage.objective
    names = ("numerator", "count", *objective.stat_names)
    history: list[dict[str, Any]] = []
    eval_cache: list | None = None
    eval_loss = None

    def evaluate() -> float | None:
        nonlocal eval_cache
        if cfg.eval_batches == 0:
            return None
        if eval_cache is None:
            eval_cache = stage.eval_source()
        if not eval_cache:
            return None
        sums = torch.zeros(len(names), dtype=torch.float64, device=dist.device)
        with torch.no_grad():
            for batch in eval_cache:
                local, first = local_rows(batch, dist.rank, dist.world_size)
                for mb, idx in micro_batches(local, first, cfg.micro_batch):
                    p = objective.prepare(mb, 0, idx, "eval")  # fixed draws: evaluations compare
                    with autocast():
                        t = objective.terms(stage.model, p)
                    sums += torch.tensor([t.numerator.item(), p.count, *t.stats], dtype=torch.float64,
                                         device=dist.device)
        all_reduce_sum(sums, dist)
        return sums[0].item() / max(sums[1].item(), 1.0)

    if cfg.eval_batches and step == 0 and cfg.eval_interval:  # the starting point of the eval curve
        eval_loss = evaluate()
        if eval_loss is not None:
            log.write({"step": 0, "eval_loss": eval_loss})
            history.append({"step": 0, "eval_loss": eval_loss})
    data = iter(stage.batcher)
    t0 = time.perf_counter()
    window_t, window_tokens = t0, 0
    stop = _StopRequest(dist)

    def checkpoint() -> None:
        if dist.is_main:
            save_checkpoint(ckpt_root, step, stage.trainable_state(), optimizer, {
                "step": step, "stage": stage.name, "config": cfg.to_dict(),
                "scheduler": scheduler.state_dict(), "data": stage.batcher.state_dict(),
                "tokens": tokens_seen, "elapsed": elapsed_before + time.perf_counter() - t0,
                "global_batch": G, "world_size": dist.world_size}, cfg.keep_checkpoints)
            plot_loss_curve(out / LOG_FILE, out / CURVE_FILE, f"trimode {stage.name}")
        barrier(dist)

    try:
        while step < cfg.steps:
            batch = next(data)
            local, first = local_rows(batch, dist.rank, dist.world_size)
            prepared = [objective.prepare(mb, step, idx, "train")
                        for mb, idx in micro_batches(local, first, cfg.micro_batch)]
            count = all_reduce_sum(torch.tensor([float(sum(p.count for p in prepared))], dtype=torch.float64,
                                                device=dist.device), dist).item()
            scale = dist.world_size / max(count, 1.0)
            sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=dist.device)  # + tokens
            optimizer.zero_grad(set_to_none=True)
            for i, p in enumerate(prepared):
                with no_sync(engine, sync=i == len(prepared) - 1):
                    with autocast():
                        terms = objective.terms(engine, p)
                    (terms.numerator * scale).backward()
                sums += torch.tensor([terms.numerator.item(), p.count, *terms.stats, p.tokens], dtype=torch.float64,
                                     device=dist.device)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            step += 1
            all_reduce_sum(sums, dist)
            values = dict(zip(names, sums.tolist()))
            step_tokens = int(sums[-1].item())
            tokens_seen += step_tokens
            window_tokens += step_tokens
            now = time.perf_counter()
            loss = values["numerator"] / max(values["count"], 1.0)
            record = {"step": step, "loss": loss, **objective.summarize(values), "lr": lr,
                      "grad_norm": float(grad_norm), "tokens": tokens_seen,
                      "elapsed": elapsed_before + now - t0}
            bar.update(loss, window_tokens / max(now - window_t, 1e-9))
            logged = step % cfg.log_interval == 0 or step == cfg.steps
            if logged:
                record["tokens_per_s"] = window_tokens / max(now - window_t, 1e-9)
                log.write(record)
                history.append(record)
            if cfg.eval_batches and ((cfg.eval_interval and step % cfg.eval_interval == 0) or step == cfg.steps):
                eval_loss = evaluate()
                if eval_loss is not None:
                    log.write({"step": step, "eval_loss": eval_loss})
                    history.append({"step": step, "eval_loss": eval_loss})
                    bar.write(f"step {step}: eval_loss {eval_loss:.4f}")
            on_interval = bool(cfg.checkpoint_interval) and step % cfg.checkpoint_interval == 0
            if on_interval:
                checkpoint()
            if logged:  # the next throughput window starts after eval / checkpoint time
                window_t, window_tokens = time.perf_counter(), 0
            if on_step is not None:
                on_step(step, record)
            if stop.requested() and step < cfg.steps:
                if not on_interval:
                    checkpoint()
                info["stopped_at"] = step
                if dist.is_main:
                    print(f"stopped by {stop.signal_name} after step {step} of {cfg.steps}: checkpoint saved and "
                          f"weights exported; continue with the same command and --resume", file=sys.stderr,
                          flush=True)
                break
    finally:
        bar.close()
        stop.restore()

    if dist.is_main:
        stage.export(out)
        plot_loss_curve(out / LOG_FILE, out / CURVE_FILE, f"trimode {stage.name}")
    barrier(dist)
    info["elapsed"] = elapsed_before + time.perf_counter() - t0
    return TrainResult(out=out, step=step, history=history, eval_loss=eval_loss, info=info)


class _StopRequest:
    """Turns SIGTERM into a request to stop after the current step (main thread only: signal
    handlers cannot be installed elsewhere, and a run in a thread is stopped by its owner)."""

    def __init__(self, dist: DistInfo):
        self.dist = dist
        self.signal_name = "SIGTERM"
        self._flag = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self._flag:  # a second SIGTERM: stop now, as without the handler
            sys.exit(128 + signum)
        self._flag = True

    def requested(self) -> bool:
        """True on every rank once any rank was signalled (one all-reduce per step under DDP)."""
        if self.dist.world_size == 1:
            return self._flag
        flag = torch.tensor([float(self._flag)], dtype=torch.float64, device=self.dist.device)
        return all_reduce_sum(flag, self.dist).item() > 0

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


__all__ = ["train", "TrainResult", "Stage"]
