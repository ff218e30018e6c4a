"""``mode: "auto"``: pick self-speculation or AR per batch, from load and measured acceptance.

The rule: speculate at low concurrency, fall back to AR when traffic is high
(batched AR amortises each forward over many rows) or when drafts stop being
accepted (speculation then spends forwards for nothing).

:class:`AutoPolicy` is decided once per batch formation by the worker thread:

1. load (requests waiting, the batch being formed included) above
   ``max_load_for_spec`` -> AR (reason ``queue_depth``), and for ``load_cooldown``
   seconds after that -> AR (``recent_load``): the first request of a burst sees a
   short queue, and a speculative batch started then would hold the burst behind it;
2. rolling mean acceptance length of the speculative mode under
   ``acceptance_floor`` (the server measures it at start as the break-even with AR
   on its machine; :data:`UNMEASURED_FLOOR` without one) -> AR (``low_acceptance``), except a periodic
   ``probe`` that speculates so the rolling value keeps tracking the traffic.
   Probes start every ``probe_every`` such decisions and back off (the
   interval doubles up to ``max_probe_every``) while acceptance stays low, so
   a model whose drafts are never accepted costs auto almost nothing;
3. otherwise the speculative mode (``low_load``).

Acceptance is fed from every run of the speculative mode, auto or explicit.
Thread-safety: only the worker thread calls :meth:`decide` and :meth:`observe`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from .config import AutoModeConfig


@dataclass(frozen=True)
class AutoDecision:
    mode: str
    reason: str  # low_load | queue_depth | recent_load | low_acceptance | probe


# The floor when none was measured (a policy built without a model): linear speculation spends
# 2 forwards per cycle, so below 2 tokens per cycle it loses to AR even where forwards of any
# width cost the same.
UNMEASURED_FLOOR = 2.0


class AutoPolicy:
    def __init__(self, config: AutoModeConfig):
        self.config = config.validate()
        self.acceptance_floor = UNMEASURED_FLOOR if config.acceptance_floor is None else config.acceptance_floor
        self._acceptance: deque[int] = deque(maxlen=config.window)  # tokens per verification cycle
        self._since_probe = 0  # low-acceptance decisions since the last probe
        self._probe_interval = config.probe_every
        self._last_high_load: float | None = None  # monotonic time of the last queue_depth decision

    @property
    def rolling_acceptance(self) -> float | None:
        """Mean tokens per verification cycle over the window, or None before ``min_samples`` cycles."""
        if len(self._acceptance) < self.config.min_samples:
            return None
        return sum(self._acceptance) / len(self._acceptance)

    def observe_load(self, load: int, now: float | None = None) -> None:
        """Record the queue depth at a batch formation (every batch, auto or not: load is global)."""
        if load > self.config.max_load_for_spec:
            self._last_high_load = time.monotonic() if now is None else now

    def decide(self, load: int, now: float | None = None) -> AutoDecision:
        """The mode for auto requests in the batch being formed while ``load`` requests wait.

        ``now``: a ``time.monotonic()`` reading (injectable for tests).
        """
        cfg = self.config
        now = time.monotonic() if now is None else now
        self.observe_load(load, now)
        if load > cfg.max_load_for_spec:
            return AutoDecision("ar", "queue_depth")
        if self._last_high_load is not None and now - self._last_high_load < cfg.load_cooldown:
            return AutoDecision("ar", "recent_load")
        acceptance = self.rolling_acceptance
        if acceptance is not None and acceptance < self.acceptance_floor:
            self._since_probe += 1
            if self._since_probe >= self._probe_interval:
                self._since_probe = 0
                self._probe_interval = min(2 * self._probe_interval, cfg.max_probe_every)
                return AutoDecision(cfg.spec_mode, "probe")
            return AutoDecision("ar", "low_acceptance")
        self._since_probe, self._probe_interval = 0, cfg.probe_every  # acceptance is fine: reset the backoff
        return AutoDecision(cfg.spec_mode, "low_load")

    def observe(self, mode: str, acceptance_lengths: Iterable[int]) -> None:
        """Record the verification cycles of a finished run (ignored unless it ran the speculative mode)."""
        if mode == self.config.spec_mode:
            self._acceptance.extend(acceptance_lengths)
