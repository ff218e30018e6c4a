"""Sharded training with FSDP2 (``parallel=fsdp``) and activation checkpointing.

- 2 FSDP2 processes (``torchrun`` of the CLI, gloo on CPU) follow 1 process with the same global batch;
- the exported directory loads with ``trimode.loading.load`` and holds exactly the trained weights
  (those of the last sharded checkpoint, read back without any process group);
- a 2-process run stopped by SIGTERM and resumed from its sharded checkpoint ends where the
  uninterrupted run ends, bit for bit;
- activation checkpointing gives the gradients of the plain forward (joint and drafter objectives),
  also when a later forward switched the LoRA drafter before backward recomputes.
"""

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import TEST_DEVICE, tiny_model
from training_helpers import debug_config, logged_losses, torchrun

from trimode.loading import load
from trimode.training import apply_overrides, train
from trimode.training.activation_checkpointing import checkpoint_decoder_layers
from trimode.training.checkpoint import SHARDED_DIR, list_checkpoints
from trimode.training.drafter import DrafterObjective, attach_drafter, pack_samples
from trimode.training.objectives import JointObjective

STEPS = 4
TOLERANCE = 1e-4  # as the DDP test: only the float summation order differs
# Per stage: the 2-process shape of the global batch of 4 (joint: also gradient accumulation).
SHAPES = {"joint": ["--micro-batch", "1", "--grad-accum", "2"], "drafter": ["--micro-batch", "2"]}
SETTINGS = {"joint": ["steps=4", "eval_batches=0", "checkpoint_interval=2", "block_sizes=4,8", "device=cpu"],
            "drafter": ["steps=4", "eval_batches=0", "checkpoint_interval=2", "device=cpu"]}


def _cli_args(stage, init, out, *extra):
    sets = [arg for item in (*SETTINGS[stage], "parallel=fsdp") for arg in ("--set", item)]
    return ["-m", "trimode.cli", "train", "--stage", stage, "--preset", "debug", "--init", str(init), "--out",
            str(out), "--no-progress", *SHAPES[stage], *sets, *extra]


@pytest.fixture(scope="module", params=["joint", "drafter"])
def fsdp_run(request, tmp_path_factory, ar_dir):
    """(stage, 1-process reference dir, 2-process FSDP2 dir) after STEPS steps."""
    stage = request.param
    root = tmp_path_factory.mktemp(f"fsdp-{stage}")
    one = root / "one"
    train(apply_overrides(debug_config(stage, micro_batch=4), SETTINGS[stage]), out=one, init=ar_dir)
    two = root / "two"
    proc = torchrun(_cli_args(stage, ar_dir, two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])["steps"] == STEPS
    return stage, one, two


def test_two_fsdp_processes_follow_one_process(fsdp_run):
    stage, one, two = fsdp_run
    ref, got = logged_losses(one), logged_losses(two)
    assert len(ref) == len(got) == STEPS
    if stage == "joint":  # (4 drafter steps are too few to lower its loss reliably)
        assert ref[-1] < ref[0]
    assert max(abs(a - b) for a, b in zip(got, ref)) <= TOLERANCE, f"{got} vs {ref}"
    # A sharded checkpoint per interval; the model directory has the same files as a 1-process run's.
    last = list_checkpoints(two / "checkpoints")[-1]
    assert last.name == "step-00000004" and (last / SHARDED_DIR / ".metadata").is_file()
    assert not (last / "weights.safetensors").exists()
    assert _model_files(two) == _model_files(one)
    assert json.loads((two / "config.json").read_text())["architectures"] == ["TrimodeModel"]


def test_exported_directory_holds_the_trained_weights(fsdp_run):
    stage, _, two = fsdp_run
    trained = _sharded_weights(list_checkpoints(two / "checkpoints")[-1])
    loaded = load(two, dtype="float32")
    assert loaded.has_drafter == (stage == "drafter")
    state = loaded.model.state_dict()
    assert trained and set(trained) <= set(state)
    for name, value in trained.items():
        assert torch.equal(state[name], value), name
    if stage == "joint":
        assert set(trained) == set(state)  # every weight is trained (and exported)
    else:  # only the adapter is trained, and training moved it (LoRA B starts at zero)
        assert all("lora_" in name for name in trained)
        assert all(value.abs().sum() > 0 for name, value in trained.items() if "lora_B" in name)


