"""PNG plots of a bench result (matplotlib, Agg backend: no display needed).

- ``acceptance_histograms.png``: acceptance-length histograms of the speculative
  modes (task prompts, batch 1), as shares of cycles.
- ``threshold_sweep.png``: the diffusion speed/accuracy frontier (speedup over
  AR against accuracy, one point per threshold) and TPF per threshold with SOL.
- ``block_sweep.png``: TPF per block length for each mode beside SOL, and
  speedup over AR per block length.
- ``autotune.png``: predicted speedup per candidate block (auto block length)
  with the measured speedups of the block sweep on top.
- ``forward_costs.png`` (``trimode bench --forward-costs``): ms of one forward
  of k new tokens, and its ratio to k = 1 beside the flat line (a forward of k
  tokens costing what one of 1 does) and the proportional one (k times).

matplotlib is imported lazily, so the rest of the harness runs without it
(``--no-plots``).
"""

from __future__ import annotations

from pathlib import Path

from ..generation.names import SPECULATIVE_MODES

KIND_COLORS = {"write": "tab:blue", "peek": "tab:purple", "quadratic": "tab:green"}
COLORS = {"ar": "black", "diffusion": "tab:orange", "linear-spec": "tab:blue", "quadratic-spec": "tab:green",
          "sol": "tab:red", "transformers": "tab:gray"}


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install matplotlib (or run with --no-plots)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bench_plots(result: dict, out_dir: Path) -> dict[str, Path]:
    """Write every plot the result has data for; returns {key: path}."""
    out = {}
    for key, fn in (("acceptance", _acceptance), ("threshold", _thresholds), ("blocks", _blocks),
                    ("autotune", _autotune)):
        path = fn(result, out_dir)
        if path is not None:
            out[key] = path
    return out


def _acceptance(result: dict, out_dir: Path) -> Path | None:
    table = next((t for t in result.get("main", []) if t["batch_size"] == 1 and t["prompt_set"] == "tasks"),
                 next((t for t in result.get("main", []) if t["batch_size"] == 1), None))
    rows = [r for r in (table or {}).get("rows", []) if r["mode"] in SPECULATIVE_MODES
            and "error" not in r]
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.5), squeeze=False)
    for ax, r in zip(axes[0], rows):
        hist = {int(k): v for k, v in r["acceptance_histogram"].items()}
        total = sum(hist.values()) or 1
        ax.bar(list(hist), [v / total for v in hist.values()], color=COLORS[r["mode"]])
        ax.set_title(f"{r['engine']}\nmean {r['mean_acceptance']:.2f} tokens / cycle")
        ax.set_xlabel("acceptance length (tokens per cycle, bonus included)")
        ax.set_ylabel("share of cycles")
    fig.suptitle(f"Acceptance lengths, {table['prompt_set']} prompts, batch 1")
    return _save(fig, plt, out_dir / "acceptance_histograms.png")


