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

A vision-language model (``Loaded.is_vlm``) is benchmarked on held-out generated image tasks instead
(:func:`trimode.evaluation.image_eval.evaluate_image_bench`, as ``trimode eval`` on one): ``--n-prompts`` tasks
from ``--seed``, each decoded alone (batch 1) in ``--modes`` at ``--block-length`` and ``--threshold``, with
each task's image prefill time apart from its decode time; bench.md and bench.json, progress on stderr.
``--max-new-tokens`` caps each task's budget only when given (by default each task has room for its whole
answer, so accuracy means something). The flags of the text benchmark's other parts (batch sizes other than 1,
the transformers baseline, SOL, the sweeps, auto block length, plots, prompt files) are ignored, said in one
line on stderr. ``--forward-costs`` works as on a text model: it times the language model's forwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluation.bench_config import BenchConfig, CurveConfig, quick_config, quick_curve_config
from ..evaluation.cliargs import add_common_arguments, default_out_dir
from .common import SettingProgress, add_model_arguments, load_model
from .config_flags import NO_FLAG, ConfigFlags, Flag

DESCRIPTION = ("Benchmark every decoding mode on held-out task and code prompts: nfe, TPF, acceptance, "
               "drafted/accepted/rolled back, TTFT, latency P50/P95, tokens/s, against the SOL oracle and "
               "transformers generate() on the same weights, in the same run; threshold and block-length sweeps; "
               "auto block length. Writes bench.md, bench.json, RESULTS.md and PNG plots. A vision-language model gets "
               "held-out image tasks instead (batch 1, every mode): accuracy, TPF, image prefill time apart from "
               "decode time, tokens/s and the share identical to AR, in bench.md and bench.json.")
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
# The BenchConfig fields the image benchmark of a vision-language model reads (batch_sizes: only [1]).
IMAGE_BENCH_FIELDS = {"n_prompts", "seed", "max_new_tokens", "modes", "block_length", "threshold"}


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
    if loaded.is_vlm:
        return run_images(args, loaded, config, command)
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


def ignored_image_flags(args: argparse.Namespace) -> list[str]:
    """The flags given that the image benchmark of a vision-language model does not read."""
    given = BENCH.values(args)
    flags = [o.option for o in BENCH.options if o.path in given and o.path not in IMAGE_BENCH_FIELDS
             and not (o.path == "batch_sizes" and given[o.path] == [1])]
    return flags + [flag for flag, on in (("--prompts-file", args.prompts_file), ("--chat", args.chat)) if on]


def run_images(args: argparse.Namespace, loaded, config: BenchConfig, command: str) -> int:
    """`trimode bench` on a vision-language model: the held-out image tasks, bench.md and bench.json."""
    from ..evaluation.image_eval import evaluate_image_bench, image_eval_markdown
    from ..evaluation.report import write_image_bench_files

    loaded.require_image_support()  # a VLM whose tokenizer has no image token: say what to set
    ignored = ignored_image_flags(args)
    if ignored:
        print(f"bench: {', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not apply to a vision-language "
              "model, ignored: it runs held-out image tasks, each decoded alone (batch 1)",
              file=sys.stderr)
    result = evaluate_image_bench(loaded.model, loaded.tokenizer, loaded.image_processor, config,
                                  SettingProgress("bench"), BENCH.values(args).get("max_new_tokens"))
    result |= {"model": loaded.name, "command": command}
    out = Path(args.out) if args.out else default_out_dir(loaded.name)
    paths = write_image_bench_files(result, out, command)
    print(image_eval_markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