# One stage suffices: the drafter's state is a subset (the LoRA weights) of what joint restores.
@pytest.mark.parametrize("fsdp_run", ["joint"], indirect=True)
def test_stopped_and_resumed_fsdp_run_equals_uninterrupted(fsdp_run, tmp_path, ar_dir):
    stage, _, full = fsdp_run
    out = tmp_path / "stopped"
    sets = [*SETTINGS[stage], "parallel=fsdp", "micro_batch=1", "grad_accum=2"]
    proc = torchrun([str(Path(__file__).parent / "fsdp_worker.py"), stage, str(ar_dir), str(out), "3", *sets])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped by SIGTERM after step 3 of 4" in proc.stderr
    # Off the interval: the stop writes a checkpoint of step 3, and exports the weights reached.
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000002", "step-00000003"]
    stopped = load(out, dtype="float32").model.state_dict()
    assert all(torch.equal(stopped[k], v) for k, v in _sharded_weights(out / "checkpoints/step-00000003").items())

    proc = torchrun(_cli_args(stage, ar_dir, out, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load(full, dtype="float32").model.state_dict(), load(out, dtype="float32").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert logged_losses(out) == logged_losses(full)


def _model_files(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                  and "checkpoints" not in p.parts and p.suffix in (".json", ".safetensors"))


def _sharded_weights(path):
    """The trained parameters of a sharded checkpoint, whole, read in this process (no process group)."""
    meta = dcp.FileSystemReader(path / SHARDED_DIR).read_metadata().state_dict_metadata
    model = {k[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype)
             for k, m in meta.items() if k.startswith("model.")}
    with warnings.catch_warnings():  # torch notes that it loads in one process: what we ask for
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": model}, checkpoint_id=path / SHARDED_DIR, no_dist=True)
    return model


def test_one_process_fsdp_in_bf16(tmp_path, ar_dir):
    """One process: FSDP2 on a one-process group (left as found); bf16 compute with float32 master weights."""
    settings = dict(steps=3, eval_batches=0, checkpoint_interval=0, block_sizes=[4, 8], device="cpu")
    plain = train(debug_config("joint", **settings), out=tmp_path / "plain", init=ar_dir)
    bf16 = train(debug_config("joint", parallel="fsdp", precision="bf16", activation_checkpointing=True, **settings),
                 out=tmp_path / "bf16", init=ar_dir)
    assert not torch.distributed.is_initialized()
    for a, b in zip(plain.history, bf16.history):
        assert abs(a["loss"] - b["loss"]) < 0.02 and a["loss"] != b["loss"]  # bf16 rounding, not another run
    exported = load(tmp_path / "bf16", dtype="auto").model
    assert {p.dtype for p in exported.parameters()} == {torch.float32}


# ------------------------------------------------------------------ activation checkpointing
def _joint_case(ac: bool, adapter: bool = False):
    model = tiny_model(seed=1).train()
    if adapter:
        _attach_nonzero_drafter(model, ["o_proj", "gate_proj"])
    if ac:
        assert checkpoint_decoder_layers(model) == 2
    objective = JointObjective(debug_config("joint", block_sizes=[4]), model.config, TEST_DEVICE)
    ids = torch.randint(4, 48, (3, 24), generator=torch.Generator().manual_seed(0))
    return model, objective, objective.prepare({"input_ids": ids}, step=0, first_index=0, purpose="train")


def _drafter_case(ac: bool):
    model = tiny_model(seed=2).train()
    cfg = debug_config("drafter")
    cfg.drafter.r, cfg.drafter.blocks_per_sequence = 4, 3
    _attach_nonzero_drafter(model, ["o_proj", "k_proj", "v_proj", "down_proj"], cfg)
    if ac:
        checkpoint_decoder_layers(model)
    objective = DrafterObjective(cfg, model, TEST_DEVICE)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, 48, (n,), generator=g).tolist() for n in (3, 9)]
    conts = [torch.randint(4, 48, (n,), generator=g).tolist() for n in (14, 20)]
    return model, objective, objective.prepare(pack_samples(prompts, conts, 40, pad=0), 0, 0, "train")


def _attach_nonzero_drafter(model, targets, cfg=None):
    cfg = cfg or debug_config("drafter")
    cfg.drafter.r, cfg.drafter.target_modules = 4, targets
    attach_drafter(model, cfg.drafter, seed=0)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter change the forward
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator(device=p.device).manual_seed(1))


def _grads(model, objective, prepared, between=None):
    """Gradients of one micro-step; ``between(model)`` runs after the forward, before backward."""
    numerator = objective.terms(model, prepared).numerator
    if between is not None:
        between(model)
    numerator.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    assert a.keys() == b.keys() and a
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, worst


@pytest.mark.parametrize("case", ["joint", "drafter"])
def test_activation_checkpointing_keeps_the_gradients(case):
    build = _joint_case if case == "joint" else _drafter_case
    plain, checkpointed = _grads(*build(ac=False)), _grads(*build(ac=True))
    _assert_same(plain, checkpointed)
    if case == "drafter":  # the trained weights are the adapter's
        assert all("lora_" in name for name in plain)


def test_recomputation_sees_the_drafter_switch_of_its_forward():
    """The joint loss runs the adapter on the noisy stream only; a forward with the adapter on everywhere,
    between this forward and its backward, must not leak into the recomputation."""
    plain = _grads(*_joint_case(ac=False, adapter=True))
    model, objective, prepared = _joint_case(ac=True, adapter=True)

    def other_forward(m):
        with torch.no_grad():
            m(prepared.inputs["input_ids"], use_drafter=True)

    _assert_same(plain, _grads(model, objective, prepared, between=other_forward))


def test_parallel_setting_is_checked():
    cfg = debug_config("joint")
    with pytest.raises(ValueError, match=r"parallel='zero' must be one of 'ddp', 'fsdp'"):
        apply_overrides(cfg, ["parallel=zero"])
    assert apply_overrides(cfg, ["parallel=fsdp", "activation_checkpointing=true"]).validate().parallel == "fsdp"
