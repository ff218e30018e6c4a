"""The decoding worker: a bounded queue, dynamic batching, one thread that owns the model.

Requests become :class:`Job` objects (one per prompt) and enter a bounded
FIFO queue (:meth:`Scheduler.submit` raises :class:`Overloaded` when it is
full). One worker thread runs torch, because forwards block and the model is
not meant to be driven from two threads. Whenever it is free it forms a batch:

- it first holds the batch open briefly: ``batch_wait`` for requests arriving
  together, and, after a batch of n rows, until the n follow-ups are in (on
  top of the jobs already waiting) or no new job arrived for ``refill_wait``
  (the clients just answered send their next requests within milliseconds;
  starting at once would split them into a tiny batch and a large one that
  waits a whole batch behind it);
- the oldest waiting job decides the batch's *key*; every waiting job with
  the same key joins, oldest first, up to ``max_batch_size`` (dynamic
  batching: whatever is waiting when the worker becomes free);
- ``auto`` jobs are resolved to a concrete mode once per formation by
  :class:`~trimode.serving.auto.AutoPolicy` (queue depth, rolling acceptance);
- the key holds what the batched engine call shares: the mode, block length,
  threshold and sampling parameters. Block diffusion rows also share
  ``max_tokens`` (its blocks are cut to what rows may still emit, so a row's
  output would otherwise depend on its batch-mates). Seeded sampling
  requests (temperature > 0 with ``seed``) run alone with their own
  generator, which makes them reproducible; at temperature 0 batching never
  changes a row's tokens. Unseeded sampling rows share the server generator.

Images (a vision-language model's chat requests) travel with their job and do not enter the
key: rows with and without images share a batch, whose prefill forward gets every row's images
in row order (:func:`~trimode.serving.images.batch_images`). The tower encodes each image on its
own (a block-diagonal attention mask), so an image row decodes as it would alone, like any row.

The batch runs as one ``trimode.generation.loop.decode`` call through
:class:`~trimode.serving.hooks.ObservedStrategy`, which streams each row's
committed tokens to its job and stops rows whose client left or whose
deadline passed (checked once per cycle). Jobs talk to the HTTP side only
through their ``sink`` callable, which must be thread-safe.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..generation.loop import Request, decode
from ..generation.modes import STRATEGIES
from ..generation.sampling import SamplingParams
from ..generation.trace import TraceEvent, row_view
from .auto import AutoPolicy
from .config import ServerConfig
from .hooks import ObservedStrategy
from .images import batch_images
from .metrics import Metrics

log = logging.getLogger("trimode.serving")


class Overloaded(Exception):
    """The queue is full; ``retry_after`` is a rough wait in whole seconds."""

    def __init__(self, retry_after: int, depth: int):
        super().__init__(f"the server is overloaded: {depth} requests are already waiting; retry in "
                         f"{retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class GenerationParams:
    """What one request asks of the decoder (validated by the HTTP layer)."""

    mode: str  # "auto" or a concrete mode
    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    block_length: int = 32
    threshold: float | None = 0.9
    seed: int | None = None
    trace: bool = False  # send the request one trace event per forward it took part in


@dataclass
class JobResult:
    tokens: list[int]
    finish_reason: str  # stop | length | cancelled | timeout
    mode: str
    auto_reason: str | None
    nfe: int
    cycles: int
    batch_size: int
    prefill_s: float = 0.0  # the batch's prefill forward(s), image encoding included
    decode_s: float = 0.0  # the batch's forwards after prefill


@dataclass
class JobEvent:
    """What the worker tells the HTTP side: new committed tokens, the final result, or an error."""

    index: int
    tokens: list[int] | None = None
    result: JobResult | None = None
    error: str | None = None
    trace: dict | None = None  # one forward, as this job's row saw it (generation.trace.row_view)


class Job:
    """One prompt of one request, from submission to its final event."""

    def __init__(self, prompt_ids: list[int], params: GenerationParams, sink: Callable[[JobEvent], None],
                 timeout: float, index: int = 0, images: dict | None = None):
        self.prompt_ids = prompt_ids
        self.images = images  # a VLM prompt's {"pixel_values", "image_sizes"}, or None
        self.params = params
        self.sink = sink
        self.index = index
        self.created = time.monotonic()
        self.deadline = self.created + timeout
        self.first_token_at: float | None = None
        self.mode: str | None = None  # the mode that ran (set when scheduled)
        self.auto_reason: str | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """Ask the worker to stop this job at its next cycle (or drop it if still queued)."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def expired(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) > self.deadline

    def post(self, event: JobEvent) -> None:
        try:
            self.sink(event)
        except RuntimeError:  # the request's event loop is gone (server shutting down): nobody listens
            pass


