"""Argument types and output helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from ..generation.modes import MODE_NAMES

MODE_CHOICES = list(MODE_NAMES)


def _number(text: str, kind: type, minimum, what: str):
    """Parse ``text`` as ``kind`` and require it to be >= ``minimum`` (an argparse type)."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not value >= minimum:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 1, "an integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, 0, "an integer")


def non_negative_float(text: str) -> float:
    return _number(text, float, 0, "a number")


def probability(text: str) -> float:
    """A number in (0, 1] (a confidence threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in (0, 1]") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} must be in (0, 1]")
    return value


def threshold_value(text: str) -> float | None:
    """A confidence threshold in (0, 1], or 'none' for the fixed schedule."""
    return None if text.lower() == "none" else probability(text)


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="model directory (default: the shipped models/trimode-tiny)")


def stats_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table: columns are (key, header)."""
    cells = [[h for _, h in columns]] + [[_fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return "-" if v is None else str(v)
