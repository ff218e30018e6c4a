"""The forward-cost curve: its result on the tiny model, its JSON, the persisted store auto reads, and
`trimode bench --forward-costs` (table, JSON, PNG, the store refreshed, clear errors for bad k)."""

import json

import pytest
from helpers import tiny_model

import trimode.evaluation.forward_costs as curve
import trimode.generation.forward_timing as timing
from trimode.cli import main
from trimode.evaluation.forward_costs import (
    CurveConfig,
    ForwardCosts,
    check_ks,
    format_table,
    measure_curve,
    refresh_store,
)
from trimode.generation.autotune import AutotuneConfig, forward_costs
from trimode.generation.forward_timing import CostStore, machine_identity

SMALL = CurveConfig(ks=(2, 4), kinds=("write", "peek"), prefix_tokens=16, repeats=3, bandwidth_bytes=4 * 2**20,
                    bandwidth_repeats=2)


@pytest.fixture(scope="module")
def measured():
    return measure_curve(tiny_model(), SMALL, model_name="tiny", log=lambda msg: None)


def test_curve_shapes_and_ratios(measured):
    result, samples = measured
    assert [(p.kind, p.k) for p in result.points] == [("write", 1), ("write", 2), ("write", 4), ("peek", 1),
                                                       ("peek", 2), ("peek", 4)]  # k = 1 added: the reference
    assert set(samples) == {(p.kind, p.k) for p in result.points}
    for p in result.points:
        assert len(p.samples_ms) == 3 and p.min_ms == min(p.samples_ms) <= p.median_ms == sorted(p.samples_ms)[1]
        ref = result.point(p.kind, 1)
        assert p.ratio == pytest.approx(p.median_ms / ref.median_ms)
        assert p.tokens_per_s == pytest.approx(p.k / (p.median_ms / 1e3))
    assert result.point("write", 1).ratio == 1.0 and result.point("peek", 1).min_ratio == 1.0
    machine = result.machine
    assert machine["model"] == "tiny" and machine["threads"] == 1 and machine["dtype"] == "float32"
    for key in ("torch", "cpu", "device", "device_name", "parameters", "config_sha256"):
        assert machine[key], key


def test_roofline_is_decode_bytes_over_bandwidth(measured):
    result, _ = measured
    r = result.roofline
    # tiny_config: 2 layers of q (32x32), k and v (16x32 each), o (32x32), gate and up (64x32), down (32x64);
    # the output head (48x32); float32; the embedding contributes one row of hidden_size values.
    linear = (2 * (32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 64 * 32) + 48 * 32) * 4
    assert r.decode_bytes == {"linear_weights": linear, "embedding_row": 32 * 4, "total": linear + 128}
    assert r.bandwidth_gb_s > 0 and r.copy_bytes == 4 * 2**20
    assert r.k1_roofline_ms == pytest.approx(r.decode_bytes["total"] / (r.bandwidth_gb_s * 1e9) * 1e3)
    assert r.fraction == pytest.approx(r.k1_roofline_ms / result.point("write", 1).median_ms)


def test_decode_bytes_leave_lora_adapters_out():
    import torch

    model = tiny_model()
    before = curve.decode_step_bytes(model)
    model.encoder.layers[0].add_module("lora_A", torch.nn.Linear(32, 4, bias=False))  # as PEFT names them
    assert curve.decode_step_bytes(model) == before  # a causal step runs with the drafter off


def test_json_round_trip_and_table(measured):
    result, _ = measured
    again = ForwardCosts.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    table = format_table(result)
    assert "x k=1" in table and "of roofline" in table and "roofline k=1:" in table
    assert len([line for line in table.splitlines() if line.strip().startswith(("write", "peek"))]) == 6


def test_bad_k_values_say_what_is_allowed():
    for bad in ([0], [2, -1], [1.5], [True], []):
        with pytest.raises(ValueError, match=r"ks=.* must be a non-empty list, each item an integer >= 1"):
            check_ks(bad)
    assert check_ks([8, 2, 2]) == [1, 2, 8]
    model = tiny_model()  # context 256
    with pytest.raises(ValueError, match=r"k=300 .* k must be <= 240"):
        measure_curve(model, CurveConfig(ks=(300,), prefix_tokens=16), log=lambda msg: None)
    with pytest.raises(ValueError, match="'sideways'"):
        CurveConfig(kinds=("sideways",)).validate()


