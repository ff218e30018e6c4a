"""Auto block length: the decision with injected costs and profiles is hand-checkable; the engine wiring works.

Injected cost (GPU-unlike, CPU-like): c(k) = 1 + 0.25 (k - 1) for write and peek forwards.
Linear self-speculation, cost per cycle 2 c(B) (B = 1: no draft, one AR step c(1)). Every
calibration cycle accepted r = 3 drafts: streaks of 4 tokens, which block B emits in
ceil(4 / B) cycles, so tokens per cycle = 4 / ceil(4 / B):

    B    tokens / cycle   cost        tokens / cost
    1    1                1           1.000
    2    2                2 * 1.25    0.800
    3    2 (4 in 2)       2 * 1.5     0.667
    4    4                2 * 1.75    1.143   <- best
    6    4                2 * 2.25    0.889
    8    4                2 * 2.75    0.727
"""

import dataclasses
import json

import pytest
import torch
from helpers import quickly_trained_model, tiny_model

import trimode.generation.forward_timing as timing
from trimode.generation.autotune import (
    AcceptanceProfile,
    AutotuneConfig,
    CycleTiming,
    auto_block_choice,
    auto_block_length,
    break_even_acceptance,
    calibrate,
    choose_block_length,
    clear_cache,
    last_choice,
    measure_forward_costs,
    measured_break_even,
)
from trimode.generation.forward_timing import CostStore

CANDIDATES = [1, 2, 3, 4, 6, 8]
QUICK = AutotuneConfig(candidates=(1, 2, 4), diffusion_candidates=(1, 2, 4), repeats=3, time_budget=0.2,
                       calibration_tokens=12)


def cpu_like(kind: str, k: int) -> float:
    return 1 + 0.05 * (k + k * k - 1) if kind == "quadratic" else 1 + 0.25 * (k - 1)


def flat(kind: str, k: int) -> float:
    return 1.0


def test_linear_choice_is_hand_computed():
    profile = AcceptanceProfile("linear-spec", block_length=8, runs=[3] * 10)
    choice = choose_block_length("linear-spec", profile, cpu_like, CANDIDATES)
    assert choice.block_length == 4
    rates = {r["block_length"]: r["tokens_per_s"] for r in choice.rows}
    assert rates == pytest.approx({1: 1.0, 2: 0.8, 3: 2 / 3, 4: 4 / 3.5, 6: 4 / 4.5, 8: 4 / 5.5})
    assert choice.predicted_speedup == pytest.approx(4 / 3.5)
    assert choice.predicted_gain_over(8) == pytest.approx((4 / 3.5) / (4 / 5.5))


@pytest.mark.parametrize("runs,cost,best", [
    ([7] * 5, cpu_like, 8),      # accept all: the widest block wins despite its cost
    ([0] * 5, cpu_like, 1),      # accept none: speculation never pays, B = 1 (plain AR steps)
    ([0] * 5, flat, 1),          # ties go to the smaller block
    ([7] * 5, flat, 8),          # GPU-like flat cost: widest block
])
def test_extremes(runs, cost, best):
    profile = AcceptanceProfile("linear-spec", block_length=8, runs=runs)
    assert choose_block_length("linear-spec", profile, cost, CANDIDATES).block_length == best


def test_measured_overhead_is_added_per_cycle():
    """Calibration wall time the forward costs do not explain is charged to every cycle (and to AR's steps).

    Linear at B = 4: the fastest calibration call took 2 * 1.75 + 0.5 s per cycle, so 0.5 s per cycle is
    overhead; AR took 1.5 s per step (fastest call). Then B=4: 4 / (3.5 + 0.5) = 1.0 token/s, i.e. the
    measured 1.5x over AR (1 / 1.5) is reproduced; B=3: 2 / (3 + 0.5) (streaks of 4 tokens take 2 cycles);
    B=1: 1 / (1 + 0.5) = AR's rate.
    """
    profile = AcceptanceProfile("linear-spec", block_length=4, runs=[3] * 4, cycle_seconds=[4.0, 9.0],
                                ar_step_seconds=[2.5, 1.5])
    choice = choose_block_length("linear-spec", profile, cpu_like, [1, 2, 3, 4])
    assert choice.block_length == 4
    speedups = {r["block_length"]: r["speedup_vs_ar"] for r in choice.rows}
    assert speedups == pytest.approx({1: 1.0, 2: 1.5 * 2 / 3, 3: 1.5 * 2 / 3.5, 4: 1.5})


