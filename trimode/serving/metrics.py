"""Prometheus metrics of the server (``GET /metrics``).

One :class:`Metrics` per app, on its own ``CollectorRegistry`` (several apps in
one process, e.g. tests, never collide). Label values are always from a
closed set (modes, statuses, reasons), never from request text, so a client
cannot blow up the series count.

Per request (label ``mode`` = the mode that actually ran; for requests that
never ran, the requested mode, or ``none`` when the request was invalid):
requests by status, end-to-end latency, time to first token, TPF and mean
acceptance length. Per batch: batch size and the drafted / accepted /
rolled-back token counters. Gauges: queue depth, running requests, and the
rolling acceptance auto decides on.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TPF_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0)
ACCEPTANCE_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("trimode_requests", "HTTP generation requests by mode and final status",
                                ["mode", "status"], registry=r)
        self.latency = Histogram("trimode_request_latency_seconds", "End-to-end latency of successful requests",
                                 ["mode"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("trimode_time_to_first_token_seconds", "Arrival to first committed token",
                              ["mode"], buckets=LATENCY_BUCKETS, registry=r)
        self.tpf = Histogram("trimode_tokens_per_forward", "Per-request generated tokens / forwards it took "
                             "part in", ["mode"], buckets=TPF_BUCKETS, registry=r)
        self.acceptance = Histogram("trimode_acceptance_length", "Per-request mean tokens per decode cycle "
                                    "(bonus included; AR = 1)", ["mode"], buckets=ACCEPTANCE_BUCKETS, registry=r)
        self.batch_size = Histogram("trimode_batch_size", "Requests decoded together per batched call",
                                    ["mode"], buckets=BATCH_BUCKETS, registry=r)
        self.generated = Counter("trimode_generated_tokens", "Tokens generated (all rows)", ["mode"], registry=r)
        self.forwards = Counter("trimode_forwards", "Model forwards spent on generation", ["mode"], registry=r)
        self.drafted = Counter("trimode_drafted_tokens", "Draft tokens proposed", ["mode"], registry=r)
        self.accepted = Counter("trimode_accepted_tokens", "Draft tokens accepted", ["mode"], registry=r)
        self.rolled_back = Counter("trimode_rolled_back_tokens", "Draft tokens discarded", ["mode"], registry=r)
        self.auto_decisions = Counter("trimode_auto_decisions", "Modes chosen for auto requests, by reason",
                                      ["mode", "reason"], registry=r)
        self.queue_depth = Gauge("trimode_queue_depth", "Requests waiting to be scheduled", registry=r)
        self.running = Gauge("trimode_running_requests", "Requests being decoded", registry=r)
        self.rolling_acceptance = Gauge("trimode_auto_rolling_acceptance", "Rolling mean acceptance length of "
                                        "the speculative mode auto uses (NaN until measured)", registry=r)
        self.rolling_acceptance.set(float("nan"))
        self.acceptance_floor = Gauge("trimode_auto_acceptance_floor", "Rolling acceptance below which auto "
                                      "runs AR (measured at start unless configured)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
