"""The server's configuration as one declaration: pydantic fields with their bounds, choices and
descriptions; the ``trimode serve`` flags generated from them (names users know, help, argument
errors); and the generic flag generator (:mod:`trimode.commands.config_flags`) on a made-up model."""

from __future__ import annotations

import argparse
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field

from trimode.cli import build_parser, main
from trimode.commands import serve
from trimode.commands.config_flags import NO_FLAG, ConfigFlags, Flag
from trimode.serving.config import AutoModeConfig, ConfigError, ServerConfig

SERVE_FLAGS = [  # what `trimode serve` accepted before its flags were generated: none may go missing
    "--model", "--threads", "--device", "--dtype", "--verbose", "--mode", "--host", "--port", "--served-model-name",
    "--max-batch-size", "--max-queue", "--batch-wait", "--refill-wait", "--timeout", "--max-tokens-limit",
    "--default-max-tokens", "--block-length", "--max-block-length", "--threshold", "--max-images", "--max-image-bytes",
    "--max-image-pixels", "--seed", "--log-level",
    "--auto-spec-mode", "--auto-max-load", "--auto-load-cooldown", "--auto-acceptance-floor", "--auto-window",
    "--auto-probe-every"]


def serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


# ---------------------------------------------------------------------------------------- the flags
def test_serve_keeps_every_flag_name():
    options = [s for a in serve_parser()._actions for s in a.option_strings if s not in ("-h", "--help")]
    assert options == SERVE_FLAGS


def test_every_field_has_a_flag_whose_help_is_its_description():
    flags = serve.server_flags()
    by_dest = {a.dest: a for a in serve_parser()._actions}
    for o in flags.options:
        if o.flag.omit:
            assert o.path in ("auto.min_samples", "auto.max_probe_every"), o.path  # they follow other flags
            continue
        action = by_dest[o.dest]
        if not o.flag.shared:  # --model / --threads: the help every model command shares
            assert action.help.startswith(o.info.description.replace("%", "%%")), o.path
            assert action.default == o.info.get_default(call_default_factory=True), o.path


def test_defaults_are_the_configs():
    assert serve.config_from_args(parse()) == ServerConfig()


