"""Streaming and cancellation on top of the unchanged generation loop.

``trimode.generation.loop.decode`` runs ``strategy.prefill(run)`` and then
``strategy.step(run)`` once per cycle. :class:`ObservedStrategy` wraps a mode
strategy and, around each of those calls, does what serving needs without
copying the loop:

- reports each row's newly *committed* tokens (verified drafts + bonus, a
  finished diffusion block, one AR token) through ``on_emit(row, tokens)``,
  so one speculative cycle streams as one multi-token chunk;
- stops rows cooperatively, once per cycle: a cancelled row (client gone,
  timed out) or a row past its own ``max_tokens`` is marked finished, so the
  loop's ``freeze_finished`` freezes its cache and the batch ends as soon as
  every row is finished;
- counts, per row, the forwards it took part in and its cycles, so each
  request reports its own nfe / TPF / acceptance even inside a batch.

Rows of one batch may have different ``max_tokens``: the engine runs with the
largest and each row is cut at its own limit here. For lossless modes that is
token-identical to running the row alone; block diffusion depends on the
block widths, so the scheduler only batches diffusion rows with equal limits.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..generation.loop import Request, Runner, Strategy


class ObservedStrategy:
    """A :class:`~trimode.generation.loop.Strategy` that forwards to ``inner`` and observes each cycle."""

    def __init__(self, inner: Strategy, limits: Sequence[int],
                 on_emit: Callable[[int, list[int]], None] | None = None,
                 should_stop: Callable[[int], bool] | None = None):
        self.inner = inner
        self.name = inner.name
        self.limits = list(limits)
        self.on_emit = on_emit
        self.should_stop = should_stop
        self.sent = [0] * len(self.limits)  # tokens already reported per row
        self.nfe = [0] * len(self.limits)  # forwards each row took part in
        self.cycles = [0] * len(self.limits)  # decode cycles that emitted for the row (prefill excluded)
        self.stopped = [False] * len(self.limits)  # rows ended by should_stop (not by EOS / limit)

    def scratch(self, request: Request, max_prompt: int) -> int:
        return self.inner.scratch(request, max_prompt)

    def prefill(self, run: Runner) -> None:
        self._apply_stops(run)
        if run.all_done():  # every row was cancelled before its first forward
            return
        self._observe(run, self.inner.prefill, counts_cycle=False)

    def step(self, run: Runner) -> None:
        self._apply_stops(run)
        if run.all_done():  # the loop sees all_done() and ends: the slot is free
            return
        self._observe(run, self.inner.step, counts_cycle=True)

    # ------------------------------------------------------------------ helpers
    def _observe(self, run: Runner, call: Callable[[Runner], None], counts_cycle: bool) -> None:
        active = run.active
        nfe_before = run.stats.nfe
        call(run)
        if run.tracer is not None:
            run.tracer.flush()  # the cycle's last forward is complete: its trace goes out before its tokens
        spent = run.stats.nfe - nfe_before
        for b in active:
            self.nfe[b] += spent
            new = run.generated[b][self.sent[b]: self.limits[b]]
            if new:
                self.sent[b] += len(new)
                if counts_cycle:
                    self.cycles[b] += 1
                if self.on_emit is not None:
                    self.on_emit(b, new)
            if len(run.generated[b]) >= self.limits[b]:
                run.done[b] = True  # past its own max_tokens: stop spending forwards on it
        self._apply_stops(run)

    def _apply_stops(self, run: Runner) -> None:
        if self.should_stop is None:
            return
        for b in run.active:
            if self.should_stop(b):
                run.done[b] = True
                self.stopped[b] = True

    def tokens(self, run: Runner, row: int) -> list[int]:
        """The row's committed tokens, cut at its own limit."""
        return run.generated[row][: self.limits[row]]
