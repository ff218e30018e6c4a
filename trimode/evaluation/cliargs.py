"""Argument helpers shared by the `trimode eval` and `trimode bench` commands (kept beside the harness).

The model flags (--model, --threads, --dtype, --verbose) and loading are those of every
command: :mod:`trimode.commands.common`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def comma_list(item: Callable, allowed: list[str] | None = None):
    """An argparse type: a comma-separated list of ``item`` values ('' = empty list)."""

    def parse(text: str) -> list:
        values = [item(t.strip()) for t in text.split(",") if t.strip()]
        if allowed is not None:
            bad = [v for v in values if v not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"{bad[0]!r} is not one of {', '.join(allowed)}")
        return values

    return parse


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """--out, --seed and --no-drafter."""
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default: benchmarks/reports/<model-name>/)")
    p.add_argument("--seed", type=int, default=None, help="seed of the prompt sets (default 0)")
    p.add_argument("--no-drafter", action="store_true",
                   help="leave the LoRA drafter (linear_spec_lora/) unloaded: both speculative modes draft "
                        "with the base model, to measure what the drafter adds")


def apply_options(config, args: argparse.Namespace, names: tuple[str, ...]):
    """Copy the options in ``names`` that were given (not None) onto ``config``; return it."""
    for name in names:
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    return config


def default_out_dir(model_name: str) -> Path:
    return Path("benchmarks") / "reports" / model_name