def _thresholds(result: dict, out_dir: Path) -> Path | None:
    sw = result.get("threshold_sweep")
    if not sw:
        return None
    plt = _pyplot()
    diff = [r for r in sw["rows"] if r["mode"] == "diffusion" and "error" not in r]
    ar = next(r for r in sw["rows"] if r["mode"] == "ar")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    has_acc = "accuracy" in ar
    ys = [r.get("accuracy", r.get("identical_to_ar")) for r in diff]
    a1.plot([r["vs_ar"] for r in diff], ys, "o-", color=COLORS["diffusion"], label="diffusion")
    for r, y in zip(diff, ys):
        a1.annotate("fixed" if r["threshold"] is None else f"t={r['threshold']:g}", (r["vs_ar"], y),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    a1.plot([1.0], [ar.get("accuracy", 1.0)], "s", color=COLORS["ar"], label="AR")
    a1.set_xlabel("tokens/s relative to AR (same run)")
    a1.set_ylabel("accuracy (exact match)" if has_acc else "identical to AR greedy")
    a1.set_title("Speed / accuracy frontier")
    a1.legend()
    xs = [r["threshold"] if r["threshold"] is not None else 0.0 for r in diff]
    a2.plot(xs, [r["tpf"] for r in diff], "o-", color=COLORS["diffusion"], label="diffusion TPF")
    sol = next((s for s in result.get("sol", []) if s["prompt_set"] == sw["prompt_set"]), None)
    if sol:
        a2.axhline(sol["tpf"], color=COLORS["sol"], ls="--", label="SOL TPF")
    a2.set_xlabel("threshold (0 = fixed schedule)")
    a2.set_ylabel("tokens per forward")
    a2.set_title(f"TPF per threshold, block {sw['block_length']}")
    a2.legend()
    return _save(fig, plt, out_dir / "threshold_sweep.png")


def _blocks(result: dict, out_dir: Path) -> Path | None:
    bs = result.get("block_sweep")
    if not bs or not bs["rows"]:
        return None
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in ("diffusion",) + SPECULATIVE_MODES:
        rows = [r for r in bs["rows"] if r["mode"] == mode and "error" not in r]
        if rows:
            a1.plot([r["block_length"] for r in rows], [r["tpf"] for r in rows], "o-", color=COLORS[mode], label=mode)
            a2.plot([r["block_length"] for r in rows], [r["vs_ar"] for r in rows], "o-", color=COLORS[mode],
                    label=mode)
    if bs.get("sol"):
        a1.plot([s["block_length"] for s in bs["sol"]], [s["tpf"] for s in bs["sol"]], "s--", color=COLORS["sol"],
                label="SOL (oracle diffusion)")
    a2.axhline(1.0, color=COLORS["ar"], ls=":", label="AR")
    blocks = sorted({r["block_length"] for r in bs["rows"]})
    for ax in (a1, a2):
        _block_axis(ax, blocks)
        ax.legend(fontsize=8)
    a1.set_ylabel("tokens per forward")
    a1.set_title("TPF per block length")
    a2.set_ylabel("tokens/s relative to AR (same run)")
    a2.set_title("Wall-clock speedup per block length")
    return _save(fig, plt, out_dir / "block_sweep.png")


def _autotune(result: dict, out_dir: Path) -> Path | None:
    at = result.get("autotune")
    if not at or not at["rows"]:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    measured = result.get("block_sweep", {}).get("rows", [])
    for r in at["rows"]:
        c = COLORS[r["mode"]]
        ax.plot([x["block_length"] for x in r["candidates"]], [x["speedup_vs_ar"] for x in r["candidates"]], "--",
                color=c, label=f"{r['mode']} predicted (chose B={r['chosen_block_length']})")
        m = [x for x in measured if x["mode"] == r["mode"] and "error" not in x]
        if m:
            ax.plot([x["block_length"] for x in m], [x["vs_ar"] for x in m], "o", color=c,
                    label=f"{r['mode']} measured")
    ax.axhline(1.0, color=COLORS["ar"], ls=":", label="AR")
    _block_axis(ax, sorted({x["block_length"] for r in at["rows"] for x in r["candidates"]}))
    ax.set_ylabel("tokens/s relative to AR")
    ax.set_title("Auto block length: prediction vs measurement")
    ax.legend(fontsize=7)
    return _save(fig, plt, out_dir / "autotune.png")


def forward_cost_plot(result: dict, path: Path) -> Path:
    """The forward-cost curve (a :class:`.forward_costs.ForwardCosts` as a dict): ms vs k, ratio vs k."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    kinds = list(dict.fromkeys(p["kind"] for p in result["points"]))
    for kind in kinds:
        pts = [p for p in result["points"] if p["kind"] == kind]
        ks, color = [p["k"] for p in pts], KIND_COLORS.get(kind)
        a1.plot(ks, [p["median_ms"] for p in pts], "o-", color=color, label=f"{kind} (median)")
        a1.plot(ks, [p["min_ms"] for p in pts], ".:", color=color, label=f"{kind} (min)")
        a2.plot(ks, [p["ratio"] for p in pts], "o-", color=color, label=kind)
    ks = sorted({p["k"] for p in result["points"]})
    roof = result.get("roofline")
    if roof:
        a1.axhline(roof["k1_roofline_ms"], color="tab:red", ls="--", label="roofline k=1 (bytes / bandwidth)")
    a2.plot(ks, [1.0] * len(ks), "--", color="gray", label="flat: k tokens cost what 1 does")
    a2.plot(ks, ks, ":", color="gray", label="proportional: k times k = 1")
    for ax in (a1, a2):
        _block_axis(ax, ks, "k (new tokens per forward)")
        ax.legend(fontsize=7)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    a1.set_yscale("log")
    a1.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 40, not 4 x 10^1
    a1.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "2468" else ""))
    a1.set_ylabel("ms per forward")
    a1.set_title(f"One forward after a {result['prefix_tokens']}-token cached prefix")
    a2.set_yscale("log", base=2)
    a2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    a2.yaxis.set_minor_formatter(NullFormatter())
    a2.set_ylabel("cost relative to k = 1 (median)")
    a2.set_title("Cost ratio to k = 1")
    m = result["machine"]
    threads = f"{m['threads']} thread" + ("s" if m["threads"] != 1 else "")
    fig.suptitle(f"{m['model']} ({m['dtype']}) on {m['device_name']}, {threads}", fontsize=9)
    return _save(fig, plt, Path(path))


def _block_axis(ax, blocks: list[int], label: str = "block length") -> None:
    """Log2 x axis labelled with the block lengths themselves (not 2^k)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(blocks)
    ax.set_xticklabels([str(b) for b in blocks])
    ax.minorticks_off()
    ax.set_xlabel(label)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