def test_quadratic_widths_that_do_not_fit_are_skipped():
    config = CurveConfig(ks=(2, 16), kinds=("quadratic",), prefix_tokens=16, repeats=1, bandwidth_bytes=2**20)
    result, _ = measure_curve(tiny_model(), config, log=lambda msg: None)
    assert [(p.k, p.tokens) for p in result.points] == [(1, 2), (2, 6)]
    assert result.skipped == [{"kind": "quadratic", "k": 16, "why": "272 tokens exceed the 240 the context leaves "
                                                                    "after the prefix"}]
    assert result.roofline is None  # no write k = 1 point


def test_store_is_keyed_by_identity_and_survives_bad_files(private_cache):
    model = tiny_model()
    store = CostStore.load(model)
    assert store.path.parent == private_cache / "forward-costs" and not store.points
    store.record({("write", 1): [3.0, 1.0, 2.0]}, prefix=16)
    store.save()
    assert [p.name for p in store.path.parent.iterdir()] == [store.path.name]  # no temporary file left
    again = CostStore.load(model)
    assert again.loaded_from_disk and again.get("write", 1, 16) == {"min_s": 1.0, "median_s": 2.0, "samples": 3}
    assert again.get("write", 1, 200) is None  # another prefix is another point
    other = tiny_model(hidden_size=16, head_dim=4)
    assert machine_identity(other) != machine_identity(model) and not CostStore.load(other).points
    store.path.write_text("{not json")
    assert not CostStore.load(model).points
    assert CostStore.load(model, persist=False).path is None


def test_auto_reads_the_refreshed_curve(monkeypatch):
    """What `bench --forward-costs` persists is what auto's cost function returns; only missing points
    are timed."""
    model = tiny_model()
    config = AutotuneConfig(candidates=(1, 2), repeats=2, time_budget=0.1)
    timed = []

    def fake_time_forwards(model, needs, **kw):
        timed.extend(needs)
        return {key: [5.0] for key in needs}

    monkeypatch.setattr(timing, "time_forwards", fake_time_forwards)
    refresh_store(model, {("write", 1): [0.002, 0.001, 0.003], ("write", 2): [0.004]}, config.prefix_tokens)
    cost = forward_costs(model, "linear-spec", config)
    assert cost("write", 1) == 0.001 and cost("write", 2) == 0.004  # the fastest sample of each point
    assert timed == [("peek", 2)] and cost("peek", 2) == 5.0
    assert CostStore.load(model).get("peek", 2, config.prefix_tokens)["min_s"] == 5.0  # persisted too


def test_torch_free_constants_match_the_module():
    from trimode.evaluation.bench_config import CURVE_PREFIX_TOKENS, FORWARD_KINDS

    assert (FORWARD_KINDS, CURVE_PREFIX_TOKENS) == (timing.KINDS, timing.DEFAULT_PREFIX_TOKENS)


def test_cli_forward_costs_writes_json_png_and_table(tmp_path, private_cache, capsys):
    out = tmp_path / "report"
    assert main(["bench", "--forward-costs", "--quick", "--ks", "1,2", "--repeats", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "x k=1" in captured.out and "roofline k=1:" in captured.out
    assert f"wrote {out / 'forward_costs.json'}, {out / 'forward_costs.png'}" in captured.out
    assert "forward costs:" in captured.err  # progress goes to stderr
    assert (out / "forward_costs.png").stat().st_size > 0
    data = json.loads((out / "forward_costs.json").read_text())
    assert [(p["kind"], p["k"], len(p["samples_ms"])) for p in data["points"]] == [("write", 1, 3), ("write", 2, 3)]
    assert data["machine"]["model"] == "trimode-tiny" and data["prefix_tokens"] == 200
    (store,) = (private_cache / "forward-costs").iterdir()
    assert str(store) in captured.out
    points = json.loads(store.read_text())["points"]
    assert sorted(points) == ["write/1/200", "write/2/200"]


@pytest.mark.parametrize("argv,message", [
    (["--forward-costs", "--ks", "0,2"], "argument --ks: 0 must be >= 1"),
    (["--forward-costs", "--ks", "two"], "argument --ks: 'two' is not an integer"),
    (["--forward-costs", "--kinds", "sideways"], "'sideways' is not one of write, peek, quadratic"),
])
def test_cli_bad_k_is_an_argument_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_cli_curve_options_need_forward_costs(capsys):
    assert main(["bench", "--ks", "1,2"]) == 2
    assert "--ks applies to --forward-costs only" in capsys.readouterr().err
