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
the ``* world_size`` undoes. Only float summation order differs. FSDP2 (``parallel=fsdp``,
see :mod:`trimode.training.distributed`) averages the same way in its reduce-scatter, so
the same normalisation holds; clipping takes the norm of the whole (sharded) gradient.

Exact resume: model (trainable) weights, AdamW state, lr-schedule step and data-iterator
position are checkpointed (see :mod:`trimode.training.checkpoint`; sharded under FSDP2); nothing
else carries state, so a resumed run reproduces the uninterrupted one bit for bit on the same machine.
The model directory written at the end is the same under every ``parallel`` setting (FSDP2: the
shards are gathered into one state dict, rank 0 writes it).

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

from .checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_sharded_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from .config import TrainConfig
from .data import global_batch_size, local_rows, micro_batches
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    clip_grad_norm,
    full_state_dict,
    no_sync,
    setup,
    teardown,
    wrap,
)
from .logs import CURVE_FILE, LOG_FILE, JsonlLog, Progress, plot_loss_curve, show_progress
from .optim import build_optimizer, build_scheduler
from .stages import Stage, build_stage

CONFIG_FILE = "train_config.json"
CHECKPOINT_DIR = "checkpoints"
# Settings a resumed run may change: they do not change the trained weights.
RESUMABLE_CHANGES = {"device", "progress", "log_interval", "checkpoint_interval", "keep_checkpoints",
                     "micro_batch", "grad_accum", "eval_interval", "eval_batches", "activation_checkpointing"}


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
    dist = setup(cfg.device, cfg.parallel)
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
    """Set up the run (from a checkpoint when resuming), train, and export the model directory."""
    G = global_batch_size(cfg, dist.world_size)
    start = _resume_point(cfg, dist, out, resume, G)
    run = _Run(cfg, dist, out, build_stage(cfg, dist, out, init, tokenizer_dir, resume), G)
    if start is not None:
        run.restore(start)
    run.begin(resume)
    run.loop(on_step)
    return run.finish()


def _resume_point(cfg: TrainConfig, dist: DistInfo, out: Path, resume: bool, G: int) -> Path | None:
    """The checkpoint to resume from (None: a fresh run), once ``out`` is known to suit the request; creates ``out``."""
    ckpt_root = out / CHECKPOINT_DIR
    start = None
    if resume:
        start = latest_checkpoint(ckpt_root)
        if start is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_root}")
        _check_resume(cfg, json.loads((start / "state.json").read_text()), G, start)
    elif list_checkpoints(ckpt_root):  # a fresh run would mix its checkpoints with another run's
        raise ValueError(f"{out} already holds checkpoints of a run: pass --resume to continue it, or choose "
                         "another --out")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(dist)
    return start