def test_quadratic_cost_is_one_wide_forward():
    # runs of 3: B=3 -> 3 / (1 + 0.05*11) = 1.94; B=4 -> 4 / (1 + 0.05*19) = 2.05; B=6 -> 4 / 3.05 = 1.31
    profile = AcceptanceProfile("quadratic-spec", block_length=8, runs=[3] * 4)
    choice = choose_block_length("quadratic-spec", profile, cpu_like, CANDIDATES)
    assert choice.block_length == 4
    assert choice.predicted_speedup == pytest.approx(4 / 1.95)


def test_diffusion_uses_measured_forwards_per_block():
    # (decode tokens, denoise forwards, block writes): B=4 needs 2 denoise steps per block here.
    profile = AcceptanceProfile("diffusion", diffusion={1: (20, 0, 20), 4: (20, 10, 5)})
    choice = choose_block_length("diffusion", profile, cpu_like, [1, 4])
    assert choice.block_length == 1  # 20 / (15 * 1.75) = 0.76 < 1
    profile.diffusion[4] = (20, 5, 5)  # one denoise step per block
    assert choose_block_length("diffusion", profile, cpu_like, [1, 4]).block_length == 4  # 20 / 17.5 = 1.14


def test_profile_approximation():
    profile = AcceptanceProfile.from_acceptance("linear-spec", 4, [1, 4, 2, 4])  # acceptance lengths
    assert profile.runs == [0, 3, 1, 3]
    assert profile.tokens_per_cycle(4) == pytest.approx(11 / 4)  # the calibration itself
    assert profile.tokens_per_cycle(3) == pytest.approx(11 / (1 + 2 + 1 + 2))  # streaks of 4 need 2 cycles
    assert profile.tokens_per_cycle(2) == pytest.approx(11 / (1 + 2 + 1 + 2))
    assert profile.tokens_per_cycle(1) == 1.0
    with pytest.raises(ValueError, match="cannot predict block 8"):
        profile.tokens_per_cycle(8)


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="'bogus'"):
        auto_block_length(tiny_model(), "bogus")
    with pytest.raises(ValueError, match="candidates"):
        AutotuneConfig(candidates=(0, 2)).validate()
    with pytest.raises(ValueError, match=r"no candidate block length of \[16\]"):
        choose_block_length("linear-spec", AcceptanceProfile("linear-spec", 4, [1]), flat, [16])


def test_autotune_config_errors_name_the_field_and_validate_checks_assigned_values():
    each_item = "must be a non-empty list, each item an integer >= 1$"
    with pytest.raises(ValueError, match=r"^autotune candidates=\(0, 2\) " + each_item):
        AutotuneConfig(candidates=(0, 2))
    with pytest.raises(ValueError, match=r"^autotune diffusion_candidates=\(\) " + each_item):
        AutotuneConfig(diffusion_candidates=())
    with pytest.raises(ValueError, match=r"^autotune candidates=\(1, 2.0\) " + each_item):
        AutotuneConfig(candidates=(1, 2.0))
    with pytest.raises(ValueError, match=r"^autotune repeat=3: AutotuneConfig has no such setting$"):
        AutotuneConfig(repeat=3)
    assert AutotuneConfig(candidates=[1, 2]).candidates == (1, 2)  # a list is taken, as a tuple
    config = AutotuneConfig()
    config.calibration_tokens = 0  # assignment is not checked ...
    with pytest.raises(ValueError, match=r"^autotune calibration_tokens=0 must be an integer >= 1$"):
        config.validate()  # ... validate() is, as every entry point of auto calls it
    assert dataclasses.asdict(QUICK)["candidates"] == (1, 2, 4)  # the bench report saves it so


