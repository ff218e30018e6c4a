"""Exact resume: a run interrupted after k steps and resumed ends with the same parameters as an uninterrupted run."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import Crash, crash_at, debug_config

from trimode.training import train
from trimode.training.checkpoint import list_checkpoints

STEPS, CRASH_AT = 8, 5  # checkpoints every 2 steps: the crash loses step 5, resume restarts from 4


def _weights(out, stage):
    if stage == "drafter":
        return load_file(out / "linear_spec_lora" / "adapter_model.safetensors")
    return load_file(out / "model.safetensors")


def _train_losses(out):
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
            if "loss" in r]


@pytest.mark.parametrize("stage", ["joint", "drafter"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, ar_dir, stage):
    # joint: random masks and random block sizes per step; drafter: LoRA-only state, cached targets.
    cfg = dict(steps=STEPS, checkpoint_interval=2, eval_batches=0, block_sizes=[4, 8])
    full, broken = tmp_path / "full", tmp_path / "broken"
    train(debug_config(stage, **cfg), out=full, init=ar_dir)
    with pytest.raises(Crash):
        train(debug_config(stage, **cfg), out=broken, init=ar_dir, on_step=crash_at(CRASH_AT))
    assert [p.name for p in list_checkpoints(broken / "checkpoints")] == ["step-00000002", "step-00000004"]
    assert not list((broken / "checkpoints").glob(".tmp-*"))
    result = train(debug_config(stage, **cfg), out=broken, init=ar_dir, resume=True)
    assert result.info["start_step"] == 4 and result.step == STEPS

    a, b = _weights(full, stage), _weights(broken, stage)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == torch.float32
        assert torch.equal(a[name], b[name]), name
    # The log reads like one run: every step once, same losses.
    assert _train_losses(broken) == _train_losses(full)


def _sigterm_at(step_to_stop):
    def hook(step, record):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGTERM)  # what `timeout`, SLURM or Kubernetes send
    return hook


def test_sigterm_stops_with_a_checkpoint_and_resume_finishes_exactly(tmp_path, ar_dir, capsys):
    cfg = dict(steps=STEPS, checkpoint_interval=4, eval_batches=0, block_sizes=[4, 8])
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train(debug_config("joint", **cfg), out=full, init=ar_dir)
    before = signal.getsignal(signal.SIGTERM)
    result = train(debug_config("joint", **cfg), out=stopped, init=ar_dir, on_step=_sigterm_at(3))
    assert signal.getsignal(signal.SIGTERM) is before  # the handler does not outlive the run
    assert result.step == 3 and result.info["stopped_at"] == 3
    assert "stopped by SIGTERM after step 3 of 8" in capsys.readouterr().err
    # Off the checkpoint interval: a checkpoint of step 3 anyway, and the weights reached are exported.
    assert [p.name for p in list_checkpoints(stopped / "checkpoints")] == ["step-00000003"]
    assert (stopped / "model.safetensors").is_file()
    resumed = train(debug_config("joint", **cfg), out=stopped, init=ar_dir, resume=True)
    assert resumed.info["start_step"] == 3 and resumed.step == STEPS and "stopped_at" not in resumed.info
    a, b = _weights(full, "joint"), _weights(stopped, "joint")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert _train_losses(stopped) == _train_losses(full)


def test_resume_guards(tmp_path, ar_dir):
    out = tmp_path / "run"
    cfg = dict(steps=4, checkpoint_interval=2, eval_batches=0)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(debug_config("joint", **cfg), out=out, init=ar_dir, resume=True)
    train(debug_config("joint", **cfg), out=out, init=ar_dir)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(debug_config("joint", **cfg), out=out, init=ar_dir)
    with pytest.raises(ValueError, match=r"lr: 0.002 -> 0.1"):
        train(debug_config("joint", lr=0.1, **cfg), out=out, init=ar_dir, resume=True)
    with pytest.raises(ValueError, match="global batch was 4 sequences, now 8"):
        train(debug_config("joint", micro_batch=8, **cfg), out=out, init=ar_dir, resume=True)
    with pytest.raises(ValueError, match="is the --init directory"):
        train(debug_config("joint", **cfg), out=ar_dir, init=ar_dir)
