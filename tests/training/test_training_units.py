"""Units of the trainer: configs and overrides, WSD, checkpoints, per-sample draws, the batched draft forward."""

import json

import pytest
import torch
from helpers import TEST_DEVICE, tiny_model
from training_helpers import debug_config

from trimode.cache import KVCache
from trimode.cli import main
from trimode.masks import block_pattern
from trimode.training import PRESETS, TrainConfig, apply_overrides, preset_config
from trimode.training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from trimode.training.config import LORA_TARGETS, config_help, config_keys
from trimode.training.data import local_rows, micro_batches
from trimode.training.drafter import DrafterObjective, attach_drafter, draft_logits, lora_shape, pack_samples
from trimode.training.objectives import JointObjective
from trimode.training.optim import wsd_factor


# ------------------------------------------------------------------ config
def test_presets_and_overrides():
    assert set(PRESETS) == {"debug", "tiny", "smol", "tiny-vlm"}
    for name in ("debug", "tiny"):
        for stage in ("ar", "joint", "sft", "drafter"):
            assert preset_config(name, stage).validate().stage == stage
    smol = preset_config("smol", "drafter").validate()  # design (b): a drafter on every projection
    assert smol.drafter.target_modules == list(LORA_TARGETS) and smol.drafter.instruction_fraction > 0
    with pytest.raises(ValueError, match="preset smol has only the drafter stage"):
        preset_config("smol", "joint")
    cfg = apply_overrides(preset_config("tiny", "joint"), [
        "model.hidden_size=512", "block_sizes=4,8", "max_files=none", "progress=false", "drafter.r=16", "lr=3e-4",
        "task-families=add,sort"])
    assert (cfg.model.hidden_size, cfg.block_sizes, cfg.max_files, cfg.progress, cfg.drafter.r, cfg.lr) == \
        (512, [4, 8], None, False, 16, 3e-4)
    assert cfg.task_families == ["add", "sort"]
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="--set nope: unknown key; allowed: stage, .*model.hidden_size"):
        apply_overrides(cfg, ["nope=1"])
    with pytest.raises(ValueError, match=r"--set steps='ten' must be an integer >= 1"):
        apply_overrides(cfg, ["steps=ten"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        apply_overrides(cfg, ["steps"])
    with pytest.raises(ValueError, match="preset='huge' is not one of debug, tiny, smol, tiny-vlm"):
        preset_config("huge", "ar")
    bad = preset_config("debug", "ar")
    bad.warmup_frac, bad.decay_frac = 0.6, 0.6
    with pytest.raises(ValueError, match="warmup_frac \\+ decay_frac = 1.2 must be <= 1"):
        bad.validate()
    bad = preset_config("debug", "sft")
    bad.task_families = ["poetry"]
    with pytest.raises(ValueError, match="unknown \\['poetry'\\]; allowed: add, mul"):
        bad.validate()
    bad = preset_config("debug", "drafter")
    bad.drafter.target_modules = ["o_proj", "lm_head"]
    with pytest.raises(ValueError, match=r"drafter.target_modules=\['o_proj', 'lm_head'\] must be a non-empty list, "
                                         "each item one of 'q_proj', 'k_proj'"):
        bad.validate()
    assert apply_overrides(preset_config("debug", "drafter"),
                           ["drafter.target_modules=q_proj,v_proj"]).drafter.target_modules == ["q_proj", "v_proj"]
    help_text = config_help()
    assert all(key in help_text for key in config_keys())
    assert "drafter.r (int | None, default None): LoRA rank" in help_text


def test_config_errors_name_key_value_and_allowed():
    """Bounds, choices and list items are declared on the fields; errors are one line derived from them."""
    def error(cfg):
        with pytest.raises(ValueError) as e:
            cfg.validate()
        return str(e.value)

    cfg = preset_config("debug", "drafter")
    cfg.mask_eps, cfg.max_files, cfg.block_sizes, cfg.drafter.r = 0.0, 0, [4, 0], 0
    msg = error(cfg)
    for part in ("mask_eps=0.0 must be a number in (0, 1)", "max_files=0 must be an integer >= 1 or None",
                 "block_sizes=[4, 0] must be a list, each item an integer >= 1",
                 "drafter.r=0 must be an integer >= 1 or None"):
        assert part in msg, msg
    cfg = preset_config("debug", "drafter")
    cfg.drafter.code_prompt_tokens = [8]
    assert error(cfg) == ("train config: drafter.code_prompt_tokens=[8] must be a list of 2 items, "
                          "each item an integer >= 1")
    cfg = preset_config("debug", "ar")
    cfg.model.num_key_value_heads = 3
    assert "model: num_key_value_heads=3 must divide num_attention_heads=4" in error(cfg)
    with pytest.raises(ValueError, match=r"--set precision='fp16' must be one of 'fp32', 'bf16'"):
        apply_overrides(preset_config("debug", "ar"), ["precision=fp16"])
    with pytest.raises(ValueError, match=r"--set progress='maybe' must be true, false or None"):
        apply_overrides(preset_config("debug", "ar"), ["progress=maybe"])
    with pytest.raises(ValueError, match=r"train config: nope=1: TrainConfig has no such setting"):
        TrainConfig.from_dict({"nope": 1})
    cfg = apply_overrides(preset_config("debug", "ar"), ["model.head_dim=none", "seed= 7 ", "drafter.alpha=null"])
    assert (cfg.model.head_dim, cfg.seed, cfg.drafter.alpha) == (None, 7, None)


def test_cli_print_config_and_errors(capsys, tmp_path):
    out = str(tmp_path / "run")
    assert main(["train", "--stage", "sft", "--preset", "debug", "--out", out, "--steps", "7", "--set",
                 "model.hidden_size=96", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["steps"] == 7 and cfg["model"]["hidden_size"] == 96 and cfg["stage"] == "sft"
    assert main(["train", "--stage", "ar", "--preset", "debug", "--out", out, "--set", "lr=-1"]) == 2
    assert "lr=-1.0 must be a number > 0" in capsys.readouterr().err
    assert main(["train", "--stage", "joint", "--preset", "debug", "--out", out, "--set", "steps=1"]) == 2
    assert "stage joint needs --init DIR" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_wsd_schedule():
    f = [wsd_factor(s, 20, 0.1, 0.25, 0.1) for s in range(20)]
    assert f[:3] == [0.5, 1.0, 1.0]  # warmup 2 steps
    assert f[14] == 1.0 and f[15] < 1.0  # decay over the last 5
    assert f[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(f[2:], f[3:]))


def test_lora_shape_scales_published_ratio():
    cfg = preset_config("debug", "drafter").drafter  # rank and alpha left to the default
    assert cfg.r is None and cfg.alpha is None
    assert lora_shape(cfg, 4096) == (128, 512) and lora_shape(cfg, 256) == (8, 32)
    assert lora_shape(preset_config("tiny", "drafter").drafter, 256) == (32, 128)  # alpha follows r: 4r
    cfg.r, cfg.alpha = 12, 7
    assert lora_shape(cfg, 256) == (12, 7)


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_roundtrip_is_exact(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    tensors, meta = optimizer_to_flat(opt)
    json.dumps(meta)  # plain JSON, no pickles
    fresh = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=5.0)
    optimizer_from_flat(fresh, tensors, meta)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k])

    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        save_checkpoint(root, step, dict(model.named_parameters()), opt, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(root)] == ["step-00000004", "step-00000006"]
    (root / ".tmp-step-00000008-1").mkdir()  # an interrupted write is never picked up
    assert latest_checkpoint(root).name == "step-00000006"
    weights, state = load_checkpoint(latest_checkpoint(root), fresh)
    assert state["step"] == 6 and torch.equal(weights["weight"], model.weight)


# ------------------------------------------------------------------ per-sample draws and sharding
def test_draws_depend_only_on_global_sample_index():
    cfg = debug_config("joint", block_sizes=[4, 8])
    obj = JointObjective(cfg, tiny_model().config, TEST_DEVICE)
    batch = {"input_ids": torch.randint(4, 48, (4, 16), generator=torch.Generator().manual_seed(0))}
    whole = obj.prepare(batch, step=3, first_index=0, purpose="train")
    parts = [obj.prepare(mb, 3, idx, "train") for mb, idx in micro_batches(batch, 0, 2)]
    for key in ("xt", "masked", "p"):
        assert torch.equal(whole.inputs[key], torch.cat([p.inputs[key] for p in parts]))
    assert whole.count == sum(p.count for p in parts)
    assert len({obj.prepare(batch, s, 0, "train").extra["block_size"] for s in range(20)}) == 2
    other = obj.prepare(batch, step=4, first_index=0, purpose="train")
    assert not torch.equal(other.inputs["masked"], whole.inputs["masked"])

    rank1, first = local_rows(batch, rank=1, world_size=2)
    assert first == 2 and torch.equal(rank1["input_ids"], batch["input_ids"][2:])


# ------------------------------------------------------------------ the batched draft forward
@pytest.mark.parametrize("targets", [["o_proj"], list(LORA_TARGETS)], ids=["o_proj", "all-projections"])
def test_batched_draft_forward_equals_inference_draft(targets):
    """Training draft logits == LinearSpeculation's draft (prefix cached without adapter, peek with adapter),
    for the published o_proj adapter and for one on every projection (its k/v change the block's keys)."""
    model = tiny_model(seed=3)
    cfg = debug_config("drafter")
    cfg.drafter.r, cfg.drafter.blocks_per_sequence = 4, 5
    cfg.drafter.target_modules = targets
    attach_drafter(model, cfg.drafter, seed=0)
    with torch.no_grad():  # a non-zero adapter: it changes the block states, and (if leaked) the prefix
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator(device=p.device).manual_seed(1))
    obj = DrafterObjective(cfg, model, TEST_DEVICE)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, 48, (n,), generator=g).tolist() for n in (3, 7, 11)]
    conts = [torch.randint(4, 48, (n,), generator=g).tolist() for n in (12, 20, 1)]
    prep = obj.prepare(pack_samples(prompts, conts, 40, pad=0), step=0, first_index=0, purpose="train")
    x, B = prep.inputs, obj.block
    with torch.no_grad():
        logits = draft_logits(model, model, x["tokens"], x["blocks"], x["positions"], x["prefix_length"], B)
        checked = 0
        for i in range(3):
            for k in range(cfg.drafter.blocks_per_sequence):
                targets = x["targets"][i, k * B:(k + 1) * B]
                if (targets == -100).all():
                    continue
                start = int(x["prefix_length"][i, k])
                block = x["blocks"][i, k * B:(k + 1) * B]
                assert block[0] == x["tokens"][i, start] and (block[1:] == model.config.mask_token_id).all()
                assert torch.equal(targets[1:][targets[1:] != -100],
                                   x["tokens"][i, start + 1:start + B][targets[1:] != -100])
                cache = KVCache.for_model(model, 1, 64)
                model(x["tokens"][i:i + 1, :start], past_key_values=cache)  # adapter off: as at inference
                want = model(block[None], attention_mask=block_pattern(B, device=TEST_DEVICE), past_key_values=cache, cache_write=False,
                             use_drafter=True).logits[0]
                assert (want - logits[i, k * B:(k + 1) * B]).abs().max().item() < 1e-4
                checked += 1
        assert checked >= 8
        # A sample whose continuation has < 2 tokens has no valid cut: it adds nothing to the loss.
        assert (x["targets"][2] == -100).all()
        # Leaking the adapter into the prefix (one uncached forward) would give other logits.
        i, k = 1, 0
        start = int(x["prefix_length"][i, k])
        seq = torch.cat([x["tokens"][i, :start], x["blocks"][i, :B]])[None]
        mask = torch.ones(start + B, start + B, dtype=torch.bool).tril()
        mask[start:, start:] = True
        leaky = model(seq, attention_mask=mask, use_drafter=True).logits[0, start:]
        assert (leaky - logits[i, :B]).abs().max().item() > 1e-3


