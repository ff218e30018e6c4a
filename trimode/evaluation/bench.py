"""``trimode bench``: speed of every mode, against SOL and a transformers baseline, in one run.

Sections (each a table in the report, most also a plot):

1. **Main table**, per prompt set (held-out tasks, held-out code) and batch
   size: every mode at the default settings, plus ``transformers``
   ``generate()`` on the same weights. nfe, TPF, acceptance mean and histogram,
   drafted / accepted / rolled back, TTFT, per-token latency P50/P95, tokens/s,
   and ratios to trimode AR and to transformers from the same run.
2. **SOL**: the oracle diffusion TPF (:mod:`.sol`) at the same block length and
   prompts, beside the TPF the real samplers reach.
3. **Threshold sweep** (diffusion): speed against accuracy on task prompts.
4. **Auto block length** (:mod:`.autotune`): calibrated on the sweep prompts;
   the chosen B is run through ``block_length="auto"`` and its measured gain
   over AR and over the config's block is reported beside the prediction, with
   where its forward costs came from (the persisted curve of
   :mod:`.forward_costs`, or measured in this run). ``trimode bench
   --forward-costs`` measures only that curve.
5. **Block-length sweep**: TPF, SOL TPF, acceptance (measured and predicted)
   and tokens/s per block length and mode.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..generation.modes import MODE_NAMES as MODES, SPECULATIVE_MODES as SPEC_MODES
from .accuracy import Setting, score_rows
from .autotune import AutotuneConfig, auto_block_choice, calibrate, forward_costs
from .environment import environment
from .metrics import RunRecord, identical_share, ratio, summarize
from .prompts import PROMPT_SETS, PromptSet, build_prompt_set, trained_families
from .sol import speed_of_light


@dataclass
class BenchConfig:
    """What ``trimode bench`` measures. Defaults finish in a few minutes for a few-M-parameter model on 2 cores."""

    prompt_sets: list[str] = field(default_factory=lambda: ["tasks", "code"])
    """Prompt sets: held-out task prompts and/or held-out code prefixes."""
    n_prompts: int = 6
    """Prompts per set in the main table."""
    sweep_prompts: int = 4
    """Task prompts used by the sweeps and the auto block length (the first of the set)."""
    seed: int = 0
    """Seed of the prompt sets."""
    max_new_tokens: int = 64
    """New tokens per prompt (rows also stop at EOS)."""
    code_prompt_tokens: int = 64
    """Length of each code prompt, in tokens."""
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    """Batch sizes of the main table."""
    modes: list[str] = field(default_factory=lambda: list(MODES))
    """Modes of the main table (AR always runs: it is the reference)."""
    block_length: int | None = None
    """Block length of the main table (None: the model's config)."""
    threshold: float | None = None
    """Diffusion threshold of the main table (None: the model's config)."""
    thresholds: list[float | None] = field(default_factory=lambda: [0.3, 0.5, 0.7, 0.9, 0.95])
    """Diffusion thresholds of the threshold sweep (None: fixed schedule). Empty: no sweep."""
    block_lengths: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    """Block lengths of the block sweep. Empty: no sweep."""
    quadratic_max_block: int = 8
    """Largest block the quadratic mode runs in the sweep (its forward is B*(B+1) tokens)."""
    baseline: bool = True
    """Time transformers generate() on the same weights."""
    sol: bool = True
    """Compute the SOL (oracle) TPF."""
    autotune: bool = True
    """Pick the block length with block_length='auto' and measure its gain."""
    autotune_config: AutotuneConfig = field(default_factory=AutotuneConfig)
    repeats: int = 1
    """Timed rounds per batch of prompts (interleaved); more rounds, less noise."""
    warmup: bool = True
    """One short untimed call per engine first."""
    plots: bool = True
    """Write PNG plots (matplotlib)."""

    def validate(self) -> "BenchConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(bool(self.prompt_sets) and all(p in PROMPT_SETS for p in self.prompt_sets),
             f"prompt_sets={self.prompt_sets!r}: each must be one of {', '.join(PROMPT_SETS)}")
        need(bool(self.modes) and all(m in MODES for m in self.modes),
             f"modes={self.modes!r}: each must be one of {', '.join(MODES)}")
        for name in ("n_prompts", "sweep_prompts", "max_new_tokens", "code_prompt_tokens", "quadratic_max_block",
                     "repeats"):
            need(getattr(self, name) >= 1, f"{name}={getattr(self, name)!r} must be >= 1")
        need(bool(self.batch_sizes) and all(b >= 1 for b in self.batch_sizes),
             f"batch_sizes={self.batch_sizes!r} must be positive integers")
        need(all(b >= 1 for b in self.block_lengths), f"block_lengths={self.block_lengths!r} must be >= 1")
        need(self.block_length is None or self.block_length >= 1, f"block_length={self.block_length} must be >= 1")
        for t in list(self.thresholds) + [self.threshold]:
            need(t is None or 0 < t <= 1, f"threshold {t} must be in (0, 1] (or none for the fixed schedule)")
        self.autotune_config.validate()
        return self


