"""The serving building blocks without HTTP: text assembly, the auto policy, the engine hook, batching keys,
configuration, and the ``trimode serve`` command (including one real subprocess)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest
import torch

from trimode.cli import build_parser, main
from trimode.commands.serve import config_from_args
from trimode.generation.loop import Request, decode
from trimode.generation.modes import STRATEGIES
from trimode.generation.sampling import SamplingParams
from trimode.loading import load
from trimode.serving.auto import AutoPolicy
from trimode.serving.config import AutoModeConfig, ServerConfig
from trimode.serving.hooks import ObservedStrategy
from trimode.serving.scheduler import GenerationParams, Job, batch_key
from trimode.serving.text import TextAssembler


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    # One torch thread, like the test servers: the tiny model gains nothing from more, and OpenMP
    # threads that spin on cores other processes hold slow every engine call.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load(tiny_model_dir)
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- text
def test_incremental_text_equals_whole_decode(loaded):
    tok = loaded.tokenizer
    text = "héllo wörld 你好, мир! ✓ done"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assembler = TextAssembler(tok)
    pieces = [assembler.push([t]) for t in ids] + [assembler.finish()]
    assert "".join(pieces) == text == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)  # a split character is held until it is whole


def test_stop_string_is_never_shown_even_in_part(loaded):
    tok = loaded.tokenizer
    ids = tok("hello world, hello moon", add_special_tokens=False)["input_ids"]
    assembler = TextAssembler(tok, stop=["o w", "zzz"])
    shown = ""
    for t in ids:
        shown += assembler.push([t])
        assert "o w" not in shown and not shown.endswith("o ")
    shown += assembler.finish()
    assert shown == "hell" and assembler.stopped


def test_text_without_stop_is_all_released_at_finish(loaded):
    tok = loaded.tokenizer
    ids = tok("abc ab", add_special_tokens=False)["input_ids"]
    assembler = TextAssembler(tok, stop=["abx"])
    shown = "".join(assembler.push([t]) for t in ids) + assembler.finish()
    assert shown == "abc ab" and not assembler.stopped


# ----------------------------------------------------------------------------------------------- auto
def test_auto_speculates_at_low_load_and_falls_back_when_the_queue_is_deep():
    policy = AutoPolicy(AutoModeConfig(max_load_for_spec=2))
    assert policy.decide(load=1).mode == "linear-spec" and policy.decide(load=2).reason == "low_load"
    decision = policy.decide(load=3)
    assert (decision.mode, decision.reason) == ("ar", "queue_depth")


def test_auto_remembers_recent_load_for_the_cooldown():
    """The first request of a burst sees a short queue: auto must not start a slow speculative
    batch right after the queue was deep (it would hold the burst behind it)."""
    policy = AutoPolicy(AutoModeConfig(max_load_for_spec=1, load_cooldown=2.0))
    assert policy.decide(load=1, now=100.0).reason == "low_load"
    assert policy.decide(load=5, now=101.0).reason == "queue_depth"
    decision = policy.decide(load=1, now=102.5)
    assert (decision.mode, decision.reason) == ("ar", "recent_load")
    assert policy.decide(load=1, now=103.1).reason == "low_load"  # cooldown over: speculate again
    # Load of requests in other modes counts too (the scheduler reports every batch formation).
    policy.observe_load(7, now=200.0)
    assert policy.decide(load=1, now=201.0).reason == "recent_load"
    no_memory = AutoPolicy(AutoModeConfig(load_cooldown=0.0))
    no_memory.decide(load=5, now=0.0)
    assert no_memory.decide(load=1, now=0.0).reason == "low_load"


def test_auto_falls_back_on_low_acceptance_and_keeps_probing():
    policy = AutoPolicy(AutoModeConfig(acceptance_floor=2.0, window=8, min_samples=4, probe_every=3,
                                       max_probe_every=6))
    policy.observe("linear-spec", [1, 1, 1])  # fewer than min_samples: not trusted yet
    assert policy.rolling_acceptance is None and policy.decide(1).mode == "linear-spec"
    policy.observe("ar", [1] * 10)  # other modes never feed the rolling acceptance
    assert policy.rolling_acceptance is None
    policy.observe("linear-spec", [1])
    assert policy.rolling_acceptance == 1.0
    reasons = [policy.decide(1).reason for _ in range(15)]
    low, probe = "low_acceptance", "probe"
    # the probe interval doubles while acceptance stays low (3, 6, then capped at 6)
    assert reasons == [low] * 2 + [probe] + [low] * 5 + [probe] + [low] * 5 + [probe]
    policy.observe("linear-spec", [4] * 8)  # the window forgets the bad stretch
    assert policy.rolling_acceptance == 4.0 and policy.decide(1).reason == "low_load"
    policy.observe("linear-spec", [1] * 8)  # low again: probing restarts at the short interval
    assert [policy.decide(1).reason for _ in range(3)] == [low, low, probe]


def test_auto_visible_in_responses_and_metrics(server):
    """The shared server's random model rejects drafts: after a few requests auto runs AR for acceptance."""
    body = {"model": "tiny", "prompt": "def add", "max_tokens": 12, "mode": "auto"}
    reasons = [httpx.post(server.url + "/v1/completions", json=body, timeout=30).json()["usage"]["auto_reason"]
               for _ in range(6)]
    assert "low_acceptance" in reasons, reasons
    assert server.metric("trimode_auto_decisions_total", mode="ar", reason="low_acceptance") >= 1
    assert server.metric("trimode_auto_rolling_acceptance") < 2.0


