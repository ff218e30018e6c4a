"""Debug preset end to end through the CLI: tokenizer -> data -> ar -> joint -> sft -> drafter -> load -> decoders."""

import json
import time

import pytest
import torch

from trimode.cli import main
from trimode.data.tasks import FAMILIES, format_prompt, generate_tasks
from trimode.evaluation.prompts import trained_families
from trimode.loading import DRAFTER_SUBFOLDER, load
from trimode.training import preset_config


def _log(path):
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def _tpf(model, prompts, **kw):
    _, _, stats = model.linear_spec_generate(prompts, max_new_tokens=32, eos_token_id=[], return_stats=True, **kw)
    return stats.tpf


def test_debug_pipeline_end_to_end(tmp_path, capsys):
    start = time.perf_counter()
    dirs = {s: tmp_path / s for s in ("ar", "joint", "sft", "final")}
    common = ["--preset", "debug", "--no-progress"]
    assert main(["train", "--stage", "ar", "--out", str(dirs["ar"]), *common]) == 0
    assert main(["train", "--stage", "joint", "--init", str(dirs["ar"]), "--out", str(dirs["joint"]), *common]) == 0
    assert main(["train", "--stage", "sft", "--init", str(dirs["joint"]), "--out", str(dirs["sft"]), *common]) == 0
    assert main(["train", "--stage", "drafter", "--init", str(dirs["sft"]), "--out", str(dirs["final"]),
                 *common]) == 0
    train_time = time.perf_counter() - start
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [s["stage"] for s in summaries] == ["ar", "joint", "sft", "drafter"]

    for stage, d in dirs.items():
        for name in ("config.json", "model.safetensors", "tokenizer.json", "train_log.jsonl", "train_config.json"):
            assert (d / name).is_file(), f"{stage}: {name} missing"
        kept = ["step-00000020", "step-00000030"] if stage == "ar" else ["step-00000010", "step-00000020"]
        assert sorted(p.name for p in (d / "checkpoints").iterdir()) == kept  # every 10 steps, newest 2 kept
        pickles = [p for p in d.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        assert not pickles, f"{stage}: pickled files {pickles}"
        records = _log(d)
        train_steps = [r["step"] for r in records if "loss" in r]
        assert train_steps == list(range(1, train_steps[-1] + 1))
        assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in records if "loss" in r)
        if stage == "joint":
            assert {"ar_loss", "diffusion_loss"} <= set(records[-2])
    pytest.importorskip("matplotlib")
    for d in dirs.values():
        assert (d / "loss_curve.png").stat().st_size > 5000

    # Training lowers the loss of each stage.
    ar = [r["loss"] for r in _log(dirs["ar"]) if "loss" in r]
    assert sum(ar[-5:]) / 5 < ar[0] - 0.5
    evals = [r["eval_loss"] for r in _log(dirs["final"]) if "eval_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0], f"drafter eval loss did not drop: {evals}"

    # The final directory loads with its drafter, and every decoder runs; speculation stays lossless.
    loaded = load(dirs["final"])
    assert loaded.has_drafter and (dirs["final"] / DRAFTER_SUBFOLDER / "adapter_model.safetensors").is_file()
    model, tok = loaded.model, loaded.tokenizer
    prompts = [tok.encode(format_prompt(t), add_special_tokens=False) for t in generate_tasks("heldout", 3, seed=0)]
    kw = dict(max_new_tokens=24, eos_token_id=[])
    ref, _ = model.ar_generate(prompts, **kw)
    for method in ("linear_spec_generate", "quadratic_spec_generate"):
        out, _ = getattr(model, method)(prompts, **kw)
        assert torch.equal(out, ref), method
    out, nfe = model.generate(prompts, **kw)
    assert out.shape[1] == ref.shape[1] and 0 < nfe <= 24 + 1
    assert load(dirs["sft"]).has_drafter is False
    # The families trained on are recorded, so eval / bench draw held-out tasks from them.
    assert trained_families(model.config) == list(FAMILIES)

    # Reported, not asserted (the speed-up is measured on the real model): TPF with vs without the adapter.
    base = load(dirs["final"], drafter=False).model
    with capsys.disabled():
        print(f"\n[debug pipeline] 4 stages trained in {train_time:.1f}s; linear-spec TPF "
              f"without drafter {_tpf(base, prompts):.2f}, with drafter {_tpf(model, prompts):.2f}")
    # "Trains in seconds" as a deterministic budget (wall clock on a shared 2-core machine is not):
    # about 25-30 s for the four stages on an idle 2-core CPU, printed above.
    cfgs = [preset_config("debug", s) for s in ("ar", "joint", "sft", "drafter")]
    assert [s["steps"] for s in summaries] == [c.steps for c in cfgs]
    budget = sum(c.steps * c.micro_batch * c.grad_accum * c.seq_len for c in cfgs)
    assert budget <= 50_000 and max(c.model.hidden_size for c in cfgs) <= 64, budget