def quick_config(**overrides) -> BenchConfig:
    """A seconds-long configuration (tests, smoke runs): same sections, tiny sizes."""
    kw = dict(n_prompts=2, sweep_prompts=2, max_new_tokens=12, code_prompt_tokens=24, batch_sizes=[1, 2],
              thresholds=[0.5, 0.9], block_lengths=[2, 4], quadratic_max_block=4,
              autotune_config=AutotuneConfig(candidates=(1, 2, 4), diffusion_candidates=(1, 2, 4), repeats=3,
                                             time_budget=0.2, calibration_tokens=12))
    kw.update(overrides)
    return BenchConfig(**kw)


Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- running
def interleaved(model, prompts: list[list[int]], batch_size: int, settings: list[Setting], max_new_tokens: int,
                baseline=None, repeats: int = 1) -> tuple[dict[str, list[RunRecord]], list[RunRecord], int,
                                                          dict[str, str]]:
    """Every setting (and the baseline) back to back on each batch of prompts.

    The order of the settings rotates from one round to the next, so no engine always runs
    first (or right after another). ``repeats`` rounds per batch; their records are pooled.
    ``settings[0]`` must be AR: its token counts drive the baseline, which runs last on
    each batch. A setting that fails (an engine error) is
    reported, not fatal: it stops running and its error is returned, so one broken setting
    does not cost the whole report. Returns (records per setting label, baseline records,
    batches where the baseline's tokens differ from AR's, errors per setting label).
    """
    if settings[0].mode != "ar":
        raise ValueError("the first setting must be AR (the reference)")
    records: dict[str, list[RunRecord]] = {s.label: [] for s in settings}
    base: list[RunRecord] = []
    errors: dict[str, str] = {}
    mismatches = 0
    rounds = [(i, r) for i in range(0, len(prompts), batch_size) for r in range(repeats)]
    for n, (i, _) in enumerate(rounds):
        chunk = prompts[i:i + batch_size]
        shift = n % len(settings)
        for s in settings[shift:] + settings[:shift]:
            if s.label in errors:
                continue
            try:
                records[s.label].append(s.run(model, chunk, max_new_tokens))
            except RuntimeError as e:
                if s.mode == "ar":
                    raise  # no reference, nothing to compare with
                errors[s.label] = f"{type(e).__name__}: {e} (batch of {len(chunk)}, prompts {i}..{i + len(chunk) - 1})"
        if baseline is not None:
            ar = records[settings[0].label][-1]
            rec = baseline.generate(chunk, [len(g) for g in ar.generated])
            base.append(rec)
            if batch_size == 1 and not baseline.matches(rec, ar):
                mismatches += 1
    return records, base, mismatches, errors


def _row(engine: str, records: list[RunRecord], reference: list[RunRecord] | None = None, tokenizer=None,
         tasks=None, error: str | None = None, repeats: int = 1) -> dict:
    """Metrics of one setting; correctness (identical to AR, accuracy) from the first round of each batch."""
    if error is not None:
        return {"engine": engine, "error": error, "tokens_per_s": None, "tpf": None}
    s = summarize(records).as_dict()
    s["engine"] = engine
    generated = _outputs(records, repeats)
    if reference is not None:
        s["identical_to_ar"] = identical_share(generated, _outputs(reference, repeats))
    if tasks is not None and tokenizer is not None:
        scores = score_rows(tokenizer, tasks, generated)
        s["accuracy"] = sum(scores) / len(scores)
    return s


def _outputs(records: list[RunRecord], repeats: int) -> list[list[int]]:
    """Generated rows in prompt order, once (rounds of one batch are consecutive; greedy repeats are equal)."""
    return [g for r in records[::repeats] for g in r.generated]


def _check_context(model, sets: list[PromptSet], config: BenchConfig) -> None:
    """Prompt + generated tokens must fit the model's context (as ``trimode generate`` requires)."""
    ctx = model.config.max_position_embeddings
    for ps in sets:
        longest = max(len(p) for p in ps.prompts)
        if longest + config.max_new_tokens > ctx:
            raise ValueError(f"{ps.name} prompts (up to {longest} tokens) + max_new_tokens {config.max_new_tokens} "
                             f"exceed the model's context of {ctx} tokens; lower max_new_tokens")


