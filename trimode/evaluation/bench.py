"""``trimode bench``: speed of every mode, against SOL and a transformers baseline, in one run.

Sections (each a table in the report, most also a plot), one function each:

1. **Main table** (:func:`_main_tables`), per prompt set (held-out tasks, held-out
   code) and batch size: every mode at the default settings, plus ``transformers``
   ``generate()`` on the same weights. nfe, TPF, acceptance mean and histogram,
   drafted / accepted / rolled back, TTFT, per-token latency P50/P95, tokens/s,
   and ratios to trimode AR and to transformers from the same run.
2. **SOL** (:func:`_sol_section`): the oracle diffusion TPF (:mod:`.sol`) at the
   same block length and prompts, beside the TPF the real samplers reach.
3. **Threshold sweep** (:func:`_threshold_sweep`, diffusion): speed against
   accuracy on task prompts.
4. **Auto block length** (:func:`_auto_block_length`,
   :mod:`trimode.generation.autotune`): calibrated on the sweep prompts; the
   chosen B is run through ``block_length="auto"`` and its measured gain over AR
   and over the config's block is reported beside the prediction, with where its
   forward costs came from (the persisted curve of :mod:`.forward_costs`, or
   measured in this run). ``trimode bench --forward-costs`` measures only that
   curve.
5. **Block-length sweep** (:func:`_block_sweep`): TPF, SOL TPF, acceptance
   (measured and predicted) and tokens/s per block length and mode.

What it measures is :class:`~.bench_config.BenchConfig` (re-exported here).

Design choices:

- Interleaving: for each batch of prompts, every engine runs back to back
  (AR first, its token counts feed the baseline), so machine noise lands on
  all engines alike; ratios are computed within one prompt set and batch size.
- Greedy decoding everywhere (T = 0): the speculative modes are then
  token-identical to AR, and SOL's reference is well defined.
- A short warm-up call per engine precedes the timed runs (first-call
  allocations would otherwise be charged to whichever engine runs first).
- All metrics come from :mod:`.metrics` (defined once).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..generation.autotune import auto_block_choice, calibrate, forward_costs
from ..generation.names import MODE_NAMES, SPECULATIVE_MODES
from .accuracy import Setting
from .bench_config import BenchConfig, quick_config
from .environment import environment
from .interleave import first_round_outputs, interleaved, setting_row, unique_settings
from .metrics import RunRecord, ratio, summarize
from .prompts import PromptSet, build_prompt_set, trained_families
from .sol import speed_of_light

__all__ = ["BenchConfig", "interleaved", "quick_config", "run_bench", "write_bench_report"]

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class _BenchRun:
    """What every section of one run shares: the model, the prompts, the main settings, the baseline."""

    model: Any
    tokenizer: Any
    config: BenchConfig
    sets: list[PromptSet]
    sweep_set: PromptSet
    """The first ``config.sweep_prompts`` task prompts (else of the first set): sweeps and auto block length."""
    block: int
    threshold: float | None
    log: Log
    baseline: Any = None

    @property
    def max_new(self) -> int:
        return self.config.max_new_tokens

    @property
    def repeats(self) -> int:
        return self.config.repeats

    def setting(self, mode: str, block_length: int | str | None) -> Setting:
        """``mode`` at ``block_length`` with the run's diffusion threshold."""
        return Setting(mode, block_length, self.threshold, mode == "diffusion")

    def main_settings(self) -> list[Setting]:
        """AR, then every other mode of the config at the run's block length."""
        return [Setting("ar")] + [self.setting(m, self.block) for m in self.config.modes if m != "ar"]

    def sweep(self, settings: list[Setting]) -> tuple[dict[str, list[RunRecord]], dict[str, str]]:
        """``settings`` interleaved on the sweep prompts at batch 1: records and errors per label."""
        recs, _, _, errors = interleaved(self.model, self.sweep_set.prompts, 1, settings, self.max_new,
                                         repeats=self.repeats)
        return recs, errors


