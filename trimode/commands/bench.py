"""``trimode bench``: speed of every mode against SOL and transformers generate(), with sweeps and plots.

A thin wrapper over :func:`trimode.evaluation.bench.run_bench`. The settings' flags are generated from
:class:`~trimode.evaluation.bench_config.BenchConfig` by
:class:`~trimode.commands.config_flags.ConfigFlags` (names, types, bounds, choices, help); an option left
out keeps the config's default (or the ``--quick`` one).

``--forward-costs`` runs only the forward-cost curve instead
(:mod:`trimode.evaluation.forward_costs`): what one forward of k new tokens
costs on this machine, printed, written as JSON and PNG, and persisted as the
curve ``block_length="auto"`` decides from. Its flags come from
:class:`~trimode.evaluation.bench_config.CurveConfig` the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.bench_config import BenchConfig, CurveConfig, quick_config, quick_curve_config
from ..evaluation.cliargs import add_common_arguments, default_out_dir
from .common import add_model_arguments, load_model
from .config_flags import NO_FLAG, ConfigFlags, Flag

DESCRIPTION = ("Benchmark every decoding mode on held-out task and code prompts: nfe, TPF, acceptance, "
               "drafted/accepted/rolled back, TTFT, latency P50/P95, tokens/s, against the SOL oracle and "
               "transformers generate() on the same weights, in the same run; threshold and block-length sweeps; "
               "auto block length. Writes bench.md, bench.json, RESULTS.md and PNG plots.")
FORWARD_COSTS_HELP = ("instead of the benchmark: time one forward of k new tokens after a cached prefix, per k, on "
                      "this machine for this model (median and min of the rounds, ratio to k=1, tokens/s, roofline "
                      "of k=1 from the measured memory bandwidth); prints a table, writes forward_costs.json and "
                      "forward_costs.png, and saves the curve that block_length=\"auto\" decides from")

# Where a flag departs from its field (see trimode.commands.config_flags), by field path. Every flag
# defaults to "not given" (given_only): the config's default applies, or --quick's.
BENCH = ConfigFlags(BenchConfig, {"quadratic_max_block": NO_FLAG, "autotune_config": NO_FLAG, "warmup": NO_FLAG},
                    given_only=True)
CURVE = ConfigFlags(CurveConfig, {"ks": Flag(metavar="K,K,..."), "prefix_tokens": Flag(metavar="N"),
                                  "repeats": Flag(shared=True), "seed": Flag(shared=True),
                                  "bandwidth_bytes": NO_FLAG, "bandwidth_repeats": NO_FLAG},
                    given_only=True, context="with --forward-costs")


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark every mode: TPF, acceptance, latency, tokens/s, SOL, sweeps",
                       description=DESCRIPTION)
    add_model_arguments(p)
    add_common_arguments(p)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="benchmark your own prompts instead: one per line, or JSONL with a \"prompt\" field")
    p.add_argument("--chat", action="store_true", help="wrap --prompts-file prompts with the chat template")
    BENCH.add_to(p)
    f = p.add_argument_group("forward costs", "measure only the cost of one forward per number of new tokens k")
    f.add_argument("--forward-costs", action="store_true", help=FORWARD_COSTS_HELP)
    CURVE.add_to(f)
    p.set_defaults(func=run, _parser=p)


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` the options describe."""
    return (quick_config if args.quick else BenchConfig)(**BENCH.values(args))


def curve_config(args: argparse.Namespace) -> CurveConfig:
    """The :class:`CurveConfig` of ``--forward-costs``."""
    return (quick_curve_config if args.quick else CurveConfig)(**CURVE.values(args))


def run_forward_costs(args: argparse.Namespace) -> int:
    from ..evaluation.forward_costs import format_table, measure_curve, refresh_store, write_curve

    config = curve_config(args)
    loaded = load_model(args, drafter=not args.no_drafter)
    result, samples = measure_curve(loaded.model, config, model_name=loaded.name)
    out = Path(args.out) if args.out else default_out_dir(loaded.name)
    paths = write_curve(result, out, plots=not args.no_plots)
    store = refresh_store(loaded.model, samples, config.prefix_tokens)
    print(format_table(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    if store is None:
        print("the curve could not be saved for block_length=\"auto\" (see the warning above)")
    else:
        print(f"saved for block_length=\"auto\" (prefix {config.prefix_tokens}): {store}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..evaluation.bench import run_bench, write_bench_report
    from ..evaluation.environment import command_line

    if args.forward_costs:
        return run_forward_costs(args)
    given = CURVE.given(args)
    if given:
        raise ValueError(f"{given[0]} applies to --forward-costs only")
    config = bench_config(args)
    loaded = load_model(args, need="to build its prompts", drafter=not args.no_drafter)
    command = command_line("bench", args, args._parser)
    name = loaded.name
    sets = None
    if args.prompts_file:
        from ..evaluation.prompts import file_prompt_set

        sets = [file_prompt_set(loaded.tokenizer, args.prompts_file, chat=args.chat)]
    elif args.chat:
        raise ValueError("--chat applies to --prompts-file only (task prompts always use the chat format)")
    result = run_bench(loaded.model, loaded.tokenizer, config, prompt_sets=sets, model_name=name)
    out = Path(args.out) if args.out else default_out_dir(name)
    paths = write_bench_report(result, out, command, plots=config.plots)
    print(Path(out, "RESULTS.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