def test_auto_floor_is_measured_at_start_unless_configured(server, fixed_floor_server):
    # the shared server left the floor unset: it measured where linear-spec breaks even with AR
    floor = server.server.scheduler.policy.acceptance_floor
    assert server.server.config.auto.acceptance_floor == floor and 1.0 < floor < 100
    assert server.metric("trimode_auto_acceptance_floor") == floor
    assert fixed_floor_server.server.scheduler.policy.acceptance_floor == 3.25
    assert fixed_floor_server.metric("trimode_auto_acceptance_floor") == 3.25
    # without a server (no model to measure), the policy falls back to linear-spec's flat-cost floor
    assert AutoPolicy(AutoModeConfig()).acceptance_floor == 2.0


def test_auto_speculates_when_drafts_are_accepted(make_server, accepting_model_dir):
    # The floor is pinned: measured at start (the default), it follows the machine's load, and a
    # busy machine can put it above what this model accepts. This test is about the policy.
    server = make_server(accepting_model_dir, auto=AutoModeConfig(acceptance_floor=2.0))
    body = {"model": "tiny", "prompt": "x", "max_tokens": 12, "mode": "auto"}
    for _ in range(3):
        usage = httpx.post(server.url + "/v1/completions", json=body, timeout=30).json()["usage"]
        assert (usage["mode"], usage["auto_reason"]) == ("linear-spec", "low_load")
    assert usage["tpf"] > 1.5


# ---------------------------------------------------------------------------------------------- hooks
def run_observed(model, prompts, limits, mode="linear-spec", stop_row=None):
    emitted = [[] for _ in prompts]

    def on_emit(row, tokens):
        emitted[row].extend(tokens)

    def should_stop(row):
        return row == stop_row and len(emitted[row]) > 0

    request = Request(max_new_tokens=max(limits), eos_token_ids=frozenset(model.config.eos_token_ids),
                      sampling=SamplingParams(), generator=None, block_length=1 if mode == "ar" else 4)
    observer = ObservedStrategy(STRATEGIES[mode](), limits, on_emit, should_stop)
    run = decode(model, prompts, observer, request)
    return observer, run, emitted


@pytest.mark.parametrize("mode", ["ar", "linear-spec", "quadratic-spec"])
def test_observed_batch_rows_equal_rows_alone(loaded, mode):
    model = loaded.model
    prompts = [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34, 35], [40]]
    limits = [5, 17, 9, 12]
    observer, run, emitted = run_observed(model, prompts, limits, mode)
    for row, (prompt, limit) in enumerate(zip(prompts, limits)):
        out, _ = model.decode_mode(mode, [prompt], max_new_tokens=limit)
        alone = out[0, len(prompt):].tolist()  # one row: no padding
        assert observer.tokens(run, row) == emitted[row] == alone
        assert len(emitted[row]) <= limit
        assert 1 <= observer.nfe[row] <= run.stats.nfe