def run_bench(model, tokenizer=None, config: BenchConfig | None = None, *,
              prompt_sets: list[PromptSet] | None = None, model_name: str = "model", log: Log = _stderr) -> dict:
    """Run every section and return the JSON-ready result (``write_bench_report`` renders it).

    ``prompt_sets``: your own prompts (e.g. :func:`.prompts.file_prompt_set`) instead of the
    config's named sets; then ``tokenizer`` is only needed to score task prompts.
    """
    config = (config or BenchConfig()).validate()
    started = time.perf_counter()
    env = environment(model)
    cfg = model.config
    block = config.block_length or cfg.block_size
    threshold = cfg.threshold if config.threshold is None else config.threshold
    if prompt_sets is None:
        if tokenizer is None:
            raise ValueError("run_bench needs a tokenizer to build the named prompt sets, or prompt_sets=")
        prompt_sets = [build_prompt_set(name, tokenizer, config.n_prompts, config.seed, config.code_prompt_tokens,
                                        trained_families(model.config))
                       for name in config.prompt_sets]
    sets = prompt_sets
    if not sets or any(not s.prompts for s in sets):
        raise ValueError("every prompt set needs at least one prompt")
    _check_context(model, sets, config)
    sweep_set = next((s for s in sets if s.name == "tasks"), sets[0]).head(config.sweep_prompts)
    max_new = config.max_new_tokens

    main_settings = [Setting("ar")] + [Setting(m, block, threshold, m == "diffusion")
                                       for m in config.modes if m != "ar"]
    baseline = None
    if config.baseline:
        from .baseline import TransformersBaseline

        log("exporting the AR pathway to transformers (temporary directory) ...")
        baseline = TransformersBaseline(model)
    if config.warmup:
        short = sets[0].prompts[0]
        for s in main_settings:
            s.run(model, [short], 4)
        if baseline is not None:
            baseline.generate([short], [4])

    result: dict = {"kind": "bench", "model": model_name, "environment": env, "config": _config_dict(config),
                    "model_info": {"parameters": sum(p.numel() for p in model.parameters()),
                                   "block_size": cfg.block_size, "threshold": cfg.threshold,
                                   "max_position_embeddings": cfg.max_position_embeddings,
                                   "has_drafter": _has_drafter(model)},
                    "block_length": block, "threshold": threshold, "max_new_tokens": max_new,
                    "baseline": baseline.name if baseline else None,
                    "prompt_sets": {s.name: s.description for s in sets}}

    # 1. main table ---------------------------------------------------------------------------
    main: list[dict] = []
    ar_batch1: dict[str, list[RunRecord]] = {}
    for ps in sets:
        for bs in config.batch_sizes:
            log(f"main: {ps.name} prompts, batch {bs} ...")
            recs, base, mismatches, errors = interleaved(model, ps.prompts, bs, main_settings, max_new, baseline,
                                                         config.repeats)
            ar = recs["ar"]
            if bs == 1:
                ar_batch1[ps.name] = ar
            tasks = ps.tasks
            rows = [_row(s.label, recs[s.label], ar, tokenizer, tasks, errors.get(s.label), config.repeats)
                    | {"mode": s.mode} for s in main_settings]
            if baseline is not None:
                rows.append(_row(f"transformers {baseline.name}.generate()", base, None, tokenizer, None)
                            | {"mode": "transformers", "matches_ar": None if bs > 1 else mismatches == 0})
            ar_rate = rows[0]["tokens_per_s"]
            base_rate = rows[-1]["tokens_per_s"] if baseline is not None else None
            for r in rows:
                r["vs_ar"] = ratio(r["tokens_per_s"], ar_rate)
                r["vs_transformers"] = ratio(r["tokens_per_s"], base_rate)
            main.append({"prompt_set": ps.name, "batch_size": bs, "rows": rows,
                         "baseline_mismatches": mismatches if baseline is not None and bs == 1 else None})
    result["main"] = main

    # 2. SOL ----------------------------------------------------------------------------------
    if config.sol:
        result["sol"] = []
        for ps in sets:
            log(f"SOL: {ps.name} prompts, block {block} ...")
            refs = ar_batch1.get(ps.name) or interleaved(model, ps.prompts, 1, [Setting("ar")], max_new)[0]["ar"]
            sol = _sol_row(model, ps.prompts, _outputs(refs, config.repeats if ps.name in ar_batch1 else 1),
                           block, max_new)
            tpfs = {r["mode"]: r["tpf"] for t in main if t["prompt_set"] == ps.name and t["batch_size"] == 1
                    for r in t["rows"] if r.get("tpf") is not None}
            sol["samplers"] = {m: {"tpf": tpfs[m], "share_of_sol": ratio(tpfs[m], sol["tpf"])}
                               for m in MODES[1:] if m in tpfs}
            result["sol"].append({"prompt_set": ps.name} | sol)

    # 3. threshold sweep ------------------------------------------------------------------------
    if config.thresholds:
        log(f"threshold sweep on {len(sweep_set)} {sweep_set.name} prompts ...")
        settings = [Setting("ar")] + [Setting("diffusion", block, t, True) for t in config.thresholds]
        recs, _, _, errors = interleaved(model, sweep_set.prompts, 1, settings, max_new, repeats=config.repeats)
        rows = [_row(s.label, recs[s.label], recs["ar"], tokenizer, sweep_set.tasks, errors.get(s.label),
                     config.repeats)
                | {"mode": s.mode, "threshold": s.threshold if s.mode == "diffusion" else None} for s in settings]
        for r in rows:
            r["vs_ar"] = ratio(r["tokens_per_s"], rows[0]["tokens_per_s"])
        result["threshold_sweep"] = {"prompt_set": sweep_set.name, "block_length": block, "rows": rows}

    # 4. auto block length ----------------------------------------------------------------------
    profiles = {}
    if config.autotune:
        log("auto block length: forward costs (persisted, or measured) and calibrating acceptance ...")
        auto_rows, choices, auto_modes = [], {}, [m for m in config.modes if m != "ar"]
        for mode in auto_modes:
            profiles[mode] = calibrate(model, mode, sweep_set.prompts, config=config.autotune_config,
                                       max_new_tokens=max_new, threshold=threshold,
                                       source=f"{sweep_set.name} sweep prompts")
            forward_costs(model, mode, config.autotune_config)
            choices[mode] = auto_block_choice(model, mode, config=config.autotune_config)
        settings = [Setting("ar")]
        for mode in auto_modes:
            settings.append(Setting(mode, block, threshold, mode == "diffusion"))
            settings.append(Setting(mode, "auto", threshold, mode == "diffusion"))  # through the engine's "auto"
        recs, _, _, errors = interleaved(model, sweep_set.prompts, 1, _unique(settings), max_new,
                                            repeats=config.repeats)
        ar_rate = summarize(recs["ar"]).tokens_per_s
        for mode in auto_modes:
            choice = choices[mode]
            failed = [errors[s.label] for s in settings[1:] if s.mode == mode and s.label in errors]
            if failed:
                auto_rows.append({"mode": mode, "chosen_block_length": choice.block_length, "error": failed[0],
                                  "default_block_length": block, "candidates": choice.rows})
                continue
            default_rate = summarize(recs[Setting(mode, block, threshold, mode == "diffusion").label]).tokens_per_s
            auto_summary = summarize(recs[Setting(mode, "auto", threshold, mode == "diffusion").label])
            auto_rows.append({"mode": mode, "chosen_block_length": choice.block_length, "default_block_length": block,
                              "predicted_speedup_vs_ar": choice.predicted_speedup,
                              "predicted_gain_vs_default": choice.predicted_gain_over(block),
                              "measured_tokens_per_s": auto_summary.tokens_per_s, "measured_tpf": auto_summary.tpf,
                              "measured_speedup_vs_ar": ratio(auto_summary.tokens_per_s, ar_rate),
                              "measured_gain_vs_default": ratio(auto_summary.tokens_per_s, default_rate),
                              "profile_source": choice.profile_source, "cost_source": choice.cost_source,
                              "timing_source": choice.timing_source, "margin": choice.margin,
                              "fastest_block_length": choice.fastest_block_length, "candidates": choice.rows})
        costs = forward_costs(model, "linear-spec", config.autotune_config)
        cands = sorted({b for c in choices.values() for b in (r["block_length"] for r in c.rows)})
        cost_table = [{"k": k, "write_s": costs("write", k), "relative_to_k1": costs("write", k) / costs("write", 1)}
                      for k in cands]
        result["autotune"] = {"prompt_set": sweep_set.name, "rows": auto_rows, "forward_costs": cost_table,
                              "config": asdict(config.autotune_config)}

    # 5. block-length sweep -----------------------------------------------------------------------
    if config.block_lengths:
        log(f"block-length sweep on {len(sweep_set)} {sweep_set.name} prompts ...")
        settings = [Setting("ar")]
        for mode in (m for m in ("diffusion",) + SPEC_MODES if m in config.modes):
            for b in sorted(set(config.block_lengths)):
                if mode == "quadratic-spec" and b > config.quadratic_max_block:
                    continue
                settings.append(Setting(mode, b, threshold, mode == "diffusion"))
        recs, _, _, errors = interleaved(model, sweep_set.prompts, 1, settings, max_new, repeats=config.repeats)
        refs = _outputs(recs["ar"], config.repeats)
        ar_rate = summarize(recs["ar"]).tokens_per_s
        rows = []
        for s in settings[1:]:
            row = _row(s.label, recs[s.label], recs["ar"], error=errors.get(s.label), repeats=config.repeats) | {
                "mode": s.mode, "block_length": s.block_length}
            row["vs_ar"] = ratio(row["tokens_per_s"], ar_rate)
            prof = profiles.get(s.mode)
            if prof is not None and s.mode in SPEC_MODES and s.block_length <= prof.block_length:
                row["predicted_acceptance"] = prof.tokens_per_cycle(s.block_length)
            rows.append(row)
        sol_rows = []
        if config.sol:
            for b in sorted(set(config.block_lengths)):
                sol_rows.append({"block_length": b} | _sol_row(model, sweep_set.prompts, refs, b, max_new))
        result["block_sweep"] = {"prompt_set": sweep_set.name, "rows": rows, "sol": sol_rows,
                                 "ar_tokens_per_s": ar_rate}

    result["goals"] = goals(result)
    result["elapsed_s"] = time.perf_counter() - started
    result["environment_end"] = {"load_average": environment(model)["load_average"]}
    return result


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


