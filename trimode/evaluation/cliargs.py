"""What the `trimode eval` and `trimode bench` commands share besides their configs' flags (kept beside the harness).

Their settings' flags are generated from the configs (:mod:`.bench_config`); the model flags (--model,
--threads, --dtype, --verbose) and loading are those of every command: :mod:`trimode.commands.common`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """--out and --no-drafter."""
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default: benchmarks/reports/<model-name>/)")
    p.add_argument("--no-drafter", action="store_true",
                   help="leave the LoRA drafter (linear_spec_lora/) unloaded: both speculative modes draft "
                        "with the base model, to measure what the drafter adds")


def default_out_dir(model_name: str) -> Path:
    return Path("benchmarks") / "reports" / model_name