def test_observed_stop_ends_one_row_only(loaded):
    model = loaded.model
    prompts = [[10, 11, 12], [20, 21]]
    _, full_run, full = run_observed(model, prompts, [30, 30], "ar")
    observer, run, emitted = run_observed(model, prompts, [30, 30], "ar", stop_row=1)
    assert observer.stopped == [False, True]
    assert len(emitted[1]) == 1 and emitted[1] == full[1][:1]  # stopped right after its first token
    assert emitted[0] == full[0]  # the other row is untouched


def test_stop_before_prefill_runs_no_forward(loaded):
    request = Request(max_new_tokens=5, eos_token_ids=frozenset([2]), sampling=SamplingParams(), generator=None)
    observer = ObservedStrategy(STRATEGIES["ar"](), [5], should_stop=lambda row: True)
    run = decode(loaded.model, [[10, 11]], observer, request)
    assert run.stats.nfe == 0 and observer.tokens(run, 0) == [] and observer.stopped == [True]


# -------------------------------------------------------------------------------------------- batching
def job(**params) -> Job:
    base = dict(mode="ar", max_tokens=8)
    base.update(params)
    return Job([5], GenerationParams(**base), sink=lambda e: None, timeout=10)


def test_batch_keys():
    assert batch_key("ar", job(block_length=3)) == batch_key("ar", job(block_length=5, max_tokens=3))
    assert batch_key("linear-spec", job(max_tokens=3)) == batch_key("linear-spec", job(max_tokens=9))
    assert batch_key("linear-spec", job(block_length=3)) != batch_key("linear-spec", job(block_length=4))
    # diffusion blocks depend on what a row may still emit: only equal max_tokens share a batch
    assert batch_key("diffusion", job(max_tokens=3)) != batch_key("diffusion", job(max_tokens=9))
    assert batch_key("ar", job(temperature=0.7)) != batch_key("ar", job())
    a, b = job(temperature=0.7, seed=1), job(temperature=0.7, seed=1)
    assert batch_key("ar", a) != batch_key("ar", b)  # seeded sampling runs alone: reproducible
    assert batch_key("ar", job(temperature=0.0, seed=1)) == batch_key("ar", job(seed=2))


class _ConfigOnly:
    """What Scheduler needs of a model before its worker starts: the config's EOS ids."""

    class config:
        eos_token_ids = [2]


class _Waves:
    """The scheduler's condition variable while one batch forms, with the test deciding when jobs
    arrive instead of a clock: each wait of the worker is answered by the next wave of jobs,
    submitted as a client would (the lock is reentrant) and ending the wait as that submission's
    notify would. A wait with no wave left is a real one, which can only run out: nobody else
    submits. So the waits record why the batch started: every wait ended by an arrival, or one
    ran out."""

    def __init__(self, sched, waves: list[int]):
        self.sched, self.cond, self.waves = sched, sched._cond, list(waves)
        self.waits: list[float | None] = []  # the timeout of each wait, in order
        self.ran_out = 0  # waits that ended because their time was up

    def __enter__(self):
        return self.cond.__enter__()

    def __exit__(self, *exc):
        return self.cond.__exit__(*exc)

    def notify_all(self) -> None:
        self.cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if self.waves:
            self.sched.submit([job() for _ in range(self.waves.pop(0))])
            return True
        assert timeout is not None, "the worker would wait forever for jobs nobody sends"
        if self.cond.wait(timeout):
            return True
        self.ran_out += 1
        return False


@dataclass
class _Formation:
    size: int  # jobs in the batch
    waits: list  # timeouts of the worker's waits
    ran_out: int  # waits that ran out
    took: float  # seconds (real time)


def _formation(refill_wait: float, last_batch: int, waves: list[int], batch_wait: float = 0.0,
               waiting: int = 0, returned: int = 1) -> _Formation:
    """Form one batch just after a batch of ``last_batch`` rows finished.

    ``waiting`` jobs arrived while that batch ran, ``returned`` of its clients are already back,
    and each n of ``waves`` arrives during the worker's next wait (see :class:`_Waves`)."""
    from trimode.serving.metrics import Metrics
    from trimode.serving.scheduler import Scheduler

    config = ServerConfig(refill_wait=refill_wait, batch_wait=batch_wait).validate()
    sched = Scheduler(_ConfigOnly(), config, Metrics())
    sched.submit([job() for _ in range(waiting)])
    sched._last_batch_size, sched._arrivals = last_batch, 0  # the batch finished (as _work records it)
    sched.submit([job() for _ in range(returned)])
    sched._cond = arrivals = _Waves(sched, waves)
    start = time.monotonic()
    batch = sched._next_batch()
    return _Formation(len(batch), arrivals.waits, arrivals.ran_out, time.monotonic() - start)