def test_help_lists_the_defaults_and_the_auto_group(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--timeout TIMEOUT seconds a request may take" in text and "(default: 300.0)" in text
    assert "auto mode: how `mode: auto` chooses between self-speculation and AR" in text
    assert "--auto-load-cooldown SECONDS" in text and "--auto-acceptance-floor TOKENS" in text
    assert "(default: the model config's block_size)" in text


@pytest.mark.parametrize("argv,needles", [
    (["--port", "70000"], ["--port", "70000 must be <= 65535"]),
    (["--port", "eighty"], ["--port", "'eighty' is not an integer"]),
    (["--max-batch-size", "0"], ["--max-batch-size", "0 must be >= 1"]),
    (["--timeout", "0"], ["--timeout", "0.0 must be > 0"]),
    (["--batch-wait", "nan"], ["--batch-wait", "nan must be >= 0"]),
    (["--threshold", "2"], ["--threshold", "2.0 must be in (0, 1]"]),
    (["--auto-window", "0"], ["--auto-window", "0 must be >= 1"]),
    (["--log-level", "loud"], ["--log-level", "invalid choice: 'loud'"]),
    (["--auto-spec-mode", "ar"], ["--auto-spec-mode", "invalid choice: 'ar'"]),
])
def test_bad_flag_values_name_the_flag_the_value_and_what_is_allowed(argv, needles, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2
    for needle in needles:
        assert needle in err, err


def test_rules_between_flags_are_one_line_errors(capsys):
    assert main(["serve", "--block-length", "100"]) == 2
    err = capsys.readouterr().err
    assert err == "trimode serve: error: block_length=100 must be <= max_block_length=64\n"


def test_flags_map_onto_renamed_and_nested_fields():
    config = serve.config_from_args(parse("--timeout", "7", "--threads", "3", "--auto-max-load", "2",
                                          "--auto-load-cooldown", "0.5", "--auto-acceptance-floor", "2.5"))
    assert (config.request_timeout, config.num_threads) == (7.0, 3)
    assert (config.auto.max_load_for_spec, config.auto.load_cooldown, config.auto.acceptance_floor) == (2, 0.5, 2.5)
    assert [serve.config_from_args(parse("--threshold", t)).threshold for t in ("none", "0.5", "model")] == \
        [None, 0.5, "model"]


def test_settings_without_a_flag_follow_the_ones_with():
    small = serve.config_from_args(parse("--auto-window", "4"))
    assert (small.auto.window, small.auto.min_samples) == (4, 4)
    rare = serve.config_from_args(parse("--auto-probe-every", "512"))
    assert (rare.auto.probe_every, rare.auto.max_probe_every) == (512, 512)


# --------------------------------------------------------------------------------------- the config
def test_config_errors_say_what_is_allowed():
    cases = {
        "port=70000 must be an integer in [0, 65535]": dict(port=70000),
        "max_batch_size=True must be an integer >= 1": dict(max_batch_size=True),
        "threshold=1.5 must be a number in (0, 1], 'model' or None": dict(threshold=1.5),
        "request_timeout=0 must be a number > 0": dict(request_timeout=0),
        "log_level='loud' must be one of 'critical', 'error', 'warning', 'info', 'debug', 'trace'":
            dict(log_level="loud"),
        "auto.spec_mode='ar' must be one of 'linear-spec', 'quadratic-spec'": dict(auto=dict(spec_mode="ar")),
        "auto.window=0 must be an integer >= 1": dict(auto=dict(window=0)),
        "auto: max_probe_every=8 must be >= probe_every=16": dict(auto=dict(max_probe_every=8)),
        "mdoe='ar': ServerConfig has no such setting": dict(mdoe="ar"),
    }
    for message, kwargs in cases.items():
        with pytest.raises(ConfigError) as e:
            ServerConfig(**kwargs)
        assert str(e.value) == message


def test_assignments_are_checked_and_a_refused_one_changes_nothing():
    config = ServerConfig()
    config.num_threads = 2
    with pytest.raises(ValueError, match="num_threads=0 must be an integer >= 1"):
        config.num_threads = 0
    with pytest.raises(ValueError, match="block_length=100 must be <= max_block_length=64"):
        config.block_length = 100
    with pytest.raises(ValueError, match="min_samples=8 must be <= window=2"):
        config.auto.window = 2
    assert (config.num_threads, config.block_length, config.auto.window) == (2, None, 64)
    # what skips the checks (model_copy(update=...)) is caught by validate(), nested configs included
    with pytest.raises(ValueError, match="window=0"):
        config.model_copy(update={"auto": config.auto.model_copy(update={"window": 0})}).validate()
    assert config.validate() is config


def test_auto_config_alone():
    assert AutoModeConfig(window=4, min_samples=4).window == 4
    with pytest.raises(ValueError, match="min_samples=8 must be <= window=4"):
        AutoModeConfig(window=4)


# ------------------------------------------------------------------------------ the generic helper
class _Inner(BaseModel):
    depth: int = Field(3, ge=1, le=9, description="how deep")
    hidden: int = Field(5, description="no flag")


class _Outer(BaseModel):
    name: str = Field("x", description="a name; 100% free text")
    ratio: Optional[float] = Field(None, gt=0, lt=1, description="a ratio (default: none)")
    level: Literal[1, 2, 3] = Field(2, description="a level")
    fast: bool = Field(False, description="go fast")
    either: Optional[int | str] = Field(None, description="an int or a word")
    inner: _Inner = Field(default_factory=_Inner, title="the inner part", description="nested settings")


def _outer_flags(**extra) -> ConfigFlags:
    return ConfigFlags(_Outer, {"either": Flag(type=lambda t: int(t) if t.isdigit() else t),
                                "inner.hidden": NO_FLAG, "name": Flag(name="--label", metavar="TEXT"), **extra})


def test_config_flags_on_a_made_up_model(capsys):
    parser = argparse.ArgumentParser(prog="x")
    flags = _outer_flags()
    flags.add_to(parser)
    args = parser.parse_args(["--label", "y", "--ratio", "0.5", "--level", "3", "--fast", "--either", "12",
                              "--inner-depth", "9"])
    built = flags.config(args)
    assert built == _Outer(name="y", ratio=0.5, level=3, fast=True, either=12, inner=_Inner(depth=9))
    assert flags.config(parser.parse_args([])) == _Outer()
    assert flags.build({**flags.values(parser.parse_args([])), "inner.hidden": 7}).inner.hidden == 7
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--label TEXT a name; 100% free text (default: x)" in text
    assert "--ratio RATIO a ratio (default: none)" in text  # a None default: the description says it
    assert "the inner part: nested settings --inner-depth INNER_DEPTH how deep (default: 3)" in text
    assert "--inner-hidden" not in text
    for argv, needle in ((["--inner-depth", "10"], "10 must be <= 9"), (["--ratio", "1"], "1.0 must be < 1"),
                         (["--level", "4"], "invalid choice: 4")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert needle in capsys.readouterr().err


def test_config_flags_refuse_what_they_cannot_map():
    with pytest.raises(ValueError, match="inner.missing"):
        _outer_flags(**{"inner.missing": NO_FLAG})
    with pytest.raises(TypeError, match="either: no command-line type"):
        ConfigFlags(_Outer).add_to(argparse.ArgumentParser())