# ------------------------------------------------------------------ data
def test_sft_code_replay_share(tokenizer_dir):
    """code_replay of the SFT sequences are code with the loss on every token; the rest are tasks."""
    from transformers import AutoTokenizer

    from trimode.training.data import sft_sequences

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    for replay in (0.0, 0.25, 0.5):
        cfg = debug_config("sft", code_replay=replay)
        seqs = list(sft_sequences(tok, cfg))
        code = [s for s in seqs if bool(s["loss_mask"].all())]
        tasks = [s for s in seqs if not s["loss_mask"].all()]
        assert tasks and all(s["input_ids"].shape == (cfg.seq_len,) for s in seqs)
        # task sequences keep the loss off their prompts; the share is exact up to one sequence
        assert abs(len(code) - replay * len(seqs)) <= 1, (replay, len(code), len(seqs))
    with pytest.raises(ValueError, match="code_replay=1.0 must be a number in \\[0, 1\\)"):
        debug_config("sft", code_replay=1.0).validate()


def test_drafter_prompts_mix_code_instructions_and_tasks(tokenizer_dir):
    from transformers import AutoTokenizer

    from trimode.data.instructions import sample_instructions
    from trimode.training.drafter import drafter_prompts

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = debug_config("drafter")
    cfg.drafter.code_prompt_fraction, cfg.drafter.instruction_fraction = 0.25, 0.5
    prompts = drafter_prompts(tok, cfg, "train", 16)
    assert len(prompts) == 16
    texts = [tok.decode(p) for p in prompts]
    instructions = sample_instructions("train", 8, cfg.seed, cfg.max_files)
    assert [t for t in texts if any(i in t for i in instructions)] == texts[4:12]  # after the 4 code prefixes
    cfg.drafter.instruction_fraction = 0.8
    with pytest.raises(ValueError, match=r"instruction_fraction=0.8 must be in \[0, 1\] and leave "
                                         r"code_prompt_fraction=0.25 \+ instruction_fraction <= 1"):
        cfg.validate()