# ---------------------------------------------------------------- the run, section by section
def run_bench(model, tokenizer=None, config: BenchConfig | None = None, *,
              prompt_sets: list[PromptSet] | None = None, model_name: str = "model", log: Log = _stderr) -> dict:
    """Run every section and return the JSON-ready result (``write_bench_report`` renders it).

    ``prompt_sets``: your own prompts (e.g. :func:`.prompts.file_prompt_set`) instead of the
    config's named sets; then ``tokenizer`` is only needed to score task prompts.
    """
    config = (config or BenchConfig()).validate()
    started = time.perf_counter()
    env = environment(model)
    run = _prepare(model, tokenizer, config, prompt_sets, log)
    run.baseline = _load_baseline(run)
    if config.warmup:
        _warm_up(run)
    result = _run_info(run, env, model_name)
    result["main"], ar_batch1 = _main_tables(run)
    if config.sol:
        result["sol"] = _sol_section(run, result["main"], ar_batch1)
    if config.thresholds:
        result["threshold_sweep"] = _threshold_sweep(run)
    profiles = {}
    if config.autotune:
        result["autotune"], profiles = _auto_block_length(run)
    if config.block_lengths:
        result["block_sweep"] = _block_sweep(run, profiles)
    result["elapsed_s"] = time.perf_counter() - started
    result["environment_end"] = {"load_average": environment(model)["load_average"]}
    return result


def _prepare(model, tokenizer, config: BenchConfig, prompt_sets: list[PromptSet] | None, log: Log) -> _BenchRun:
    """The prompts (checked against the model's context), block length and threshold of the run."""
    cfg = model.config
    sets = prompt_sets if prompt_sets is not None else _named_prompt_sets(model, tokenizer, config)
    if not sets or any(not s.prompts for s in sets):
        raise ValueError("every prompt set needs at least one prompt")
    _check_context(model, sets, config)
    sweep_set = next((s for s in sets if s.name == "tasks"), sets[0]).head(config.sweep_prompts)
    return _BenchRun(model, tokenizer, config, sets, sweep_set, block=config.block_length or cfg.block_size,
                     threshold=cfg.threshold if config.threshold is None else config.threshold, log=log)


def _check_context(model, sets: list[PromptSet], config: BenchConfig) -> None:
    """Prompt + generated tokens must fit the model's context (as ``trimode generate`` requires)."""
    ctx = model.config.max_position_embeddings
    for ps in sets:
        longest = max(len(p) for p in ps.prompts)
        if longest + config.max_new_tokens > ctx:
            raise ValueError(f"{ps.name} prompts (up to {longest} tokens) + max_new_tokens {config.max_new_tokens} "
                             f"exceed the model's context of {ctx} tokens; lower max_new_tokens")


def _named_prompt_sets(model, tokenizer, config: BenchConfig) -> list[PromptSet]:
    if tokenizer is None:
        raise ValueError("run_bench needs a tokenizer to build the named prompt sets, or prompt_sets=")
    return [build_prompt_set(name, tokenizer, config.n_prompts, config.seed, config.code_prompt_tokens,
                             trained_families(model.config))
            for name in config.prompt_sets]


def _load_baseline(run: _BenchRun):
    """transformers ``generate()`` on the same weights, or None when the config leaves it out."""
    if not run.config.baseline:
        return None
    from .baseline import TransformersBaseline

    run.log("exporting the AR pathway to transformers (temporary directory) ...")
    return TransformersBaseline(run.model)


def _warm_up(run: _BenchRun) -> None:
    """One short untimed call per main setting and the baseline."""
    short = run.sets[0].prompts[0]
    for s in run.main_settings():
        s.run(run.model, [short], 4)
    if run.baseline is not None:
        run.baseline.generate([short], [4])


