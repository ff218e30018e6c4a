"""Stage ``vlm`` (a VLM on a text checkpoint, trained on generated image tasks) and the drafter of a VLM.

Runs on the debug preset: a 1-layer 32-wide tower on the debug AR checkpoint, bars and shapes at 112 px.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import Crash, crash_at, debug_config
from transformers import AutoModel, AutoTokenizer

from trimode.image_tasks import make_tasks
from trimode.modeling_vlm import NemotronLabsDiffusionVLMModel
from trimode.training import train
from trimode.training.vlm import build_vlm
from trimode.training.vlm_data import IMAGE_TOKENS, ImageTaskSamples, IndexBatcher, task_at
from trimode.training.vlm_objective import VLMJointObjective, answer_window_mask


@pytest.fixture(scope="module")
def vlm_parts(ar_dir):
    """(model, tokenizer, config, a fixed batch of 4 samples) built on the debug AR checkpoint."""
    cfg = debug_config("vlm")
    tokenizer = AutoTokenizer.from_pretrained(ar_dir)
    model = build_vlm(AutoModel.from_pretrained(ar_dir, dtype=torch.float32), tokenizer, cfg.vlm, cfg.seed)
    samples = ImageTaskSamples(tokenizer, model.config, cfg.vlm.train_seed, cfg.seq_len, cfg.vlm.kinds)
    return model, tokenizer, cfg, samples.batch(range(4))


def test_vlm_is_the_text_model_plus_image_tokens_and_a_tower(ar_dir, vlm_parts):
    model, tokenizer, cfg, _ = vlm_parts
    text = AutoModel.from_pretrained(ar_dir, dtype=torch.float32).state_dict()
    state = model.state_dict()
    n = text["encoder.embed_tokens.weight"].shape[0]
    assert isinstance(model, NemotronLabsDiffusionVLMModel) and model.config.vocab_size == n + len(IMAGE_TOKENS)
    assert [model.config.image_token_id, model.config.image_break_token_id, model.config.image_end_token_id] == \
        [n, n + 1, n + 2] == tokenizer.convert_tokens_to_ids(list(IMAGE_TOKENS.values()))
    for name, tensor in text.items():
        assert torch.equal(state[name][:tensor.shape[0]], tensor), name
    for name in ("encoder.embed_tokens.weight", "diffusion_head.weight"):  # new rows: the mean text row
        assert torch.allclose(state[name][n:], text[name].mean(0).expand(3, -1))
    assert model.config.vision_config.hidden_size == cfg.vlm.hidden_size
    assert any(k.startswith("encoder.vision_tower.") for k in state)


def test_samples_are_the_image_tasks_by_index(vlm_parts):
    model, tokenizer, cfg, batch = vlm_parts
    tasks = make_tasks(4, cfg.vlm.train_seed, cfg.vlm.kinds)
    assert [task_at(i, cfg.vlm.train_seed, cfg.vlm.kinds).answer for i in range(4)] == [t.answer for t in tasks]
    for row, task in enumerate(tasks):
        P, T = int(batch["prompt_length"][row]), int(batch["length"][row])
        answer = tokenizer.decode(batch["input_ids"][row, P:T].tolist(), skip_special_tokens=True)
        assert answer == task.answer
        assert batch["input_ids"][row, T - 1] == tokenizer.eos_token_id
        # The prompt holds the image's placeholders: one per merged patch.
        h, w = batch["image_sizes"][row].tolist()
        cell = cfg.vlm.patch_size * cfg.vlm.spatial_merge_size
        assert int((batch["input_ids"][row, :P] == model.config.image_token_id).sum()) == (h // cell) * (w // cell)


def test_image_tokens_stay_in_the_clean_prefix(vlm_parts):
    """Only answer tokens (and the EOS filling the last block) are noised; the blocks start at the answer;
    every diffusion query sees the whole prompt, image included, clean."""
    model, _, cfg, batch = vlm_parts
    objective = VLMJointObjective(cfg, model, torch.device("cpu"))
    image_ids = {getattr(model.config, k) for k in IMAGE_TOKENS}
    for step in range(6):
        p = objective.prepare(batch, step, 0, "train")
        x, B = p.inputs, p.extra["block_size"]
        P, T = batch["prompt_length"], batch["length"]
        W = x["xt"].shape[1]
        assert torch.equal(x["x0"], batch["input_ids"][:, :x["x0"].shape[1]])  # the clean stream is the input
        assert not any(int(t) in image_ids for t in x["xt"].flatten())
        assert not any(int(t) in image_ids for t in x["targets"][x["masked"]])
        assert x["masked"].any()
        for r in range(4):
            A = int(T[r] - P[r])
            answer = batch["input_ids"][r, int(P[r]):int(T[r])]
            filled = -(-A // B) * B
            assert torch.equal(x["targets"][r, :A], answer)  # the window is the answer, from its first token
            assert (x["targets"][r, A:filled] == model.config.eos_token_id).all()
            assert not x["masked"][r, filled:].any()
            assert torch.equal(x["positions"][r, :W], P[r] + torch.arange(W))
            # xt query k sees the x0 prefix up to the start of its block: the prompt always, never its own block.
            seen = x["mask"][r, 0, :W, W:]
            for k in range(min(W, filled)):
                assert seen[k].nonzero().max() == P[r] + k // B * B - 1
            # x0 never sees the noisy stream.
            assert not x["mask"][r, 0, W:, :W].any()


def test_answer_window_mask_matches_its_definition():
    P, L, W, B = torch.tensor([3, 5]), 9, 8, 4
    mask = answer_window_mask(P, L, W, B)[:, 0]
    for r in range(2):
        for q in range(W + L):
            for k in range(W + L):
                if q < W and k < W:
                    want = q // B == k // B
                elif q < W:
                    want = k - W < P[r] + q // B * B
                elif k < W:
                    want = False
                else:
                    want = k <= q
                assert bool(mask[r, q, k]) == bool(want), (r, q, k)


def test_loss_is_finite_and_drops_on_a_fixed_batch(vlm_parts):
    model, _, cfg, batch = vlm_parts
    model = NemotronLabsDiffusionVLMModel(model.config)  # a copy: the module-scoped model stays as built
    model.load_state_dict(vlm_parts[0].state_dict())
    objective = VLMJointObjective(cfg, model.train(), torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    two = {k: v[:2] for k, v in batch.items()}
    losses = []
    for step in range(6):
        p = objective.prepare(two, 0, 0, "train")  # same draws every step: the loss of one fixed problem
        loss = objective.terms(model, p).numerator / p.count
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


def test_stage_trains_and_resumes_exactly(tmp_path, ar_dir):
    cfg = dict(steps=4, checkpoint_interval=2, eval_batches=1, eval_interval=2, micro_batch=2)
    full, broken = tmp_path / "full", tmp_path / "broken"
    result = train(debug_config("vlm", **cfg), out=full, init=ar_dir)
    records = [json.loads(line) for line in (full / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    assert result.eval_loss is not None and (full / "config.json").is_file()
    with pytest.raises(Crash):
        train(debug_config("vlm", **cfg), out=broken, init=ar_dir, on_step=crash_at(3))
    resumed = train(debug_config("vlm", **cfg), out=broken, init=ar_dir, resume=True)
    assert resumed.info["start_step"] == 2 and resumed.step == 4
    a, b = load_file(full / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("encoder.vision_tower.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The exported directory is a VLM that decodes with its image.
    model = AutoModel.from_pretrained(full)
    assert isinstance(model, NemotronLabsDiffusionVLMModel)


def test_index_batcher_resumes_at_its_position(vlm_parts):
    _, tokenizer, cfg, _ = vlm_parts

    class Fake:
        def batch(self, indices):
            return {"i": torch.tensor(list(indices))}

    batcher = IndexBatcher(Fake(), 3)
    it = iter(batcher)
    next(it), next(it)
    state = batcher.state_dict()
    again = IndexBatcher(Fake(), 3)
    again.load_state_dict(state)
    assert next(iter(again))["i"].tolist() == next(it)["i"].tolist() == [6, 7, 8]


def test_drafter_of_a_vlm_drafts_for_image_prompts(tmp_path, ar_dir):
    vlm_dir, out = tmp_path / "vlm", tmp_path / "drafter"
    train(debug_config("vlm", steps=2, eval_batches=0, checkpoint_interval=0, micro_batch=2), out=vlm_dir,
          init=ar_dir)
    cfg = debug_config("drafter", steps=2, eval_batches=1, checkpoint_interval=0, seq_len=240)
    cfg.drafter.n_prompts, cfg.drafter.n_eval_prompts, cfg.drafter.gen_batch = 4, 4, 4
    cfg.micro_batch = 4
    result = train(cfg, out=out, init=vlm_dir)
    assert result.step == 2 and result.eval_loss is not None
    adapter = load_file(out / "linear_spec_lora" / "adapter_model.safetensors")
    assert adapter and all(".layers." in k and "vision_tower" not in k for k in adapter)
    # The held-out evaluation runs every mode at batch 1 on the VLM with its drafter: the speculative
    # modes are lossless, so their outputs are AR's.
    from trimode.evaluation.image_eval import ImageSetting, evaluate_images
    from trimode.loading import load

    loaded = load(out)
    assert loaded.has_drafter
    settings = [ImageSetting("linear-spec", 4), ImageSetting("ar"), ImageSetting("diffusion", 4, 0.9),
                ImageSetting("quadratic-spec", 4)]
    report = evaluate_images(loaded.model, loaded.tokenizer, n_tasks=2, settings=settings)
    by_mode = {r.setting.mode: r for r in report.results}
    assert [r.setting.mode for r in report.results] == ["ar", "linear-spec", "diffusion", "quadratic-spec"]
    assert by_mode["linear-spec"].identical_to_ar == by_mode["quadratic-spec"].identical_to_ar == 1.0
    for r in report.results:
        s = r.summary()
        assert s["facts_total"] > 0 and 0 <= s["accuracy"] <= 1 and s["tpf"] > 0 and s["prefill_s"] > 0
    assert by_mode["ar"].tpf == 1.0


def test_vision_lr_scale_sets_the_tower_rate_and_zero_freezes_it(tmp_path, ar_dir, vlm_parts):
    from trimode.training.optim import build_optimizer
    from trimode.training.vlm import is_vision_parameter

    model, _, cfg, _ = vlm_parts
    cfg = debug_config("vlm", lr=1e-3)
    opt = build_optimizer(model.named_parameters(), cfg, torch.device("cpu"),
                          lambda name: 0.3 if is_vision_parameter(name) else 1.0)
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert by_param[id(p)] == pytest.approx(3e-4 if is_vision_parameter(name) else 1e-3), name
    assert opt.param_groups[0]["weight_decay"] == cfg.weight_decay  # decayed matrices first, as with one rate

    frozen = debug_config("vlm", steps=2, eval_batches=0, checkpoint_interval=1, micro_batch=2)
    frozen.vlm.vision_lr_scale = 0.0
    train(frozen, out=tmp_path / "frozen", init=ar_dir)
    trained = load_file(tmp_path / "frozen" / "model.safetensors")
    initial = vlm_parts[0].state_dict()  # the same build (same seed), never trained
    vision = [k for k in trained if is_vision_parameter(k)]
    assert vision and all(torch.equal(trained[k], initial[k]) for k in vision)
    assert not torch.equal(trained["encoder.layers.0.mlp.up_proj.weight"], initial["encoder.layers.0.mlp.up_proj.weight"])
    saved = load_file(tmp_path / "frozen" / "checkpoints" / "step-00000002" / "weights.safetensors")
    assert not any(is_vision_parameter(k) for k in saved)  # a checkpoint holds what trains


def test_the_evaluated_kinds_are_the_trained_ones_once_each():
    from trimode.training.vlm import evaluated_kinds

    assert evaluated_kinds(["text", "bars", "bars", "bars", "text"]) == ["bars", "text"]
    assert evaluated_kinds(["bars", "bars", "text", "shapes", "table"]) == [] == evaluated_kinds([])
