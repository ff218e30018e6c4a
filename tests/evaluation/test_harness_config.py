"""The configs of `trimode bench` and `trimode eval` as one declaration: pydantic fields whose bounds, choices
and descriptions give the flags (names users know, help, argument errors), the validation (one line naming
the field, the value and what is allowed) and the saved JSON; a flag left out keeps the --quick preset.
Also the generic parts of the flag generator they use: comma lists, switches, given-only flags, shared flags."""

from __future__ import annotations

import argparse
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field

from trimode.cli import build_parser, main
from trimode.commands import bench
from trimode.commands import eval as eval_command
from trimode.commands.config_flags import ConfigFlags, Flag
from trimode.evaluation.bench_config import (
    BenchConfig,
    CurveConfig,
    EvalConfig,
    HumanEvalConfig,
    quick_config,
    quick_curve_config,
)
from trimode.typed_config import ConfigError

FLAGS = {  # what each command accepted before its flags were generated: none may go missing
    "bench": ["--model", "--threads", "--device", "--dtype", "--verbose", "--out", "--seed", "--no-drafter", "--quick",
              "--prompt-sets", "--prompts-file", "--chat", "--n-prompts", "--sweep-prompts", "--max-new-tokens",
              "--code-prompt-tokens", "--batch-sizes", "--modes", "--block-length", "--threshold", "--thresholds",
              "--block-lengths", "--repeats", "--no-baseline", "--no-sol", "--no-autotune", "--no-plots",
              "--forward-costs", "--ks", "--kinds", "--prefix-tokens"],
    "eval": ["--model", "--threads", "--device", "--dtype", "--verbose", "--out", "--seed", "--no-drafter", "--quick",
             "--n-tasks", "--families", "--modes", "--block-length", "--thresholds", "--max-new-tokens",
             "--batch-size", "--humaneval", "--humaneval-prompt"],
}
UNFLAGGED = {"quadratic_max_block", "autotune_config", "warmup", "bandwidth_bytes", "bandwidth_repeats", "n_problems",
             "timeout_s", "workers"}  # --humaneval sets n_problems


def parser_of(command: str) -> argparse.ArgumentParser:
    return build_parser().parse_args([command])._parser


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", ["bench", "eval"])
def test_every_flag_is_kept_and_every_field_has_one(command, capsys):
    options = {s for a in parser_of(command)._actions for s in a.option_strings} - {"-h", "--help"}
    assert options == set(FLAGS[command])
    by_option = {s: a for a in parser_of(command)._actions for s in a.option_strings}
    for flags in ((bench.BENCH, bench.CURVE) if command == "bench" else (eval_command.EVAL, eval_command.HUMANEVAL)):
        for o in flags.options:
            if o.flag.omit:
                assert o.path in UNFLAGGED, o.path
            elif o.flag.shared:  # --repeats, --seed, --max-new-tokens: the help gives both meanings
                assert f"; {flags.context}: {o.info.description}" in by_option[o.option].help
            else:
                assert by_option[o.option].help.replace("do not ", "").startswith(o.info.description), o.path