def test_break_even_acceptance_is_one_cycle_over_one_ar_forward():
    # flat costs (GPU-like): linear-spec spends 2 forwards per cycle, quadratic-spec 1
    assert break_even_acceptance("linear-spec", flat, 16) == 2.0
    assert break_even_acceptance("quadratic-spec", flat, 16) == 1.0
    # CPU-like: linear B=4 costs 2 * 1.75; quadratic B=4 is one forward of 4 + 16 tokens
    assert break_even_acceptance("linear-spec", cpu_like, 4) == pytest.approx(3.5)
    assert break_even_acceptance("quadratic-spec", cpu_like, 4) == pytest.approx(1.95)
    with pytest.raises(ValueError, match="'diffusion'"):
        break_even_acceptance("diffusion", flat, 4)
    with pytest.raises(ValueError, match="block_length=1"):
        measured_break_even(tiny_model(), "linear-spec", 1)


def _fake_timer(monkeypatch, seconds: dict) -> list:
    """Replace the timing primitive: each (kind, k) takes ``seconds[(kind, k)]`` (plus a slower round);
    returns the list of the (kind, k) it was asked to time."""
    timed = []

    def time_forwards(model, needs, **kw):
        timed.extend(needs)
        return {key: [2 * seconds[key], seconds[key]] for key in needs}

    monkeypatch.setattr(timing, "time_forwards", time_forwards)
    return timed


def test_measured_break_even_is_the_hand_ratio_of_the_fastest_rounds(monkeypatch):
    # linear-spec B=4: (peek 4 + write 4) / write 1; quadratic-spec B=4: quadratic 4 / write 1
    seconds = {("write", 1): 0.002, ("write", 4): 0.0035, ("peek", 4): 0.003, ("quadratic", 4): 0.0039}
    timed = _fake_timer(monkeypatch, seconds)
    assert measured_break_even(tiny_model(), "linear-spec", 4, QUICK) == pytest.approx((0.003 + 0.0035) / 0.002)
    assert sorted(timed) == [("peek", 4), ("write", 1), ("write", 4)]
    assert measured_break_even(tiny_model(), "quadratic-spec", 4, QUICK) == pytest.approx(0.0039 / 0.002)
    assert timed[3:] == [("quadratic", 4)]  # write 1 was persisted by the first call


def test_measured_break_even_on_the_tiny_model_uses_the_persisted_points():
    model = tiny_model()
    value = measured_break_even(model, "linear-spec", 4, QUICK)
    costs = CostStore.load(model).minimum_costs(QUICK.prefix_tokens)
    assert value == pytest.approx((costs[("peek", 4)] + max(costs[("write", 4)], costs[("write", 1)]))
                                  / costs[("write", 1)])


def test_measured_costs_are_positive_and_monotone():
    model = tiny_model()
    costs = measure_forward_costs(model, [("write", 1), ("write", 4), ("peek", 4), ("quadratic", 2)], QUICK)
    assert all(v > 0 for v in costs.values())
    assert costs[("write", 4)] >= costs[("write", 1)]


def test_auto_on_a_real_model_is_cached_and_wired_into_the_engine(monkeypatch):
    model = tiny_model(seed=3)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    b = auto_block_length(model, "linear-spec", config=QUICK)  # generic calibration prompts + measured costs
    assert b in QUICK.candidates
    assert last_choice(model, "linear-spec").block_length == b

    def no_more_measuring(*a, **k):
        raise AssertionError("costs must be cached on the model")

    monkeypatch.setattr(timing, "time_forwards", no_more_measuring)
    out, _, stats = model.linear_spec_generate(prompts, max_new_tokens=10, block_length="auto", eos_token_id=[],
                                               return_stats=True)
    ref, _ = model.ar_generate(prompts, max_new_tokens=10, eos_token_id=[])
    assert torch.equal(out, ref) and stats.block_length == b
    assert auto_block_length(model, "ar") == 1