class _Run:
    """One run of the loop: the stage, optimizer and counters, and the steps of the loop as methods."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo, out: Path, stage: Stage, G: int):
        self.cfg, self.dist, self.out, self.stage, self.G = cfg, dist, out, stage, G
        # DDP under torchrun, or the model sharded in place (FSDP2): training forwards go through it.
        self.engine = wrap(stage.model, dist, cfg.activation_checkpointing, bf16=cfg.precision == "bf16")
        self.param_names = [n for n, _ in stage.trainable()]  # after sharding: FSDP2 keeps the names
        self.params = [p for _, p in stage.trainable()]
        self.optimizer = build_optimizer(stage.trainable(), cfg, dist.device, stage.lr_scale)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.autocast = (lambda: torch.autocast(dist.device.type, dtype=torch.bfloat16)) \
            if cfg.precision == "bf16" else nullcontext
        self.names = ("numerator", "count", *stage.objective.stat_names)  # the sums a step all-reduces
        self.step, self.tokens_seen, self.elapsed_before = 0, 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.eval_cache: list | None = None
        self.eval_loss: float | None = None

    def restore(self, path: Path) -> None:
        """Continue from checkpoint ``path``: trainable weights, AdamW state, lr schedule, data position, counters."""
        if self.dist.sharded:
            state = load_sharded_checkpoint(path, self.engine, self.optimizer, self.param_names)
        else:
            weights, state = load_checkpoint(path, self.optimizer)
            self.stage.load_trainable_state(weights)
        self.scheduler.load_state_dict(state["scheduler"])
        self.stage.batcher.load_state_dict(state["data"])
        self.step, self.tokens_seen, self.elapsed_before = state["step"], state["tokens"], state["elapsed"]

    def begin(self, resume: bool) -> None:
        """Record the run's facts, write ``train_config.json``, open the JSONL log and the progress bar."""
        cfg, dist, stage = self.cfg, self.dist, self.stage
        self.info = {**stage.info, "stage": stage.name, "rank": dist.rank, "world_size": dist.world_size,
                     "global_batch": self.G, "device": str(dist.device), "start_step": self.step,
                     "parameters": sum(p.numel() for p in stage.model.parameters()),
                     "trainable_parameters": sum(p.numel() for p in self.params)}
        if dist.is_main:
            (self.out / CONFIG_FILE).write_text(cfg.to_json())
        # On resume the log keeps the lines up to the checkpoint's step: it reads like one run.
        self.log = JsonlLog(self.out / LOG_FILE, dist.is_main, self.step if resume else None)
        self.bar = Progress(cfg.steps, self.step, f"train {stage.name}", dist.is_main and show_progress(cfg.progress))

    def loop(self, on_step: Callable[[int, dict[str, Any]], None] | None) -> None:
        """Train up to ``cfg.steps`` (or a stop request), evaluating and checkpointing on their intervals."""
        cfg = self.cfg
        if cfg.eval_batches and self.step == 0 and cfg.eval_interval:  # the starting point of the eval curve
            self.log_eval(announce=False)
        data = iter(self.stage.batcher)
        self.t0 = self.window_t = time.perf_counter()
        self.window_tokens = 0
        stop = _StopRequest(self.dist)
        try:
            while self.step < cfg.steps:
                record, logged = self.log_step(*self.train_step(next(data)))
                if cfg.eval_batches and ((cfg.eval_interval and self.step % cfg.eval_interval == 0)
                                         or self.step == cfg.steps):
                    self.log_eval(announce=True)
                on_interval = bool(cfg.checkpoint_interval) and self.step % cfg.checkpoint_interval == 0
                if on_interval:
                    self.checkpoint()
                if logged:  # the next throughput window starts after eval / checkpoint time
                    self.window_t, self.window_tokens = time.perf_counter(), 0
                if on_step is not None:
                    on_step(self.step, record)
                if stop.requested() and self.step < cfg.steps:
                    self.stop_early(stop.signal_name, checkpointed=on_interval)
                    break
        finally:
            self.bar.close()
            stop.restore()

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step on a global batch; returns the step's sums over all ranks, grad norm and lr."""
        cfg, dist, objective = self.cfg, self.dist, self.stage.objective
        local, first = local_rows(batch, dist.rank, dist.world_size)
        # Random draws depend on (step, global index of the row): any split into ranks and micro-batches
        # draws the same masks.
        prepared = [objective.prepare(mb, self.step, idx, "train")
                    for mb, idx in micro_batches(local, first, cfg.micro_batch)]
        # Normalise by the *global* count, so each rank's gradient is its share of one global sum; DDP
        # averages over ranks, which `* world_size` undoes.
        count = all_reduce_sum(torch.tensor([float(sum(p.count for p in prepared))], dtype=torch.float64,
                                            device=dist.device), dist).item()
        scale = dist.world_size / max(count, 1.0)
        sums = torch.zeros(len(self.names) + 1, dtype=torch.float64, device=dist.device)  # + tokens
        self.optimizer.zero_grad(set_to_none=True)
        for i, p in enumerate(prepared):
            with no_sync(self.engine, sync=i == len(prepared) - 1):  # gradients sync once, on the last
                with self.autocast():
                    terms = objective.terms(self.engine, p)
                (terms.numerator * scale).backward()
            sums += torch.tensor([terms.numerator.item(), p.count, *terms.stats, p.tokens], dtype=torch.float64,
                                 device=dist.device)
        grad_norm = clip_grad_norm(self.params, cfg.grad_clip)
        lr = self.scheduler.get_last_lr()[0]  # the lr this step used
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        all_reduce_sum(sums, dist)
        return sums, grad_norm, lr

    def log_step(self, sums: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> tuple[dict[str, Any], bool]:
        """The step's record (loss, components, lr, tokens, ...), shown on the bar and written on the log interval;
        returns it and whether it was written."""
        values = dict(zip(self.names, sums.tolist()))
        step_tokens = int(sums[-1].item())
        self.tokens_seen += step_tokens
        self.window_tokens += step_tokens
        now = time.perf_counter()
        loss = values["numerator"] / max(values["count"], 1.0)
        record = {"step": self.step, "loss": loss, **self.stage.objective.summarize(values), "lr": lr,
                  "grad_norm": float(grad_norm), "tokens": self.tokens_seen,
                  "elapsed": self.elapsed_before + now - self.t0}
        self.bar.update(loss, self.window_tokens / max(now - self.window_t, 1e-9))
        logged = self.step % self.cfg.log_interval == 0 or self.step == self.cfg.steps
        if logged:
            record["tokens_per_s"] = self.window_tokens / max(now - self.window_t, 1e-9)
            self.log.write(record)
            self.history.append(record)
        return record, logged

    def evaluate(self) -> float | None:
        """Loss on the fixed held-out batches (None without any); the same draws every time, so evaluations compare."""
        cfg, dist, stage, objective = self.cfg, self.dist, self.stage, self.stage.objective
        if cfg.eval_batches == 0:
            return None
        if self.eval_cache is None:
            self.eval_cache = stage.eval_source()
        if not self.eval_cache:
            return None
        sums = torch.zeros(len(self.names), dtype=torch.float64, device=dist.device)
        with torch.no_grad():
            for batch in self.eval_cache:
                local, first = local_rows(batch, dist.rank, dist.world_size)
                for mb, idx in micro_batches(local, first, cfg.micro_batch):
                    p = objective.prepare(mb, 0, idx, "eval")  # fixed draws: evaluations compare
                    with self.autocast():
                        t = objective.terms(stage.model, p)
                    sums += torch.tensor([t.numerator.item(), p.count, *t.stats], dtype=torch.float64,
                                         device=dist.device)
        all_reduce_sum(sums, dist)
        return sums[0].item() / max(sums[1].item(), 1.0)

    def log_eval(self, announce: bool) -> None:
        """Evaluate and log the eval loss at this step (announce: also print it above the progress bar)."""
        self.eval_loss = self.evaluate()
        if self.eval_loss is not None:
            self.log.write({"step": self.step, "eval_loss": self.eval_loss})
            self.history.append({"step": self.step, "eval_loss": self.eval_loss})
            if announce:
                self.bar.write(f"step {self.step}: eval_loss {self.eval_loss:.4f}")

    def checkpoint(self) -> None:
        """Save everything an exact resume needs (rank 0; sharded: every rank its shards) and redraw the
        loss curve; all ranks wait for it."""
        root, keep = self.out / CHECKPOINT_DIR, self.cfg.keep_checkpoints
        state = {"step": self.step, "stage": self.stage.name, "config": self.cfg.to_dict(),
                 "scheduler": self.scheduler.state_dict(), "data": self.stage.batcher.state_dict(),
                 "tokens": self.tokens_seen, "elapsed": self.elapsed_before + time.perf_counter() - self.t0,
                 "global_batch": self.G, "world_size": self.dist.world_size}
        if self.dist.sharded:
            save_sharded_checkpoint(root, self.step, self.engine, self.optimizer, self.param_names, state, keep,
                                    self.dist)
        elif self.dist.is_main:
            save_checkpoint(root, self.step, self.stage.trainable_state(), self.optimizer, state, keep)
        if self.dist.is_main:
            plot_loss_curve(self.out / LOG_FILE, self.out / CURVE_FILE, f"trimode {self.stage.name}")
        barrier(self.dist)

    def stop_early(self, signal_name: str, checkpointed: bool) -> None:
        """After a stop request: a checkpoint of this step (unless the interval just wrote one), and how to go on."""
        if not checkpointed:
            self.checkpoint()
        self.info["stopped_at"] = self.step
        if self.dist.is_main:
            print(f"stopped by {signal_name} after step {self.step} of {self.cfg.steps}: checkpoint saved and "
                  f"weights exported; continue with the same command and --resume", file=sys.stderr, flush=True)

    def finish(self) -> TrainResult:
        """Export the model directory and the final loss curve (rank 0); the result of the run."""
        whole = full_state_dict(self.engine, self.dist)  # FSDP2: every rank takes part in the gather
        if self.dist.is_main:
            self.stage.export(self.out, whole)
            plot_loss_curve(self.out / LOG_FILE, self.out / CURVE_FILE, f"trimode {self.stage.name}")
        barrier(self.dist)
        self.info["elapsed"] = self.elapsed_before + time.perf_counter() - self.t0
        return TrainResult(out=self.out, step=self.step, history=self.history, eval_loss=self.eval_loss,
                           info=self.info)


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