def _unique(settings: list[Setting]) -> list[Setting]:
    seen, out = set(), []
    for s in settings:
        if s.label not in seen:
            seen.add(s.label)
            out.append(s)
    return out


def _has_drafter(model) -> bool:
    named = getattr(model, "named_parameters", None)
    return named is not None and any("lora_" in name for name, _ in named())


def _config_dict(config: BenchConfig) -> dict:
    return asdict(config)


# ---------------------------------------------------------------- goals
def goals(result: dict) -> list[dict]:
    """The issue's goals (batch 1, task prompts), measured in this run: value, target, met."""
    out = []
    main = {(t["prompt_set"], t["batch_size"]): t for t in result.get("main", [])}
    table = main.get(("tasks", 1))
    if table:
        rows = {r["mode"]: r for r in table["rows"]}
        # Every measured speculative setting counts, except block 1, which drafts nothing (it is AR).
        candidates = [(r.get("vs_ar"), r["engine"]) for r in table["rows"] if r["mode"] in SPEC_MODES
                      and result["block_length"] > 1]
        candidates += [(r.get("vs_ar"), r["engine"]) for r in result.get("block_sweep", {}).get("rows", [])
                       if r["mode"] in SPEC_MODES and r.get("block_length", 2) > 1]
        candidates += [(r.get("measured_speedup_vs_ar"), f"{r['mode']} B=auto({r['chosen_block_length']})")
                       for r in result.get("autotune", {}).get("rows", [])
                       if r["mode"] in SPEC_MODES and r["chosen_block_length"] > 1]
        candidates = [c for c in candidates if c[0] is not None]
        if candidates:
            best = max(candidates)
            out.append({"goal": "best speculative mode tokens/s / trimode AR tokens/s", "target": 2.0,
                        "value": best[0], "met": best[0] >= 2.0, "detail": best[1]})
        if "transformers" in rows:
            v = rows["ar"].get("vs_transformers")
            out.append({"goal": "trimode AR tokens/s / transformers generate() tokens/s", "target": 1.3,
                        "value": v, "met": v is not None and v >= 1.3, "detail": rows["transformers"]["engine"]})
    for sol in result.get("sol", []):
        if sol["prompt_set"] == "tasks" and "linear-spec" in sol.get("samplers", {}):
            v = sol["samplers"]["linear-spec"]["share_of_sol"]
            out.append({"goal": f"linear self-speculation TPF / SOL TPF (block {result['block_length']})",
                        "target": 0.8, "value": v, "met": v is not None and v >= 0.8, "detail": ""})
    return out


def write_bench_report(result: dict, out_dir: str | Path, command: str, plots: bool = True) -> list[Path]:
    """Write bench.json, bench.md, RESULTS.md (and PNG plots) into ``out_dir``; return the paths."""
    from .report import write_bench_files

    return write_bench_files(result, Path(out_dir), command, plots)