def test_copy_windows_follow_their_file():
    """copy_windows: each code file is followed by that many windows of itself, each written
    twice and short enough for both copies to share a sequence; 0 leaves the stream unchanged."""
    from trimode.training.data import with_copy_windows

    docs = [list(range(100, 1100)), list(range(7)), [], list(range(5000, 5300))]
    assert list(with_copy_windows(iter(docs), debug_config("ar", copy_windows=0.0))) == docs
    cfg = debug_config("ar", copy_windows=2)
    out = list(with_copy_windows(iter(docs), cfg))
    assert out[0] == docs[0] and out[3] == docs[1] and out[6] == [] and out[7] == docs[3]
    for doc, windows in ((docs[0], out[1:3]), (docs[1], out[4:6]), (docs[3], out[8:10])):
        for w in windows:
            half = len(w) // 2
            assert w[:half] == w[half:] and half == min(len(doc), cfg.seq_len // 4)
            start = doc.index(w[0])
            assert doc[start:start + half] == w[:half]  # a contiguous window of its own file
    assert out[1] != out[2]  # different windows of the same file
    # the fractional part is a per-file draw: about that share of files gets one more window
    many = list(with_copy_windows(iter([list(range(200))] * 400), debug_config("ar", copy_windows=0.25)))
    assert 60 < len(many) - 400 < 140
    with pytest.raises(ValueError, match="copy_windows=-1"):
        debug_config("ar", copy_windows=-1).validate()
