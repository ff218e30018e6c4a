"""The environment manifest every report starts with, and the command that produced a report.

Numbers from a benchmark mean nothing without the machine and software behind
them, so every report (eval, bench, autotune) embeds :func:`environment`:
torch / transformers / python versions, intra-op threads, CPU model and core
count, GPU name, device and dtype of the model, the git commit (with a
``+dirty`` mark when the working tree has changes) and the load average when
the run started (another process competing for the two cores shows up there
and explains noisy timings).

Design choices:

- Everything is best effort: a missing ``git`` or ``/proc/cpuinfo`` gives
  ``"?"`` rather than an exception, because a report must never fail for lack
  of metadata.
- :func:`command_line` renders the command with ``trimode`` as program name,
  whatever ``sys.argv[0]`` was (``python -m trimode.cli``, a console script).
  When the process was not started by the ``trimode`` CLI (tests calling
  ``cli.main([...])``), the command is rebuilt from the parsed options.
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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


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
    rebuilt from the parsed ``args`` namespace and its ``parser``: every option whose
    value differs from its default, so running the rebuilt command repeats the run.
    """
    if sys.argv[1:2] == [command] or args is None or parser is None:
        argv = sys.argv[1:] if sys.argv[1:2] == [command] else [command]
        return " ".join(["trimode"] + [shlex.quote(a) for a in argv])
    parts = [command]
    for action in parser._actions:  # argparse has no public API for this walk
        if not action.option_strings or action.dest in ("help",) or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true / store_false
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, ",".join("none" if v is None else str(v) for v in value)]
        else:
            parts += [flag, "none" if value is None else str(value)]
    return " ".join(["trimode"] + [shlex.quote(a) for a in parts])


def environment_markdown(env: dict) -> str:
    """A two-column markdown table of the manifest."""
    rows = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()]
    return "\n".join(rows)