def _run_info(run: _BenchRun, env: dict, model_name: str) -> dict:
    """The head of the result: model, environment, config, and the settings every section shares."""
    cfg = run.model.config
    return {"kind": "bench", "model": model_name, "environment": env, "config": run.config.model_dump(),
            "model_info": {"parameters": sum(p.numel() for p in run.model.parameters()),
                           "block_size": cfg.block_size, "threshold": cfg.threshold,
                           "max_position_embeddings": cfg.max_position_embeddings,
                           "has_drafter": _has_drafter(run.model)},
            "block_length": run.block, "threshold": run.threshold, "max_new_tokens": run.max_new,
            "baseline": run.baseline.name if run.baseline else None,
            "prompt_sets": {s.name: s.description for s in run.sets}}


# 1. main table
def _main_tables(run: _BenchRun) -> tuple[list[dict], dict[str, list[RunRecord]]]:
    """One table per prompt set and batch size; also AR's batch-1 records per set (SOL's references)."""
    settings = run.main_settings()
    tables: list[dict] = []
    ar_batch1: dict[str, list[RunRecord]] = {}
    for ps in run.sets:
        for bs in run.config.batch_sizes:
            run.log(f"main: {ps.name} prompts, batch {bs} ...")
            table, ar = _main_table(run, settings, ps, bs)
            if bs == 1:
                ar_batch1[ps.name] = ar
            tables.append(table)
    return tables, ar_batch1


def _main_table(run: _BenchRun, settings: list[Setting], ps: PromptSet, bs: int) -> tuple[dict, list[RunRecord]]:
    """Every main setting and the baseline on ``ps`` at batch ``bs``: the table and AR's records."""
    baseline = run.baseline
    recs, base, mismatches, errors = interleaved(run.model, ps.prompts, bs, settings, run.max_new, baseline,
                                                 run.repeats)
    ar = recs["ar"]
    rows = [setting_row(s.label, recs[s.label], ar, run.tokenizer, ps.tasks, errors.get(s.label), run.repeats)
            | {"mode": s.mode} for s in settings]
    if baseline is not None:
        rows.append(setting_row(f"transformers {baseline.name}.generate()", base, None, run.tokenizer, None)
                    | {"mode": "transformers", "matches_ar": None if bs > 1 else mismatches == 0})
    ar_rate = rows[0]["tokens_per_s"]
    base_rate = rows[-1]["tokens_per_s"] if baseline is not None else None
    for r in rows:
        r["vs_ar"] = ratio(r["tokens_per_s"], ar_rate)
        r["vs_transformers"] = ratio(r["tokens_per_s"], base_rate)
    table = {"prompt_set": ps.name, "batch_size": bs, "rows": rows,
             "baseline_mismatches": mismatches if baseline is not None and bs == 1 else None}
    return table, ar


# 2. SOL
def _sol_section(run: _BenchRun, main: list[dict], ar_batch1: dict[str, list[RunRecord]]) -> list[dict]:
    """SOL TPF per prompt set at the run's block, beside each sampler's batch-1 TPF of the main table."""
    out = []
    for ps in run.sets:
        run.log(f"SOL: {ps.name} prompts, block {run.block} ...")
        refs, repeats = ar_batch1.get(ps.name), run.repeats
        if not refs:  # no batch-1 main table: AR runs once more, for the references
            refs, repeats = interleaved(run.model, ps.prompts, 1, [Setting("ar")], run.max_new)[0]["ar"], 1
        sol = _sol_row(run.model, ps.prompts, first_round_outputs(refs, repeats), run.block, run.max_new)
        sol["samplers"] = _sampler_shares(main, ps.name, sol["tpf"])
        out.append({"prompt_set": ps.name} | sol)
    return out


def _sampler_shares(main: list[dict], prompt_set: str, sol_tpf: float) -> dict:
    """Each sampler's TPF in the batch-1 main table of ``prompt_set``, and its share of the SOL TPF."""
    tpfs = {r["mode"]: r["tpf"] for t in main if t["prompt_set"] == prompt_set and t["batch_size"] == 1
            for r in t["rows"] if r.get("tpf") is not None}
    return {m: {"tpf": tpfs[m], "share_of_sol": ratio(tpfs[m], sol_tpf)} for m in MODE_NAMES[1:] if m in tpfs}