def batch_key(mode: str, job: Job) -> tuple:
    """Jobs with equal keys can share one batched decode call (see the module docstring)."""
    p = job.params
    sampling: tuple = (0.0,) if p.temperature == 0 else (p.temperature, p.top_p, p.top_k)
    if p.temperature > 0 and p.seed is not None:
        sampling += ("alone", id(job))  # its own generator: reproducible whatever else is waiting
    if mode == "ar":
        return (mode, sampling)
    if mode == "diffusion":
        return (mode, p.block_length, p.threshold, p.max_tokens, sampling)
    return (mode, p.block_length, sampling)


class Scheduler:
    REFILL_GAPS = 10  # longest refill wait, in quiet gaps (refill_wait)

    def __init__(self, model, config: ServerConfig, metrics: Metrics):
        self.model = model
        self.config = config
        self.metrics = metrics
        self.policy = AutoPolicy(config.auto)
        metrics.acceptance_floor.set(self.policy.acceptance_floor)
        self.eos_ids = frozenset(model.config.eos_token_ids)
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._paused = False
        self._stopping = False
        self._running = 0
        self._thread: threading.Thread | None = None
        self._rng: torch.Generator | None = None  # unseeded requests' generator, made beside the model on first use
        self._batch_seconds = 1.0  # running mean of a batch's wall time, for Retry-After
        self._last_batch_size = 0  # rows of the batch that finished last: follow-ups refill_wait expects
        self._arrivals = 0  # jobs submitted since that batch finished (follow-ups already in)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="trimode-decoder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            for job in self._waiting:
                job.post(JobEvent(job.index, error="the server is shutting down"))
            self._waiting.clear()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the worker between batches (maintenance, tests); requests queue meanwhile."""
        with self._cond:
            self._paused = True
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    # ------------------------------------------------------------- queueing
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    def submit(self, jobs: list[Job]) -> None:
        """Queue all of ``jobs`` (one request's prompts) or none of them."""
        with self._cond:
            if self._stopping:
                raise Overloaded(self._retry_after(), len(self._waiting))
            if len(self._waiting) + len(jobs) > self.config.max_queue:
                raise Overloaded(self._retry_after(), len(self._waiting))
            self._waiting.extend(jobs)
            self._arrivals += len(jobs)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cond.notify_all()

    def _retry_after(self) -> int:
        batches_ahead = math.ceil((len(self._waiting) + 1) / self.config.max_batch_size)
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    # --------------------------------------------------------------- worker
    def _work(self) -> None:
        torch.set_num_threads(self.config.threads)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            start = time.monotonic()
            try:
                self._run(batch)
            except Exception as e:  # an engine failure fails this batch only; the server keeps serving
                log.exception("batch of %d %s request(s) failed", len(batch), batch[0].mode)
                for job in batch:
                    job.post(JobEvent(job.index, error=f"generation failed: {type(e).__name__}: {e}"))
            finally:
                self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.monotonic() - start)
                with self._cond:
                    self._last_batch_size, self._arrivals = len(batch), 0
                    self._running = 0
                    self.metrics.running.set(0)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._stopping and (self._paused or not self._waiting):
                self._cond.wait()
            if self._stopping:
                return None
            self._hold_open()
            if self._stopping or self._paused:
                return []
            self._drop_finished()
            if not self._waiting:
                return []
            decision = None
            if any(job.params.mode == "auto" for job in self._waiting):
                decision = self.policy.decide(load=len(self._waiting))
            else:
                self.policy.observe_load(len(self._waiting))  # traffic of any mode counts as load

            def resolved(job: Job) -> str:
                return decision.mode if job.params.mode == "auto" else job.params.mode

            head = self._waiting[0]
            key = batch_key(resolved(head), head)
            batch = [job for job in self._waiting if batch_key(resolved(job), job) == key]
            batch = batch[: self.config.max_batch_size]
            for job in batch:
                self._waiting.remove(job)
                job.mode = resolved(job)
                if job.params.mode == "auto":
                    job.auto_reason = decision.reason
                    self.metrics.auto_decisions.labels(decision.mode, decision.reason).inc()
            self._running = len(batch)
            self.metrics.queue_depth.set(len(self._waiting))
            self.metrics.running.set(len(batch))
            return batch

    def _hold_open(self) -> None:
        """Wait (lock held, released while waiting) for more jobs to join: see the module docstring.

        ``batch_wait``: a fixed window, always held unless the batch fills. ``refill_wait``: a
        quiet gap; while the answered clients' follow-ups keep arriving, at most ``REFILL_GAPS``
        gaps in all. The follow-ups expected are the last batch's rows minus the jobs submitted
        since it finished, *on top of* the jobs that were already waiting: counting those as
        follow-ups would start a closed loop's batch before all its clients are back, and the
        split (say 12 + 4 of 16 clients) would repeat itself batch after batch. A follow-up
        that beat the batch's end (its row finished early) counts as already waiting, so the
        worker waits one quiet gap for it: erring that way costs ``refill_wait``, the other
        way a whole batch.
        """
        batch_wait, refill = self.config.batch_wait, self.config.refill_wait
        start = time.monotonic()
        to_come = self._last_batch_size - self._arrivals
        refilling = refill > 0 and to_come > 0
        target = min(len(self._waiting) + to_come, self.config.max_batch_size) if refilling \
            else self.config.max_batch_size
        deadline = start + max(batch_wait, self.REFILL_GAPS * refill if refilling else 0.0)
        seen, last_arrival = len(self._waiting), start
        while not self._stopping and not self._paused and len(self._waiting) < target:
            now = time.monotonic()
            if len(self._waiting) != seen:
                seen, last_arrival = len(self._waiting), now
            until = min(deadline, max(start + batch_wait, last_arrival + refill)) if refilling else deadline
            if now >= until:
                return
            self._cond.wait(until - now)

    def _drop_finished(self) -> None:
        """Jobs whose client left or whose deadline passed while queued never reach the model."""
        now = time.monotonic()
        for job in [j for j in self._waiting if j.cancelled or j.expired(now)]:
            self._waiting.remove(job)
            reason = "cancelled" if job.cancelled else "timeout"
            job.post(JobEvent(job.index, result=JobResult([], reason, job.params.mode, None, 0, 0, 0)))

    def _run(self, batch: list[Job]) -> None:
        mode, p = batch[0].mode, batch[0].params
        limits = [job.params.max_tokens for job in batch]
        seeded = p.temperature > 0 and p.seed is not None
        device = next(self.model.parameters()).device  # sampling generators live beside the model
        if self._rng is None:
            self._rng = torch.Generator(device=device).manual_seed(self.config.seed)
        request = Request(
            max_new_tokens=max(limits),
            eos_token_ids=self.eos_ids,
            sampling=SamplingParams(p.temperature, p.top_k, p.top_p).validate(),
            generator=torch.Generator(device=device).manual_seed(p.seed) if seeded else self._rng,
            block_length=1 if mode == "ar" else p.block_length,
            threshold=p.threshold if mode == "diffusion" else None,
        )

        def on_emit(row: int, tokens: list[int]) -> None:
            job = batch[row]
            if job.first_token_at is None:
                job.first_token_at = time.monotonic()
                self.metrics.ttft.labels(mode).observe(job.first_token_at - job.created)
            job.post(JobEvent(job.index, tokens=tokens))

        def should_stop(row: int) -> bool:
            return batch[row].cancelled or batch[row].expired()

        observer = ObservedStrategy(STRATEGIES[mode](), limits, on_emit, should_stop)
        traced = [job for job in batch if job.params.trace]
        on_trace = None
        if traced:
            def on_trace(event: TraceEvent) -> None:
                for entry in event.rows:
                    job = batch[entry.row]
                    if job.params.trace:
                        job.post(JobEvent(job.index, trace=row_view(event, entry, job.index)))
        images = batch_images([job.images for job in batch], device)
        run = decode(self.model, [job.prompt_ids for job in batch], observer, request, trace=on_trace,
                     prefill_inputs=images)

        stats, m = run.stats, self.metrics
        m.batch_size.labels(mode).observe(len(batch))
        m.forwards.labels(mode).inc(stats.nfe)
        m.drafted.labels(mode).inc(stats.drafted)
        m.accepted.labels(mode).inc(stats.accepted)
        m.rolled_back.labels(mode).inc(stats.rolled_back)
        self.policy.observe(mode, stats.acceptance_lengths)
        rolling = self.policy.rolling_acceptance
        m.rolling_acceptance.set(float("nan") if rolling is None else rolling)
        for row, job in enumerate(batch):
            tokens = observer.tokens(run, row)
            m.generated.labels(mode).inc(len(tokens))
            if observer.stopped[row]:
                reason = "cancelled" if job.cancelled else "timeout"
            else:
                reason = "stop" if tokens and tokens[-1] in self.eos_ids else "length"
            job.post(JobEvent(job.index, result=JobResult(
                tokens=tokens, finish_reason=reason, mode=mode, auto_reason=job.auto_reason,
                nfe=observer.nfe[row], cycles=observer.cycles[row], batch_size=len(batch),
                prefill_s=stats.prefill_time, decode_s=stats.decode_time)))


__all__ = ["Scheduler", "Job", "JobEvent", "JobResult", "GenerationParams", "Overloaded", "batch_key"]
