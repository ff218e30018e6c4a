"""What ``trimode bench`` and ``trimode eval`` run: :class:`BenchConfig` (and the seconds-long
:func:`quick_config`), :class:`CurveConfig` (``bench --forward-costs``), :class:`EvalConfig` and
:class:`HumanEvalConfig` (``eval --humaneval``).

Each is a pydantic model, the one declaration of its settings (type, default, bounds, choices,
description): the commands generate their flags from the fields (:mod:`trimode.commands.config_flags`)
and the reports save ``model_dump()``. A config is checked when built, strictly (``"8"`` is not an
integer), unknown fields refused; assigning a field does not check it, ``validate()`` checks the config
again. A bad value raises :class:`~trimode.typed_config.ConfigError`, one line naming the field, the value
and what is allowed (:class:`~trimode.typed_config.CheckedConfig`). No torch is imported here (the command
line builds its parsers from this module); the modules that run the configs re-export them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import Field, model_validator

from ..generation.names import MODE_NAMES
from ..typed_config import CheckedConfig
from .prompts import PROMPT_SETS

# Spelled out here, where no torch is imported: trimode.generation.forward_timing's KINDS and
# DEFAULT_PREFIX_TOKENS (tests/evaluation/test_forward_costs.py checks they agree).
FORWARD_KINDS = ("write", "peek", "quadratic")
CURVE_PREFIX_TOKENS = 200
DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64)
QUICK_KS = (1, 2, 4, 8)
N_PROBLEMS = 164  # problems in HumanEval
# HumanEval's new tokens per problem: room for nearly every canonical solution (most are well under 150 tokens).
DEFAULT_MAX_NEW_TOKENS = 192
# Seconds one HumanEval check may run: the tests take milliseconds; the rest is interpreter start-up on a busy machine.
DEFAULT_TIMEOUT_S = 5.0
PROMPT_FORMATS = ("auto", "raw", "chat")

PositiveInt = Annotated[int, Field(ge=1)]
Threshold = Annotated[float, Field(gt=0, le=1)]
Mode = Literal[MODE_NAMES]  # type: ignore[valid-type]


def _default_autotune_config():
    from ..generation.autotune import AutotuneConfig  # torch: when a config is built, not for --help

    return AutotuneConfig()


# The defaults are sized for a run of a few minutes with a model of a few million parameters on
# a 2-core CPU; --quick (quick_config) shrinks every size for tests and smoke runs.
class BenchConfig(CheckedConfig):
    """What ``trimode bench`` measures."""

    prompt_sets: list[Literal[PROMPT_SETS]] = Field(  # type: ignore[valid-type]
        ["tasks", "code"], min_length=1, description="comma list of prompt sets: tasks (held-out task prompts), "
        "code (held-out code prefixes), humaneval (needs pip install -e \".[humaneval]\")")
    n_prompts: int = Field(6, ge=1, description="prompts per set in the main table")
    sweep_prompts: int = Field(4, ge=1, description="task prompts (the first of the set) for the sweeps and the "
                                                    "auto block length")
    seed: int = Field(0, description="seed of the prompt sets")
    max_new_tokens: int = Field(64, ge=1, description="new tokens per prompt (rows also stop at EOS)")
    code_prompt_tokens: int = Field(64, ge=1, description="tokens per code prompt")
    batch_sizes: list[PositiveInt] = Field([1, 4], min_length=1, description="batch sizes of the main table, comma list")
    modes: list[Mode] = Field(list(MODE_NAMES), min_length=1, description="modes of the main table, comma list "
                                                                          "(AR always runs: it is the reference)")
    block_length: Optional[int] = Field(None, ge=1, description="block length of the main table (default: the "
                                                                "model config's)")
    threshold: Optional[float] = Field(
        None, gt=0, le=1, description="diffusion threshold in (0, 1] of the main table (default: the model "
                                      "config's; the fixed schedule is in the sweep: --thresholds none)")
    thresholds: list[Optional[Threshold]] = Field(
        [0.3, 0.5, 0.7, 0.9, 0.95], description="diffusion thresholds of the threshold sweep, comma list; none = "
                                                "the fixed schedule, '' = no sweep")
    block_lengths: list[PositiveInt] = Field([2, 4, 8, 16, 32], description="block lengths of the block-length "
                                                                            "sweep, comma list; '' = no sweep")
    quadratic_max_block: int = Field(8, ge=1, description="largest block the quadratic mode runs in the sweep (its "
                                                          "forward is B*(B+1) tokens)")
    baseline: bool = Field(True, description="time transformers generate() on the same weights")
    sol: bool = Field(True, description="compute the SOL (oracle) TPF")
    autotune: bool = Field(True, description="pick the block length with block_length=\"auto\" and measure its gain")
    autotune_config: Any = Field(default_factory=_default_autotune_config,
                                 description="how auto measures (trimode.generation.autotune.AutotuneConfig)")
    repeats: int = Field(1, ge=1, description="timed rounds per batch of prompts, interleaved; more = less noise")
    warmup: bool = Field(True, description="make one short untimed call per engine first")
    plots: bool = Field(True, description="write PNG plots (matplotlib)")

    @model_validator(mode="after")
    def _autotune_config(self) -> "BenchConfig":
        from ..generation.autotune import AutotuneConfig

        if not isinstance(self.autotune_config, AutotuneConfig):
            raise ValueError(f"autotune_config={self.autotune_config!r} must be an AutotuneConfig")
        self.autotune_config.validate()
        return self


def quick_config(**overrides) -> BenchConfig:
    """A seconds-long configuration (tests, smoke runs): same sections, tiny sizes."""
    from ..generation.autotune import AutotuneConfig

    kw = dict(n_prompts=2, sweep_prompts=2, max_new_tokens=12, code_prompt_tokens=24, batch_sizes=[1, 2],
              thresholds=[0.5, 0.9], block_lengths=[2, 4], quadratic_max_block=4,
              autotune_config=AutotuneConfig(candidates=(1, 2, 4), diffusion_candidates=(1, 2, 4), repeats=3,
                                             time_budget=0.2, calibration_tokens=12))
    kw.update(overrides)
    return BenchConfig(**kw)


class CurveConfig(CheckedConfig):
    """What ``trimode bench --forward-costs`` measures (:mod:`.forward_costs`)."""

    ks: tuple[PositiveInt, ...] = Field(
        DEFAULT_KS, min_length=1, description=f"k values: new tokens per forward, comma list (--quick: "
        f"{','.join(map(str, QUICK_KS))}; k=1 is always measured: the ratios are to it)")
    kinds: tuple[Literal[FORWARD_KINDS], ...] = Field(  # type: ignore[valid-type]
        ("write",), min_length=1, description="forward kinds, comma list: write (causal, appends: AR and "
        "verification), peek (bidirectional block, drafter on: drafting), quadratic (quadratic-spec's k + k*k tokens)")
    prefix_tokens: int = Field(CURVE_PREFIX_TOKENS, ge=1, description="cached tokens before the k new ones; the "
                                                                      "default is the prefix auto reads")
    repeats: int = Field(9, ge=1, description="timed rounds per k, after one untimed warm-up round")
    bandwidth_bytes: int = Field(256 * 2**20, ge=1, description="size of the buffer the bandwidth copy moves")
    bandwidth_repeats: int = Field(5, ge=1, description="bandwidth copies timed (the fastest counts)")
    seed: int = Field(0, description="seed of the random tokens timed")


def quick_curve_config(**overrides) -> CurveConfig:
    """``trimode bench --forward-costs --quick``: fewer k values, a smaller bandwidth copy."""
    return CurveConfig(**{"ks": QUICK_KS, "bandwidth_bytes": 64 * 2**20, **overrides})


class EvalConfig(CheckedConfig):
    """What ``trimode eval`` runs."""

    n_tasks: int = Field(48, ge=1, description="held-out tasks (families round-robin)")
    seed: int = Field(0, description="seed of the task prompts")
    families: Optional[list[str]] = Field(None, description="comma list of task families (default: those the model "
                                                            "was trained on, else all; a vision-language model: "
                                                            "image task kinds)")
    modes: list[Mode] = Field(list(MODE_NAMES), min_length=1, description="comma list of modes (AR always runs: it "
                                                                          "is the reference)")
    block_length: Optional[int] = Field(None, ge=1, description="block length of diffusion and the speculative "
                                                                "modes (default: the model config's)")
    thresholds: Optional[list[Optional[Threshold]]] = Field(
        None, description="diffusion thresholds, one setting each, comma list; none = the fixed schedule "
                          "(default: the model config's)")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="generation cap (default: the longest answer + 16)")
    batch_size: int = Field(8, ge=1, description="tasks per decoding call (a vision-language model decodes each "
                                                 "image task alone)")


class HumanEvalConfig(CheckedConfig):
    """What the HumanEval part of ``trimode eval`` runs (:mod:`.humaneval`)."""

    n_problems: int = Field(N_PROBLEMS, ge=1, le=N_PROBLEMS, description="the first n_problems HumanEval problems")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, description="generation cap per problem (lowered, and "
                                "said so, where the model's context is shorter)")
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="seconds one check may run before its process "
                                                                  "group is killed (a timeout, not a pass)")
    workers: int = Field(2, ge=1, description="checks run at once (the distinct completions of one problem)")
    prompt_format: Literal[PROMPT_FORMATS] = Field(  # type: ignore[valid-type]
        "auto", description="HumanEval prompts: raw (plain completion), chat (the function in a chat request; the "
                            "reply's code block is checked), auto (chat for a chat model such as trimode-smol, "
                            "else raw)")