def _sol_row(model, prompts: list[list[int]], references: list[list[int]], block: int, max_new: int) -> dict:
    """SOL over prompts run one by one (batch 1, like the samplers it is compared with)."""
    tokens = nfe = matches = 0
    for p, ref in zip(prompts, references):
        stats, generated = speed_of_light(model, [p], block, max_new, references=[ref])
        tokens += stats.tokens_generated
        nfe += stats.nfe
        matches += generated[0] == ref
    return {"tpf": tokens / nfe if nfe else 0.0, "tokens": tokens, "nfe": nfe,
            "reference_reproduced": matches / len(prompts)}


# 3. threshold sweep
def _threshold_sweep(run: _BenchRun) -> dict:
    """Diffusion at every threshold of the config (and AR), on the sweep prompts: speed and accuracy."""
    sweep = run.sweep_set
    run.log(f"threshold sweep on {len(sweep)} {sweep.name} prompts ...")
    settings = [Setting("ar")] + [Setting("diffusion", run.block, t, True) for t in run.config.thresholds]
    recs, errors = run.sweep(settings)
    rows = [setting_row(s.label, recs[s.label], recs["ar"], run.tokenizer, sweep.tasks, errors.get(s.label),
                        run.repeats)
            | {"mode": s.mode, "threshold": s.threshold if s.mode == "diffusion" else None} for s in settings]
    for r in rows:
        r["vs_ar"] = ratio(r["tokens_per_s"], rows[0]["tokens_per_s"])
    return {"prompt_set": sweep.name, "block_length": run.block, "rows": rows}


# 4. auto block length
def _auto_block_length(run: _BenchRun) -> tuple[dict, dict]:
    """Calibrate and choose B per mode, then run the choice through ``block_length="auto"`` beside AR
    and the config's block. Returns the section and the acceptance profiles (the block sweep's predictions)."""
    run.log("auto block length: forward costs (persisted, or measured) and calibrating acceptance ...")
    modes = [m for m in run.config.modes if m != "ar"]
    profiles, choices = _calibrate_modes(run, modes)
    settings = [Setting("ar")]
    for mode in modes:
        settings += [run.setting(mode, run.block), run.setting(mode, "auto")]  # "auto": through the engine
    recs, errors = run.sweep(unique_settings(settings))
    ar_rate = summarize(recs["ar"]).tokens_per_s
    rows = [_auto_row(run, mode, choices[mode], recs, errors, ar_rate) for mode in modes]
    section = {"prompt_set": run.sweep_set.name, "rows": rows, "forward_costs": _forward_cost_table(run, choices),
               "config": asdict(run.config.autotune_config)}
    return section, profiles


def _calibrate_modes(run: _BenchRun, modes: list[str]) -> tuple[dict, dict]:
    """Per mode: the acceptance profile calibrated on the sweep prompts, and the block length chosen from it."""
    profiles, choices = {}, {}
    autotune = run.config.autotune_config
    for mode in modes:
        profiles[mode] = calibrate(run.model, mode, run.sweep_set.prompts, config=autotune,
                                   max_new_tokens=run.max_new, threshold=run.threshold,
                                   source=f"{run.sweep_set.name} sweep prompts")
        forward_costs(run.model, mode, autotune)
        choices[mode] = auto_block_choice(run.model, mode, config=autotune)
    return profiles, choices


