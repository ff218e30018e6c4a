"""Multi-process training: 2 processes x micro-batch b follow 1 process x 2b (and 1 x b with grad_accum 2).

The 2-process run is a real ``torchrun --nproc-per-node 2`` of the CLI (DDP, gloo on CPU).
"""

import json

import pytest
from training_helpers import debug_config, logged_losses, torchrun

from trimode.training import train

STEPS, B = 4, 2
TOLERANCE = 1e-4


@pytest.mark.parametrize("stage", ["joint", "sft"])
def test_two_processes_match_one_process(tmp_path, ar_dir, stage):
    # code_replay=0: tasks only, so 4 steps of 4 sequences reliably lower the loss (the sanity check below)
    settings = dict(steps=STEPS, eval_batches=0, checkpoint_interval=0, block_sizes=[4, 8], code_replay=0.0,
                    device="cpu")  # gloo on CPU, also where a GPU is visible
    one = tmp_path / "one"
    train(debug_config(stage, micro_batch=2 * B, **settings), out=one, init=ar_dir)
    accum = tmp_path / "accum"
    train(debug_config(stage, micro_batch=B, grad_accum=2, **settings), out=accum, init=ar_dir)

    two = tmp_path / "two"
    proc = torchrun(["-m", "trimode.cli", "train", "--stage", stage, "--preset", "debug", "--init", str(ar_dir),
                     "--out", str(two), "--micro-batch", str(B), "--steps", str(STEPS), "--no-progress", "--set",
                     "eval_batches=0", "--set", "checkpoint_interval=0", "--set", "block_sizes=4,8", "--set",
                     "code_replay=0", "--set", "device=cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["steps"] == STEPS  # printed once, by rank 0

    ref = logged_losses(one)
    assert len(ref) == STEPS and ref[-1] < ref[0]
    for name, run in (("2 processes x b", two), ("1 process x b, grad_accum 2", accum)):
        got = logged_losses(run)
        diffs = [abs(a - b) for a, b in zip(got, ref)]
        assert len(got) == STEPS and max(diffs) <= TOLERANCE, f"{name}: {got} vs {ref}"
