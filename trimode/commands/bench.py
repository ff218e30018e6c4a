"""``trimode bench``: speed of every mode against SOL and transformers generate(), with sweeps and plots.

A thin wrapper over :func:`trimode.evaluation.bench.run_bench`: options map
one to one onto :class:`~trimode.evaluation.bench.BenchConfig` fields; an
option left out keeps the config's default (or the ``--quick`` one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.cliargs import add_common_arguments, apply_options, comma_list, default_out_dir
from .common import MODE_CHOICES, add_model_arguments, load_model, positive_int, probability, threshold_value


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
                   help="timed rounds per batch of prompts, interleaved (default 1; more = less noise)")
    p.add_argument("--no-baseline", action="store_true", help="skip transformers generate()")
    p.add_argument("--no-sol", action="store_true", help="skip the SOL oracle")
    p.add_argument("--no-autotune", action="store_true", help="skip the auto block length")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots")
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


def run(args: argparse.Namespace) -> int:
    from ..evaluation.bench import run_bench, write_bench_report
    from ..evaluation.environment import command_line

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
