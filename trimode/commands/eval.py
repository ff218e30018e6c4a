"""``trimode eval``: accuracy of every decoding mode on held-out checkable tasks.

A thin wrapper over :func:`trimode.evaluation.accuracy.evaluate`: options map
one to one onto :class:`~trimode.evaluation.accuracy.EvalConfig` fields.
Writes eval.md and eval.json and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.cliargs import add_common_arguments, apply_options, comma_list, default_out_dir
from .common import MODE_CHOICES, add_model_arguments, load_model, positive_int, threshold_value


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of every mode on held-out tasks (+ share identical to AR)",
                       description="Decode held-out checkable tasks greedily in every mode and score them by "
                                   "exact match; report accuracy, the share of outputs identical to AR greedy, "
                                   "TPF and acceptance. Writes eval.md and eval.json.")
    add_model_arguments(p)
    add_common_arguments(p)
    p.add_argument("--quick", action="store_true", help="6 tasks (each with room for its whole answer): a smoke run")
    p.add_argument("--n-tasks", type=positive_int, default=None, help="held-out tasks (default 48)")
    p.add_argument("--families", type=comma_list(str), default=None,
                   help="comma list of task families (default: the model's training families, else all)")
    p.add_argument("--modes", type=comma_list(str, MODE_CHOICES), default=None,
                   help="comma list of modes (default: all four; AR always runs)")
    p.add_argument("--block-length", type=positive_int, default=None, help="block length (default: config)")
    p.add_argument("--thresholds", type=comma_list(threshold_value), default=None,
                   help="diffusion thresholds, one setting each; 'none' = fixed schedule (default: config's)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="generation cap (default: longest answer + 16)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="tasks per decoding call (default 8)")
    p.set_defaults(func=run, _parser=p)


def eval_config(args: argparse.Namespace):
    from ..evaluation.accuracy import EvalConfig, quick_config

    config = quick_config() if args.quick else EvalConfig()
    return apply_options(config, args, ("n_tasks", "families", "modes", "block_length", "thresholds",
                                        "max_new_tokens", "batch_size", "seed")).validate()


def run(args: argparse.Namespace) -> int:
    from ..evaluation.accuracy import eval_markdown, evaluate
    from ..evaluation.environment import command_line
    from ..evaluation.report import write_eval_files

    config = eval_config(args)
    loaded = load_model(args, need="to build its prompts", drafter=not args.no_drafter)
    command = command_line("eval", args, args._parser)
    name = loaded.path.resolve().name
    result = evaluate(loaded.model, loaded.tokenizer, config) | {"model": name, "command": command}
    out = Path(args.out) if args.out else default_out_dir(name)
    paths = write_eval_files(result, out, command)
    print(eval_markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
