"""Rendering results as files: JSON, markdown reports, the one-minute RESULTS.md, PNG plots.

Every markdown report starts with the exact command that produced it and the
environment manifest, so a number can always be traced to a machine and a
commit. Times are shown in milliseconds, rates with one decimal, ratios with
two; missing values as "-".
"""

from __future__ import annotations

import json
from pathlib import Path

from ..generation.names import SPECULATIVE_MODES
from .environment import environment_markdown


def _f(v, spec: str = ".2f", scale: float = 1.0, suffix: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f"{v * scale:{spec}}{suffix}"
    return str(v)


def _ms(v) -> str:
    return _f(v, ".1f", 1e3)


def _x(v) -> str:
    return _f(v, ".2f", suffix="x")


def header(title: str, command: str, env: dict) -> list[str]:
    return [f"# {title}", "", "Command:", "", "```", command, "```", "", "## Environment", "",
            environment_markdown(env), ""]


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


# ---------------------------------------------------------------- eval
def write_eval_files(result: dict, out_dir: Path, command: str) -> list[Path]:
    """eval.json and eval.md of `trimode eval` on a text model (:func:`~.accuracy.evaluate`'s result)."""
    from .accuracy import eval_markdown

    sections = [("Accuracy on held-out tasks", eval_markdown(result))]
    if result.get("humaneval"):  # `trimode eval --humaneval`
        from .humaneval import humaneval_markdown

        sections.append(("HumanEval pass@1", humaneval_markdown(result["humaneval"])))
    return _write_report("eval", result, out_dir, command, sections)


def write_image_eval_files(result: dict, out_dir: Path, command: str) -> list[Path]:
    """eval.json and eval.md of `trimode eval` on a vision-language model
    (:func:`~.image_eval.evaluate_image_config`'s result)."""
    from .image_eval import image_eval_markdown

    return _write_report("eval", result, out_dir, command,
                         [("Accuracy on held-out image tasks", image_eval_markdown(result))])


def write_image_bench_files(result: dict, out_dir: Path, command: str) -> list[Path]:
    """bench.json and bench.md of `trimode bench` on a vision-language model
    (:func:`~.image_eval.evaluate_image_bench`'s result): one row per mode, prefill apart from decode."""
    from .image_eval import image_eval_markdown

    return _write_report("bench", result, out_dir, command,
                         [("Every mode on held-out image tasks", image_eval_markdown(result))])


def _write_report(command_name: str, result: dict, out_dir: Path, command: str,
                  sections: list[tuple[str, str]]) -> list[Path]:
    """<command_name>.json (``result``) and <command_name>.md (e.g. eval.md): the header (``trimode
    <command_name>: <model>``, the command, the environment), one ``## title`` per section."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = header(f"trimode {command_name}: {result.get('model', 'model')}", command, result["environment"])
    for title, body in sections:
        md += [f"## {title}", "", body, ""]
    md += [f"Finished in {result['elapsed_s']:.1f} s."]
    return [write_json(out_dir / f"{command_name}.json", result), _write(out_dir / f"{command_name}.md", md)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- bench
MAIN_COLUMNS = ["engine", "tokens", "nfe", "prefill fwd", "TPF", "accept mean", "drafted / accepted / rolled back",
                "TTFT P50 ms", "latency P50 ms", "latency P95 ms", "tok/s", "vs AR", "vs transformers",
                "identical to AR"]


def _error_row(r: dict, width: int) -> list[str]:
    """A table row for a setting that failed: its label, the error, dashes."""
    return [r["engine"], f"**error**: {r['error']}"] + ["-"] * (width - 2)


def _main_row(r: dict) -> list[str]:
    if "error" in r:
        return _error_row(r, len(MAIN_COLUMNS))
    drafts = f"{r['drafted']} / {r['accepted']} / {r['rolled_back']}" if r["drafted"] else "-"
    is_base = r["mode"] == "transformers"
    return [r["engine"] + (" (accuracy " + _f(r["accuracy"], ".0%") + ")" if "accuracy" in r else ""),
            str(r["tokens"]), "-" if is_base else str(r["nfe"]), "-" if is_base else str(r["prefill_forwards"]),
            "-" if is_base else _f(r["tpf"]), "-" if is_base else _f(r["mean_acceptance"]), drafts,
            _ms(r["ttft_p50"]), _ms(r["latency_p50"]), _ms(r["latency_p95"]), _f(r["tokens_per_s"], ".1f"),
            _x(r["vs_ar"]), _x(r["vs_transformers"]), _f(r.get("identical_to_ar"), ".0%")]


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def bench_markdown(result: dict, command: str, plots: dict[str, str]) -> list[str]:
    """bench.md: the command, the environment, then one section per part of the run (``plots``: PNG names)."""
    md = header(f"trimode bench: {result['model']}", command, result["environment"])
    md += _setup_section(result)
    md += _main_section(result, plots)
    if result.get("sol"):
        md += _sol_section(result)
    if result.get("threshold_sweep"):
        md += _threshold_sweep_section(result["threshold_sweep"], plots)
    if result.get("autotune"):
        md += _autotune_section(result["autotune"], plots)
    if result.get("block_sweep"):
        md += _block_sweep_section(result["block_sweep"], plots)
    md += [f"Finished in {result['elapsed_s']:.0f} s."]
    return md


def _plot(plots: dict[str, str], key: str, alt: str) -> list[str]:
    """The markdown image of plot ``key`` and a blank line, or nothing when it was not drawn."""
    return [f"![{alt}]({plots[key]})", ""] if key in plots else []


def _setup_section(result: dict) -> list[str]:
    info = result["model_info"]
    return ["## Setup", "",
            f"- model: {info['parameters'] / 1e6:.2f}M parameters, config block_size {info['block_size']}, "
            f"threshold {info['threshold']}, LoRA drafter: {'yes' if info['has_drafter'] else 'no'}",
            f"- decoding: greedy, max_new_tokens {result['max_new_tokens']} (rows also stop at EOS), "
            f"block length {result['block_length']}, diffusion threshold {result['threshold']}",
            *[f"- prompts `{k}`: {v}" for k, v in result["prompt_sets"].items()],
            f"- baseline: {result['baseline'] or 'off'} (same weights, exported to a temporary directory and "
            f"loaded with `from_pretrained`), interleaved call by call with trimode's runs",
            f"- load average at start / end: {result['environment']['load_average']} / "
            f"{result['environment_end']['load_average']}"
            + (" (busy machine: another process competed for the CPU, timings are noisy)"
               if _busy(result["environment"]) else ""), ""]


def _main_section(result: dict, plots: dict[str, str]) -> list[str]:
    md = ["## Every mode, same prompts, same run", "",
          "TPF = generated tokens / forwards (prefill included; prompt tokens never count). Accept mean = tokens "
          "per cycle and row, bonus included (AR = 1; a diffusion block emits the whole block). tok/s = generated "
          "tokens / wall time around the calls. Ratios are within the same table (same prompts, same batch).", ""]
    for table in result["main"]:
        md += _main_table(table)
    return md + _plot(plots, "acceptance", "acceptance histograms")


def _main_table(table: dict) -> list[str]:
    """One prompt set at one batch size: the table, a baseline warning, the acceptance histograms."""
    md = [f"### {table['prompt_set']} prompts, batch {table['batch_size']}", ""]
    md += _table(MAIN_COLUMNS, [_main_row(r) for r in table["rows"]])
    if table.get("baseline_mismatches"):
        md += ["", f"Warning: on {table['baseline_mismatches']} prompt(s) transformers' greedy tokens differ "
               "from trimode AR's (near-tie argmax flips between the two numerics)."]
    hist = [f"`{r['engine']}`: {r['acceptance_histogram']}" for r in table["rows"]
            if r["mode"] in SPECULATIVE_MODES and "error" not in r]
    if hist:
        md += ["", "Acceptance-length histograms (length: cycles): " + "; ".join(hist)]
    return md + [""]


def _sol_section(result: dict) -> list[str]:
    md = ["## SOL: oracle diffusion TPF at the same block length", "",
          "The oracle commits, at every denoising step, every masked position whose argmax already equals the "
          "AR greedy reference (and the leftmost one with the reference token if none does): an upper bound "
          "for samplers that keep AR's output. A lossy sampler (diffusion at a low threshold, committing tokens "
          "AR would not) can exceed it, and so can quadratic self-speculation, which spends one forward per "
          "cycle where diffusion spends at least a denoise and a write. Batch 1.", ""]
    rows = []
    for s in result["sol"]:
        samplers = ", ".join(f"{m} {v['tpf']:.2f} ({_f(v['share_of_sol'], '.0%')} of SOL)"
                             for m, v in s["samplers"].items())
        rows.append([s["prompt_set"], str(result["block_length"]), _f(s["tpf"]), samplers or "-",
                     _f(s["reference_reproduced"], ".0%")])
    md += _table(["prompts", "block", "SOL TPF", "sampler TPF (share of SOL)", "oracle reproduced AR"], rows)
    return md + [""]


def _threshold_sweep_section(sw: dict, plots: dict[str, str]) -> list[str]:
    md = [f"## Threshold sweep (diffusion, block {sw['block_length']}, {sw['prompt_set']} prompts, batch 1)", ""]
    rows = [_error_row(r, 6) if "error" in r else
            [r["engine"], _f(r["tpf"]), _f(r["tokens_per_s"], ".1f"), _x(r["vs_ar"]),
             _f(r.get("accuracy"), ".0%"), _f(r.get("identical_to_ar"), ".0%")] for r in sw["rows"]]
    md += _table(["setting", "TPF", "tok/s", "vs AR", "accuracy", "identical to AR"], rows) + [""]
    return md + _plot(plots, "threshold", "threshold sweep")


def _autotune_section(at: dict, plots: dict[str, str]) -> list[str]:
    """The chosen B per mode (predicted and measured), the forward costs, each mode's predictions."""
    md = ["## Auto block length (`block_length=\"auto\"`)", "",
          f"Forward costs measured on this machine; acceptance calibrated on the {at['prompt_set']} sweep "
          "prompts. "
          "Speculative modes: one calibration run at the largest candidate; a cycle that accepted r drafts is a "
          "streak of r + 1 tokens, which block B emits in ceil((r + 1) / B) cycles, so predicted tokens per "
          "cycle = sum(r + 1) / sum(ceil((r + 1) / B)) (assumes drafts do not depend on the block). Diffusion "
          "runs every candidate. Per-cycle overhead outside the forwards is measured in the calibration run. "
          "The chosen B is then run through the engine's `block_length=\"auto\"`, interleaved with AR and "
          "the config's block.", ""]
    rows = [_error_row(dict(r, engine=r["mode"]), 7) if "error" in r else
            [r["mode"], str(r["chosen_block_length"]), str(r["default_block_length"]),
             _x(r["predicted_speedup_vs_ar"]), _x(r["measured_speedup_vs_ar"]),
             _x(r["predicted_gain_vs_default"]), _x(r["measured_gain_vs_default"])] for r in at["rows"]]
    md += _table(["mode", "chosen B", "config B", "predicted vs AR", "measured vs AR", "predicted vs config B",
                  "measured vs config B"], rows) + [""]
    md += ["Cost of one causal write forward of k tokens after a cached prefix, relative to k = 1:", ""]
    md += _table(["k", "ms", "relative"], [[str(c["k"]), _ms(c["write_s"]), _x(c["relative_to_k1"])]
                                            for c in at["forward_costs"]]) + [""]
    for r in at["rows"]:
        md += [f"Predictions for {r['mode']}:", ""]
        md += _table(["B", "tokens / cycle", "ms / cycle", "predicted vs AR"],
                     [[str(c["block_length"]), _f(c["tokens_per_cycle"]), _ms(c["seconds_per_cycle"]),
                       _x(c["speedup_vs_ar"])] for c in r["candidates"]]) + [""]
    return md + _plot(plots, "autotune", "auto block length")


def _block_sweep_section(bs: dict, plots: dict[str, str]) -> list[str]:
    md = [f"## Block-length sweep ({bs['prompt_set']} prompts, batch 1)", "",
          "`accept mean` is measured; `predicted` is what the auto block length's approximation expected from "
          "its calibration run (speculative modes).", ""]
    rows = [_error_row(r, 6) if "error" in r else
            [r["engine"], _f(r["tpf"]), _f(r["mean_acceptance"]), _f(r.get("predicted_acceptance")),
             _f(r["tokens_per_s"], ".1f"), _x(r["vs_ar"])] for r in bs["rows"]]
    md += _table(["setting", "TPF", "accept mean", "predicted", "tok/s", "vs AR"], rows) + [""]
    if bs.get("sol"):
        md += _table(["block", "SOL TPF"], [[str(s["block_length"]), _f(s["tpf"])] for s in bs["sol"]]) + [""]
    return md + _plot(plots, "blocks", "block-length sweep")


def _busy(env: dict) -> bool:
    """Load average (1 min) at the start above half the cores: another process competed for the CPU."""
    load, cores = env.get("load_average"), env.get("cpu_count") or 1
    return bool(load) and load[0] > 0.5 * cores


def results_markdown(result: dict, command: str, evaluation: dict | None = None) -> list[str]:
    """RESULTS.md: what a newcomer needs in one minute (with the accuracy of ``evaluation``, an eval result)."""
    env = result["environment"]
    md = [f"# Results in one minute: {result['model']}", "",
          f"`{command}` on {env['cpu']} (threads: {env['threads']}, torch {env['torch']}, {env['dtype']}, "
          f"commit {env['commit']}). Full report: [bench.md](bench.md).", ""]
    if _busy(env):
        md += [f"Warning: the machine was busy when this ran (load average {env['load_average']} on "
               f"{env['cpu_count']} cores): timings are noisy (beside other processes, `--threads 1` is steadier).",
               ""]
    table = next((t for t in result.get("main", []) if t["batch_size"] == 1), None)
    if table:
        md += [f"Batch 1, {table['prompt_set']} prompts, greedy, {result['max_new_tokens']} new tokens, block "
               f"{result['block_length']}:", ""]
        md += _table(["engine", "TPF", "accept mean", "tok/s", "vs AR", "vs transformers"],
                     [_error_row(r, 6) if "error" in r else
                      [r["engine"], "-" if r["mode"] == "transformers" else _f(r["tpf"]),
                       "-" if r["mode"] == "transformers" else _f(r["mean_acceptance"]),
                       _f(r["tokens_per_s"], ".1f"), _x(r["vs_ar"]), _x(r["vs_transformers"])]
                      for r in table["rows"]]) + [""]
    for r in result.get("autotune", {}).get("rows", []):
        if "error" in r:
            md.append(f"- `block_length=\"auto\"` for {r['mode']}: **error** {r['error']}")
            continue
        same = r["chosen_block_length"] == r["default_block_length"]
        versus = (f"the config's block already (the two identical runs differ by "
                  f"{_x(r['measured_gain_vs_default'])}: run-to-run noise)" if same else
                  f"{_x(r['measured_gain_vs_default'])} the config's B={r['default_block_length']}")
        md.append(f"- `block_length=\"auto\"` picks B={r['chosen_block_length']} for {r['mode']} on this machine: "
                  f"{_x(r['measured_speedup_vs_ar'])} AR tokens/s (predicted {_x(r['predicted_speedup_vs_ar'])}), "
                  f"{versus}.")
    for s in result.get("sol", []):
        md.append(f"- SOL (oracle diffusion) TPF on {s['prompt_set']} prompts at block {result['block_length']}: "
                  f"{s['tpf']:.2f}; " + ", ".join(f"{m} reaches {_f(v['share_of_sol'], '.0%')}"
                                                  for m, v in s["samplers"].items()) + ".")
    if evaluation and "rows" in evaluation:  # a text eval (an image eval's eval.json has no rows to quote)
        md += ["", f"Accuracy on held-out tasks (`{evaluation.get('command', 'trimode eval')}`, "
               "[eval.md](eval.md)): " + ", ".join(
                   f"{r['setting']} {r['accuracy']:.0%}" + (f" ({r['identical_to_ar']:.0%} identical to AR)"
                                                            if r["mode"] == "diffusion" else "")
                   for r in evaluation["rows"]) + "."]
        if evaluation.get("humaneval"):
            he = evaluation["humaneval"]
            md += ["", f"HumanEval pass@1 (first {he['n_problems']} problems): " + ", ".join(
                f"{r['setting']} {r['pass_at_1']:.0%}" for r in he["rows"] if r["requested"]) + "."]
    md += ["", "Read ratios, not absolute times: on a shared 2-core machine timings move by 10-25% between runs."]
    return md


def write_bench_files(result: dict, out_dir: Path, command: str, plots: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    result = dict(result, command=command)
    written, plot_names = [], {}
    if plots:
        from .plots import bench_plots

        for key, path in bench_plots(result, out_dir).items():
            plot_names[key] = path.name
            written.append(path)
    written.append(write_json(out_dir / "bench.json", result))
    written.append(_write(out_dir / "bench.md", bench_markdown(result, command, plot_names)))
    evaluation = None
    if (out_dir / "eval.json").is_file():  # `trimode eval` into the same directory: quote its accuracy
        try:
            evaluation = json.loads((out_dir / "eval.json").read_text())
        except (OSError, json.JSONDecodeError):
            evaluation = None
    written.append(_write(out_dir / "RESULTS.md", results_markdown(result, command, evaluation)))
    return written
