"""Training telemetry: JSONL log, tqdm progress bar, loss-curve PNG. Rank 0 only.

- ``train_log.jsonl``: one JSON object per line: ``{"step", "loss", <stage components>,
  "lr", "grad_norm", "tokens_per_s", "tokens", "elapsed"}`` (components: ``ar_loss`` per AR
  target; ``diffusion_loss`` = 1/p-weighted CE per maskable token, the NELBO estimate;
  ``mask_ratio``; drafter: ``draft_loss``, ``draft_accuracy`` per drafted position) every ``log_interval`` steps,
  and ``{"step", "eval_loss", ...}`` after each evaluation. On resume the lines past the
  checkpoint's step are dropped, so the log reads like one uninterrupted run.
- Progress: a tqdm bar (loss, tokens/s; tqdm gives the ETA), shown only on a terminal
  and never when ``CI`` is set, unless forced by ``progress=true``.
- ``loss_curve.png``: drawn with matplotlib's Agg canvas (no pyplot global state), at
  every checkpoint and at the end; skipped with a note if matplotlib is not installed.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

LOG_FILE = "train_log.jsonl"
CURVE_FILE = "loss_curve.png"


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class JsonlLog:
    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        if resume_step is None:
            path.write_text("")
        else:  # drop what the interrupted run logged after its last checkpoint
            kept = [r for r in read_log(path) if r.get("step", 0) <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


def show_progress(setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return sys.stderr.isatty() and not os.environ.get("CI")


class Progress:
    """tqdm over optimizer steps; ``update(loss, tokens_per_s)`` once per step."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, loss: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_loss_curve(log_path: Path, png_path: Path, title: str) -> bool:
    """Draw loss (and its components, and eval loss) against step. False if matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    records = read_log(log_path)
    train = [r for r in records if r.get("loss") is not None]
    evals = [r for r in records if r.get("eval_loss") is not None]
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        steps = [r["step"] for r in train]
        ax.plot(steps, [r["loss"] for r in train], label="loss", color="C0", linewidth=1.6)
        for key, color in (("ar_loss", "C1"), ("diffusion_loss", "C2")):
            if key in train[0]:
                ax.plot(steps, [r.get(key) for r in train], label=key, color=color, linewidth=1, alpha=0.8,
                        linestyle="--")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval_loss", color="C3")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, png_path)
    return True
