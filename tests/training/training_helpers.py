"""Builders shared by the training tests."""

import json
import os
import socket
import subprocess
import sys

from trimode.training import preset_config


def debug_config(stage: str, **overrides):
    """The debug preset, quiet, with ``overrides`` applied (keys of TrainConfig)."""
    cfg = preset_config("debug", stage)
    cfg.progress = False
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


class Crash(RuntimeError):
    """The simulated crash of :func:`crash_at`."""


def crash_at(step_to_crash: int):
    """An ``on_step`` hook of :func:`trimode.training.train` that raises :class:`Crash` after ``step_to_crash``."""
    def hook(step, record):
        if step == step_to_crash:
            raise Crash(f"simulated crash after step {step}")
    return hook


def logged_losses(out) -> list[float]:
    """The training losses of a run, one per logged step, from its JSONL log."""
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node nproc ARGS`` on this machine (one thread per process: two processes on
    two cores), with this interpreter and environment."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
