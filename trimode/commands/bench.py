"""``trimode bench``: speed of every mode against SOL and transformers generate(), with sweeps and plots.

A thin wrapper over :func:`trimode.evaluation.bench.run_bench`: options map
one to one onto :class:`~trimode.evaluation.bench.BenchConfig` fields; an
option left out keeps the config's default (or the ``--quick`` one).

``--forward-costs`` runs only the forward-cost curve instead
(:mod:`trimode.evaluation.forward_costs`): what one forward of k new tokens
costs on this machine, printed, written as JSON and PNG, and persisted as the
curve ``block_length="auto"`` decides from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.cliargs import add_common_arguments, apply_options, comma_list, default_out_dir
from .common import MODE_CHOICES, add_model_arguments, load_model, positive_int, probability, threshold_value

# The forward kinds of trimode.generation.forward_timing.KINDS, spelled out: building the parser
# must not import torch (tests/evaluation/test_forward_costs.py checks they agree).
FORWARD_KINDS = ["write", "peek", "quadratic"]
K_EXAMPLE = "1,2,4,8,16,32,64"


def k_values(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers, the new tokens per forward."""
    values = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            k = int(item)
        except ValueError:
            k = 0
        if k < 1:
            raise argparse.ArgumentTypeError(f"{item!r} is not a valid k: k values are positive integers (new "
                                             f"tokens per forward), comma-separated, e.g. {K_EXAMPLE}")
        values.append(k)
    if not values:
        raise argparse.ArgumentTypeError(f"no k values: give positive integers, comma-separated, e.g. {K_EXAMPLE}")
    return values


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark every mode: TPF, acceptance, latency, tokens/s, SOL, sweeps",
                       description="Benchmark every decoding mode on held-out task and code prompts: nfe, TPF, "
                                   "acceptance, drafted/accepted/rolled back, TTFT, latency P50/P95, tokens/s, "
                                   "against the SOL oracle and transformers generate() on the same weights, "
                                   "in the same run; threshold and block-length sweeps; auto block length. "
                                   "Writes bench.md, bench.json, RESULTS.md and PNG plots.")
    add_model_arguments(p)
    add_common_arguments(p)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--prompt-sets", type=comma_list(str, ["tasks", "code", "humaneval"]), default=None,
                   help="comma list of prompt sets: tasks, code, humaneval (default: tasks,code; humaneval "
                        "needs pip install -e \".[humaneval]\")")
    p.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="benchmark your own prompts instead: one per line, or JSONL with a \"prompt\" field")
    p.add_argument("--chat", action="store_true", help="wrap --prompts-file prompts with the chat template")
    p.add_argument("--n-prompts", type=positive_int, default=None, help="prompts per set (default 6)")
    p.add_argument("--sweep-prompts", type=positive_int, default=None,
                   help="task prompts for the sweeps and auto block length (default 4)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="new tokens per prompt (default 64)")
    p.add_argument("--code-prompt-tokens", type=positive_int, default=None, help="tokens per code prompt (default 64)")
    p.add_argument("--batch-sizes", type=comma_list(positive_int), default=None, help="comma list (default 1,4)")
    p.add_argument("--modes", type=comma_list(str, MODE_CHOICES), default=None,
                   help="comma list of modes (default: all four; AR always runs)")
    p.add_argument("--block-length", type=positive_int, default=None, help="block length (default: config)")
    p.add_argument("--threshold", type=probability, default=None,
                   help="diffusion threshold in (0, 1] of the main table (default: config; the fixed schedule "
                        "is in the sweep: --thresholds none)")
    p.add_argument("--thresholds", type=comma_list(threshold_value), default=None,
                   help="threshold sweep, comma list, 'none' = fixed schedule (default 0.3,0.5,0.7,0.9,0.95; "
                        "'' = no sweep)")
    p.add_argument("--block-lengths", type=comma_list(positive_int), default=None,
                   help="block-length sweep, comma list (default 2,4,8,16,32; '' = no sweep)")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed rounds per batch of prompts, interleaved (default 1; more = less noise); with "
                        "--forward-costs: timed rounds per k (default 9)")
    p.add_argument("--no-baseline", action="store_true", help="skip transformers generate()")
    p.add_argument("--no-sol", action="store_true", help="skip the SOL oracle")
    p.add_argument("--no-autotune", action="store_true", help="skip the auto block length")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots")
    f = p.add_argument_group("forward costs", "measure only the cost of one forward per number of new tokens k")
    f.add_argument("--forward-costs", action="store_true",
                   help="instead of the benchmark: time one forward of k new tokens after a cached prefix, per k, "
                        "on this machine for this model (median and min of the rounds, ratio to k=1, tokens/s, "
                        "roofline of k=1 from the measured memory bandwidth); prints a table, writes "
                        "forward_costs.json and forward_costs.png, and saves the curve that "
                        "block_length=\"auto\" decides from")
    f.add_argument("--ks", type=k_values, default=None, metavar="K,K,...",
                   help=f"k values, positive integers (default {K_EXAMPLE}; --quick: 1,2,4,8; k=1 is always "
                        "measured: the ratios are to it)")
    f.add_argument("--kinds", type=comma_list(str, FORWARD_KINDS), default=None,
                   help="forward kinds, comma list: write (causal, appends: AR and verification), peek "
                        "(bidirectional block, drafter on: drafting), quadratic (quadratic-spec's k + k*k tokens) "
                        "(default write)")
    f.add_argument("--prefix-tokens", type=positive_int, default=None, metavar="N",
                   help="cached tokens before the k new ones (default 200, the prefix auto reads)")
    p.set_defaults(func=run, _parser=p)


def bench_config(args: argparse.Namespace):
    """The :class:`BenchConfig` the options describe."""
    from ..evaluation.bench import BenchConfig, quick_config

    config = apply_options(quick_config() if args.quick else BenchConfig(), args, (
        "prompt_sets", "n_prompts", "sweep_prompts", "max_new_tokens", "code_prompt_tokens", "batch_sizes", "modes",
        "block_length", "threshold", "thresholds", "block_lengths", "seed", "repeats"))
    config.baseline, config.sol = not args.no_baseline, not args.no_sol
    config.autotune, config.plots = not args.no_autotune, not args.no_plots
    return config.validate()


def curve_config(args: argparse.Namespace):
    """The :class:`CurveConfig` of ``--forward-costs``."""
    from ..evaluation.forward_costs import CurveConfig

    config = CurveConfig(ks=(1, 2, 4, 8), bandwidth_bytes=64 * 2**20) if args.quick else CurveConfig()
    config.ks = tuple(args.ks) if args.ks is not None else config.ks
    config.kinds = tuple(args.kinds) if args.kinds is not None else config.kinds
    for name in ("prefix_tokens", "repeats", "seed"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    return config.validate()


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
    given = [flag for flag, value in (("--ks", args.ks), ("--kinds", args.kinds),
                                      ("--prefix-tokens", args.prefix_tokens)) if value is not None]
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
