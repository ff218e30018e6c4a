"""The environment manifest every report starts with, and the command that produced a report.

Numbers from a benchmark mean nothing without the machine and software behind
them, so every report (eval, bench) embeds :func:`environment`:
torch / transformers / python versions, intra-op threads, CPU model and core
count, GPU name, device and dtype of the model, the git commit (with a
``+dirty`` mark when the working tree has changes) and the load average when
the run started (another process competing for the cores shows up there and
explains noisy timings).

Design choices:

- Everything is best effort: a missing ``git`` or ``/proc/cpuinfo`` gives
  ``"?"`` rather than an exception, because a report must never fail for lack
  of metadata.
- :func:`command_line` renders the command with ``trimode`` as program name,
  whatever ``sys.argv[0]`` was (``python -m trimode.cli``, a console script).
  When the process was not started by the ``trimode`` CLI (tests calling
  ``cli.main([...])``), the command is rebuilt from the parsed options that
  differ from their defaults (:func:`changed_options`), using only argparse's
  public API: running it repeats the run.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..generation.forward_timing import cpu_model

_REPO = Path(__file__).resolve().parents[2]


def git_commit(cwd: Path = _REPO) -> str:
    """Short commit hash of the checkout, ``+dirty`` if tracked files changed; ``"?"`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=cwd, timeout=5).stdout.strip()
        if not head:
            return "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=cwd, timeout=5).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def environment(model: torch.nn.Module | None = None) -> dict:
    """The manifest: software versions, threads, CPU/GPU, device/dtype of ``model``, commit, load."""
    import transformers

    param = next(model.parameters(), None) if model is not None else None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "device": str(param.device) if param is not None else "cpu",
        "dtype": str(param.dtype).removeprefix("torch.") if param is not None else "float32",
        "commit": git_commit(),
        "load_average": load,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def command_line(command: str, args=None, parser=None) -> str:
    """The exact command, as ``trimode <command> ...``.

    When the running process is the ``trimode <command>`` CLI, ``sys.argv`` is used
    verbatim. Otherwise (tests calling ``cli.main([...])``, library use) the command is
    rebuilt from the parsed ``args`` namespace: every option whose value differs from its
    default in ``parser`` (the command's parser, which must accept an empty command line),
    so running the rebuilt command repeats the run. See :func:`changed_options`.
    """
    if sys.argv[1:2] == [command]:
        return shlex.join(["trimode", *sys.argv[1:]])
    parts = [command]
    if args is not None and parser is not None:
        parts += changed_options(vars(args), vars(parser.parse_args([])))
    return shlex.join(["trimode", *parts])


def changed_options(values: dict, defaults: dict) -> list[str]:
    """The options of ``values`` (parsed) that differ from ``defaults`` (parsed from an empty command
    line), as command-line arguments. An option is written ``--`` + its name with dashes for
    underscores (how every option of ``trimode eval`` and ``trimode bench`` is named); a True
    boolean is a switch (``store_true``), a list is comma-separated, None is ``none``. Names absent
    from ``defaults`` (the subcommand's name) are left out."""
    parts = []
    for name, value in values.items():
        if name not in defaults or value == defaults[name]:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            parts += [flag, ",".join("none" if v is None else str(v) for v in value)]
        else:
            parts += [flag, "none" if value is None else str(value)]
    return parts


def environment_markdown(env: dict) -> str:
    """A two-column markdown table of the manifest."""
    rows = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()]
    return "\n".join(rows)