def test_refill_wait_lets_returning_clients_share_the_batch():
    # after a batch of 4, the worker waits for its 3 clients still out, and starts once they are in
    f = _formation(refill_wait=5.0, last_batch=4, waves=[3])
    assert f.size == 4 and len(f.waits) == 1 and f.ran_out == 0
    # ... and never when the last batch was a single row (a lone client is served at once)
    f = _formation(refill_wait=5.0, last_batch=1, waves=[3])
    assert f.size == 1 and f.waits == []
    # nobody comes back: the worker starts after one quiet gap, not the 10-gap cap
    f = _formation(refill_wait=0.3, last_batch=4, waves=[])
    assert f.size == 1 and f.ran_out >= 1 and max(f.waits) <= 0.3 and f.took >= 0.29
    # a quiet gap never cuts batch_wait short
    f = _formation(refill_wait=0.01, last_batch=4, waves=[], batch_wait=0.3)
    assert f.size == 1 and f.took >= 0.29
    # refill_wait=0: no waiting for follow-ups, the batch is whatever waits right now
    f = _formation(refill_wait=0.0, last_batch=4, waves=[3])
    assert f.size == 1 and f.waits == []


def test_refill_waits_for_follow_ups_on_top_of_jobs_already_waiting():
    """16 closed-loop clients split 12 + 4: while the 12 ran, the 4 came back and wait. The
    12 follow-ups come in two waves; the batch must take all 16, not start at 12 waiting, and
    start as soon as the 16th is in: it waits for each wave, and no wait runs out."""
    f = _formation(refill_wait=5.0, last_batch=12, waves=[8, 4], waiting=4, returned=0)
    assert f.size == 16
    assert len(f.waits) == 2 and f.ran_out == 0, f"waits {f.waits}, {f.ran_out} of them ran out"


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs,needle", [
    (dict(mode="fast"), "mode='fast'"), (dict(port=70000), "port=70000"), (dict(max_batch_size=0), "max_batch_size"),
    (dict(threshold=1.5), "threshold=1.5"), (dict(request_timeout=0), "request_timeout"),
    (dict(refill_wait=-1), "refill_wait=-1"),
    (dict(block_length=100, max_block_length=64), "block_length=100"),
    (dict(auto=dict(spec_mode="ar")), "spec_mode='ar'"),
    (dict(auto=dict(window=4, min_samples=8)), "min_samples=8"),
])
def test_config_errors_name_the_field(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        ServerConfig(**kwargs).validate()


def test_cli_flags_map_onto_the_config():
    args = build_parser().parse_args(["serve", "--model", "/m", "--mode", "ar", "--port", "0", "--threshold", "none",
                                      "--max-batch-size", "4", "--auto-max-load", "0", "--auto-spec-mode",
                                      "quadratic-spec", "--refill-wait", "0.02"])
    config = config_from_args(args)
    assert (config.model, config.mode, config.port, config.threshold, config.max_batch_size) == \
        ("/m", "ar", 0, None, 4)
    assert (config.auto.max_load_for_spec, config.auto.spec_mode) == (0, "quadratic-spec")
    assert config.refill_wait == 0.02
    assert config_from_args(build_parser().parse_args(["serve"])).threshold == "model"


def test_cli_bad_input_is_one_line(capsys, tmp_path):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimode serve: error: no model at") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["serve", "--mode", "turbo"])
    assert "invalid choice: 'turbo'" in capsys.readouterr().err


def test_trimode_serve_subprocess(tiny_model_dir):
    """The real command: start, answer, stop on SIGINT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trimode.cli", "serve", "--model", str(tiny_model_dir),
                             "--port", str(port), "--threads", "1", "--log-level", "warning",
                             "--served-model-name", "cli-tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "trimode serve did not come up"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        r = httpx.post(url + "/v1/completions", json={"model": "cli-tiny", "prompt": "hi", "max_tokens": 3,
                                                      "mode": "quadratic-spec"}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["mode"] == "quadratic-spec"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode in (0, 130), proc.stderr.read().decode()
