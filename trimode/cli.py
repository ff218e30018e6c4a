"""The ``trimode`` command: a thin map from subcommand to library code.

Every subcommand lives in :mod:`trimode.commands` and registers itself. A bad
argument or input ends in one line on stderr (``trimode <cmd>: error: ...``) and
exit status 2, never a traceback; set ``TRIMODE_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from contextlib import contextmanager

# Subcommand modules (trimode.commands.<name>, each with a register(subparsers)), in the order
# `trimode --help` lists them.
COMMANDS = ["demo", "generate", "convert", "export", "train", "eval", "bench", "serve"]


class UserError(Exception):
    """A problem with what the user asked for; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trimode", description="Tri-mode language models: AR, block diffusion "
                                     "and lossless self-speculation from one checkpoint.")
    parser.add_argument("--version", action="version", version=f"trimode {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"trimode.commands.{name}").register(sub)
    return parser


def _version() -> str:
    from trimode import __version__

    return __version__


@contextmanager
def _threads_restored():
    """Commands set torch's thread count (``--threads``); a caller that runs them in its own
    process (tests, notebooks) gets its own count back. The command line imports torch only
    when a command runs, and then exits: nothing to restore."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if before is not None:
            torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _threads_restored():
            return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        if os.environ.get("TRIMODE_DEBUG"):
            raise
        print(f"trimode {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trimode {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