def _auto_row(run: _BenchRun, mode: str, choice, recs: dict[str, list[RunRecord]], errors: dict[str, str],
              ar_rate: float | None) -> dict:
    """The chosen B of ``mode``: predicted and measured speed-up over AR and gain over the config's block."""
    default, auto = run.setting(mode, run.block), run.setting(mode, "auto")
    failed = [errors[s.label] for s in (default, auto) if s.label in errors]
    if failed:
        return {"mode": mode, "chosen_block_length": choice.block_length, "error": failed[0],
                "default_block_length": run.block, "candidates": choice.rows}
    default_rate = summarize(recs[default.label]).tokens_per_s
    auto_summary = summarize(recs[auto.label])
    return {"mode": mode, "chosen_block_length": choice.block_length, "default_block_length": run.block,
            "predicted_speedup_vs_ar": choice.predicted_speedup,
            "predicted_gain_vs_default": choice.predicted_gain_over(run.block),
            "measured_tokens_per_s": auto_summary.tokens_per_s, "measured_tpf": auto_summary.tpf,
            "measured_speedup_vs_ar": ratio(auto_summary.tokens_per_s, ar_rate),
            "measured_gain_vs_default": ratio(auto_summary.tokens_per_s, default_rate),
            "profile_source": choice.profile_source, "cost_source": choice.cost_source,
            "timing_source": choice.timing_source, "margin": choice.margin,
            "fastest_block_length": choice.fastest_block_length, "candidates": choice.rows}


def _forward_cost_table(run: _BenchRun, choices: dict) -> list[dict]:
    """Cost of one causal write forward of k tokens, for every candidate k of the choices, and relative to k = 1."""
    costs = forward_costs(run.model, "linear-spec", run.config.autotune_config)
    ks = sorted({r["block_length"] for c in choices.values() for r in c.rows})
    return [{"k": k, "write_s": costs("write", k), "relative_to_k1": costs("write", k) / costs("write", 1)}
            for k in ks]


# 5. block-length sweep
def _block_sweep(run: _BenchRun, profiles: dict) -> dict:
    """Diffusion and the speculative modes at every block length of the config, on the sweep prompts,
    with the acceptance the auto block length's ``profiles`` predicted and the SOL TPF per block."""
    sweep, config = run.sweep_set, run.config
    run.log(f"block-length sweep on {len(sweep)} {sweep.name} prompts ...")
    settings = [Setting("ar")] + _block_sweep_settings(run)
    recs, errors = run.sweep(settings)
    ar_rate = summarize(recs["ar"]).tokens_per_s
    rows = [_block_sweep_row(run, s, recs, errors.get(s.label), ar_rate, profiles.get(s.mode)) for s in settings[1:]]
    sol_rows = []
    if config.sol:
        refs = first_round_outputs(recs["ar"], run.repeats)
        sol_rows = [{"block_length": b} | _sol_row(run.model, sweep.prompts, refs, b, run.max_new)
                    for b in sorted(set(config.block_lengths))]
    return {"prompt_set": sweep.name, "rows": rows, "sol": sol_rows, "ar_tokens_per_s": ar_rate}


def _block_sweep_settings(run: _BenchRun) -> list[Setting]:
    """Every sweep block length per mode (diffusion first); quadratic-spec up to ``quadratic_max_block``."""
    config = run.config
    settings = []
    for mode in (m for m in ("diffusion",) + SPECULATIVE_MODES if m in config.modes):
        for b in sorted(set(config.block_lengths)):
            if mode == "quadratic-spec" and b > config.quadratic_max_block:
                continue
            settings.append(run.setting(mode, b))
    return settings


def _block_sweep_row(run: _BenchRun, s: Setting, recs: dict[str, list[RunRecord]], error: str | None,
                     ar_rate: float | None, profile) -> dict:
    row = setting_row(s.label, recs[s.label], recs["ar"], error=error, repeats=run.repeats) | {
        "mode": s.mode, "block_length": s.block_length}
    row["vs_ar"] = ratio(row["tokens_per_s"], ar_rate)
    if profile is not None and s.mode in SPECULATIVE_MODES and s.block_length <= profile.block_length:
        row["predicted_acceptance"] = profile.tokens_per_cycle(s.block_length)
    return row


# ---------------------------------------------------------------- helpers
def _has_drafter(model) -> bool:
    named = getattr(model, "named_parameters", None)
    return named is not None and any("lora_" in name for name, _ in named())


def write_bench_report(result: dict, out_dir: str | Path, command: str, plots: bool = True) -> list[Path]:
    """Write bench.json, bench.md, RESULTS.md (and PNG plots) into ``out_dir``; return the paths."""
    from .report import write_bench_files

    return write_bench_files(result, Path(out_dir), command, plots)