def test_help_shows_the_defaults_of_both_configs(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-sizes BATCH_SIZES batch sizes of the main table, comma list (default: 1,4)" in text
    assert "(default: 0.3,0.5,0.7,0.9,0.95)" in text and "--no-plots do not write PNG plots" in text
    assert "more = less noise (default: 1); with --forward-costs: timed rounds per k" in text
    assert "--ks K,K,... k values" in text and "(default: 1,2,4,8,16,32,64)" in text


def test_flags_left_out_keep_the_defaults_or_the_quick_preset():
    assert bench.bench_config(parse("bench")) == BenchConfig()
    assert bench.bench_config(parse("bench", "--quick")) == quick_config()
    assert bench.bench_config(parse("bench", "--quick", "--n-prompts", "3")) == quick_config(n_prompts=3)
    assert bench.curve_config(parse("bench", "--quick")) == quick_curve_config()
    assert bench.curve_config(parse("bench", "--forward-costs", "--repeats", "3", "--seed", "2")) == CurveConfig(
        repeats=3, seed=2)
    assert eval_command.eval_config(parse("eval")) == EvalConfig()
    assert eval_command.eval_config(parse("eval", "--quick")).n_tasks == 6
    assert eval_command.humaneval_config(parse("eval")) is None
    assert eval_command.humaneval_config(parse("eval", "--humaneval")) == HumanEvalConfig()
    assert eval_command.humaneval_config(parse("eval", "--humaneval", "2", "--max-new-tokens", "9")) == \
        HumanEvalConfig(n_problems=2, max_new_tokens=9)


def test_flags_map_onto_fields():
    config = bench.bench_config(parse("bench", "--thresholds", "none,0.5", "--block-lengths", "", "--no-sol",
                                      "--modes", "ar,linear-spec", "--prompt-sets", "code", "--threshold", "0.7"))
    assert (config.thresholds, config.block_lengths, config.sol, config.baseline) == ([None, 0.5], [], False, True)
    assert (config.modes, config.prompt_sets, config.threshold) == (["ar", "linear-spec"], ["code"], 0.7)
    assert bench.curve_config(parse("bench", "--ks", "4,2", "--kinds", "peek")).ks == (4, 2)
    config = eval_command.eval_config(parse("eval", "--families", "add,sort", "--thresholds", "0.5,none"))
    assert (config.families, config.thresholds) == (["add", "sort"], [0.5, None])


@pytest.mark.parametrize("argv,needle", [
    (["bench", "--modes", "ar,warp"], "argument --modes: 'warp' is not one of ar, diffusion"),
    (["bench", "--batch-sizes", "1,0"], "argument --batch-sizes: 0 must be >= 1"),
    (["bench", "--thresholds", "0.5,2"], "argument --thresholds: 2.0 must be <= 1"),
    (["bench", "--threshold", "none"], "argument --threshold: 'none' is not a number"),
    (["bench", "--kinds", "sideways"], "argument --kinds: 'sideways' is not one of write, peek, quadratic"),
    (["eval", "--n-tasks", "0"], "argument --n-tasks: 0 must be >= 1"),
    (["eval", "--humaneval-prompt", "fancy"], "argument --humaneval-prompt: invalid choice: 'fancy'"),
])
def test_bad_flag_values_name_the_flag_the_value_and_what_is_allowed(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_empty_lists_that_must_not_be_are_one_line_errors(capsys):
    assert main(["bench", "--modes", ""]) == 2
    assert capsys.readouterr().err == ("trimode bench: error: modes=[] must be a non-empty list, each item one of "
                                       "'ar', 'diffusion', 'linear-spec', 'quadratic-spec'\n")
    assert main(["bench", "--ks", "1"]) == 2
    assert "--ks applies to --forward-costs only" in capsys.readouterr().err


def test_config_errors_say_what_is_allowed():
    cases = {
        "batch_sizes=[1, 0] must be a non-empty list, each item an integer >= 1": (BenchConfig, dict(batch_sizes=[1, 0])),
        "thresholds=[1.5] must be a list, each item a number in (0, 1] or None": (BenchConfig, dict(thresholds=[1.5])),
        "threshold=0 must be a number in (0, 1] or None": (BenchConfig, dict(threshold=0)),
        "n_prompts='8' must be an integer >= 1; repeats=0 must be an integer >= 1":
            (BenchConfig, dict(n_prompts="8", repeats=0)),
        "prompt_sets=['tasks', 'web'] must be a non-empty list, each item one of 'tasks', 'code', 'humaneval'":
            (BenchConfig, dict(prompt_sets=["tasks", "web"])),
        "sweeps=2: BenchConfig has no such setting": (BenchConfig, dict(sweeps=2)),
        "autotune_config={} must be an AutotuneConfig": (BenchConfig, dict(autotune_config={})),
        "ks=() must be a non-empty list, each item an integer >= 1": (CurveConfig, dict(ks=())),
        "kinds=('sideways',) must be a non-empty list, each item one of 'write', 'peek', 'quadratic'":
            (CurveConfig, dict(kinds=("sideways",))),
        "thresholds=[2.0] must be a list (or None), each item a number in (0, 1] or None":
            (EvalConfig, dict(thresholds=[2.0])),
        "n_problems=165 must be an integer in [1, 164]": (HumanEvalConfig, dict(n_problems=165)),
        "prompt_format='fancy' must be one of 'auto', 'raw', 'chat'": (HumanEvalConfig, dict(prompt_format="fancy")),
    }
    for message, (cls, kwargs) in cases.items():
        with pytest.raises(ConfigError) as e:
            cls(**kwargs)
        assert str(e.value) == message


def test_validate_checks_assigned_fields_again():
    config = EvalConfig()
    assert config.validate() is config
    config.batch_size = 0
    with pytest.raises(ValueError, match="batch_size=0 must be an integer >= 1"):
        config.validate()


def test_saved_json_keeps_the_dataclass_keys():
    dumped = quick_config().model_dump()
    assert list(dumped) == [
        "prompt_sets", "n_prompts", "sweep_prompts", "seed", "max_new_tokens", "code_prompt_tokens", "batch_sizes",
        "modes", "block_length", "threshold", "thresholds", "block_lengths", "quadratic_max_block", "baseline", "sol",
        "autotune", "autotune_config", "repeats", "warmup", "plots"]
    assert dumped["autotune_config"]["candidates"] == (1, 2, 4) and dumped["thresholds"] == [0.5, 0.9]
    assert EvalConfig().model_dump() == {"n_tasks": 48, "seed": 0, "families": None,
                                         "modes": ["ar", "diffusion", "linear-spec", "quadratic-spec"],
                                         "block_length": None, "thresholds": None, "max_new_tokens": None,
                                         "batch_size": 8}
    assert HumanEvalConfig().model_dump() == {"n_problems": 164, "max_new_tokens": 192, "timeout_s": 5.0,
                                              "workers": 2, "prompt_format": "auto"}


# ------------------------------------------------------------------------------ the generic helper
class _Model(BaseModel):
    sizes: list[int] = Field([1, 4], description="sizes")
    cuts: Optional[list[Optional[float]]] = Field(None, description="cuts (default: none)")
    ways: tuple[Literal["up", "down"], ...] = Field(("up",), description="ways")
    loud: bool = Field(False, description="be loud")
    plots: bool = Field(True, description="draw plots")
    seed: int = Field(0, ge=0, description="a seed")


class _Other(BaseModel):
    seed: int = Field(7, description="another seed")
    rounds: int = Field(3, ge=1, description="rounds")


def test_config_flags_lists_switches_given_only_and_shared(capsys):
    parser = argparse.ArgumentParser(prog="x")
    flags = ConfigFlags(_Model, given_only=True)
    other = ConfigFlags(_Other, {"seed": Flag(shared=True)}, given_only=True, context="with --other")
    flags.add_to(parser)
    other.add_to(parser)
    args = parser.parse_args(["--sizes", "2, 3", "--cuts", "none,0.5", "--ways", "down,up", "--loud", "--no-plots"])
    assert flags.values(args) == {"sizes": [2, 3], "cuts": [None, 0.5], "ways": ("down", "up"), "loud": True,
                                  "plots": False}
    assert flags.values(parser.parse_args([])) == {} and other.given(parser.parse_args(["--seed", "1"])) == []
    assert other.values(parser.parse_args(["--seed", "1", "--rounds", "2"])) == {"seed": 1, "rounds": 2}
    assert flags.config(parser.parse_args(["--sizes", ""])) == _Model(sizes=[])  # '': an empty list
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--sizes SIZES sizes (default: 1,4)" in text and "--ways WAYS ways (default: up)" in text
    assert "--loud be loud --no-plots do not draw plots" in text
    assert "--seed SEED a seed (default: 0); with --other: another seed (default: 7)" in text
    for argv, needle in ((["--ways", "left"], "'left' is not one of up, down"), (["--sizes", "1,x"], "'x' is not"),
                         (["--rounds", "0"], "0 must be >= 1")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert needle in capsys.readouterr().err