def test_trained_model_choice_follows_the_hardware():
    """Same measured acceptance: a flat (GPU-like) cost picks a wide block, a linear cost picks B = 1."""
    model = quickly_trained_model()
    gen = torch.Generator().manual_seed(1)
    prompts = [(4 + (torch.randint(0, 20, (1,), generator=gen) + torch.arange(6)) % 20).tolist() for _ in range(2)]
    profile = calibrate(model, "linear-spec", prompts, config=QUICK, max_new_tokens=20, eos_token_id=[])
    assert profile.block_length == 4 and profile.source == "calibration prompts"
    assert sum(profile.runs) > 0  # the trained model gets drafts accepted
    assert auto_block_choice(model, "linear-spec", cost=flat, config=QUICK).block_length == 4
    assert auto_block_choice(model, "linear-spec", cost=lambda kind, k: float(k), config=QUICK).block_length == 1


def test_margin_picks_the_smallest_block_close_to_the_best():
    """Flat cost, 2 forwards per cycle. 49 streaks of 4 tokens and one of 8: B=8 emits them in 50 cycles,
    B=4 in 51, so B=4 predicts 50/51 = 98% of B=8's tokens/s: within a 3% margin (chosen), not within 1%."""
    profile = AcceptanceProfile("linear-spec", block_length=8, runs=[3] * 49 + [7])
    choice = choose_block_length("linear-spec", profile, flat, CANDIDATES, margin=0.03)
    rates = {r["block_length"]: r["tokens_per_s"] for r in choice.rows}
    assert rates[4] / rates[8] == pytest.approx(50 / 51)
    assert (choice.block_length, choice.fastest_block_length, choice.margin) == (4, 8, 0.03)
    assert choose_block_length("linear-spec", profile, flat, CANDIDATES, margin=0.01).block_length == 8
    assert choose_block_length("linear-spec", profile, flat, CANDIDATES, margin=0.0).block_length == 8
    # the config's margin reaches the decision of auto with an injected cost and profile
    model = tiny_model()
    for margin, best in ((0.03, 4), (0.0, 8)):
        config = AutotuneConfig(candidates=tuple(CANDIDATES), margin=margin)
        assert auto_block_choice(model, "linear-spec", cost=flat, profile=profile, config=config).block_length == best
    with pytest.raises(ValueError, match="margin"):
        AutotuneConfig(margin=1.0).validate()


def test_given_timing_replaces_the_calibration_wall_time():
    # The test above's overhead case with the timing given instead: the same rates.
    profile = AcceptanceProfile("linear-spec", block_length=4, runs=[3] * 4, cycle_seconds=[123.0])
    choice = choose_block_length("linear-spec", profile, cpu_like, [1, 2, 3, 4],
                                 timing=CycleTiming(overhead_s=0.5, ar_step_s=1.5, source="persisted"))
    speedups = {r["block_length"]: r["speedup_vs_ar"] for r in choice.rows}
    assert speedups == pytest.approx({1: 1.0, 2: 1.5 * 2 / 3, 3: 1.5 * 2 / 3.5, 4: 1.5})
    assert choice.timing_source == "persisted"


def test_auto_decides_the_same_again_from_the_persisted_curve(monkeypatch, private_cache):
    """A second decision with no in-memory state (a fresh model object, as in a new process) times no
    forward: it reads the curve and the calibration's overhead from disk, and gives the same rows."""
    first = auto_block_choice(tiny_model(seed=3), "linear-spec", config=QUICK)
    assert first.cost_source.startswith("measured in this process") and first.timing_source == "calibration"
    (path,) = (private_cache / "forward-costs").iterdir()
    stored = json.loads(path.read_text())
    assert stored["timings"].keys() == {"linear-spec@4"} and "write/1/200" in stored["points"]

    timed = _fake_timer(monkeypatch, {})  # any timing now fails with a KeyError, and would be counted
    for model in (tiny_model(seed=3), tiny_model(seed=3)):
        again = auto_block_choice(model, "linear-spec", config=QUICK)
        assert timed == []
        assert again.cost_source == f"persisted ({path})" and again.timing_source == f"persisted ({path})"
        assert (again.block_length, again.rows) == (first.block_length, first.rows)
        clear_cache(model)  # in-memory state gone: the next decision reads the disk again
        assert auto_block_length(model, "linear-spec", config=QUICK) == first.block_length
    assert timed == []
