"""The grounding loss of stage ``vlm``: each image token's target names what the generated image shows under it."""

import random

import numpy
import torch
from training_helpers import debug_config
from transformers import AutoModel, AutoTokenizer

from trimode.image_tasks import Region, make_task, make_tasks
from trimode.training.vlm import build_vlm
from trimode.training.vlm_data import ImageTaskSamples
from trimode.training.vlm_grounding import MAX_TARGET_TOKENS, cell_targets, grounding_loss, labelled_boxes
from trimode.training.vlm_objective import VLMJointObjective

TOKENIZER = "models/trimode-tiny"


def _ids(tok, word):
    return [i for i in tok.encode(" " + word, add_special_tokens=False) if tok.decode([i]).strip()]


def _cell(targets, cols, r, c):
    row = targets[r * cols + c]
    return row[row >= 0].tolist()


def test_regions_are_where_the_pixels_are_drawn():
    """Every region's box holds non-white pixels, and outside all boxes (and the table's lines) a shapes or text
    image is white: the boxes are the ink."""
    for task in make_tasks(16, 123):
        pixels = torch.from_numpy(numpy.asarray(task.image))  # (H, W, 3)
        ink = (pixels < 250).any(-1)
        covered = torch.zeros_like(ink)
        for region in task.regions:
            x0, y0, x1, y1 = region.box
            assert ink[y0:y1, x0:x1].any(), (task.kind, region)
            covered[y0:y1, x0:x1] = True
        if task.kind in ("shapes", "text"):
            assert not (ink & ~covered).any(), task.kind


def test_regions_name_what_the_answer_states():
    rng = random.Random("grounding")
    text = make_task("text", rng)
    words = [value for name, value in text.facts if name.startswith("Word")]
    colour = dict(text.facts)["The text is"]
    assert [r.text for r in text.regions] == words and all(r.names == (colour,) for r in text.regions)
    shapes = make_task("shapes", rng)
    stated = [value.split()[1:] for name, value in shapes.facts if name.startswith("At the")]
    assert [list(r.names) for r in shapes.regions] == stated


def test_cell_targets_label_each_image_token_with_what_it_shows():
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    from PIL import Image

    task = make_task("text", random.Random(0))
    # A hand-made layout: "6" in token (0, 1), a red circle over tokens (1, 0) to (2, 1), the rest blank.
    task = type(task)("shapes", Image.new("RGB", (84, 84), "white"), "q", "a", (),
                      (Region((32, 4, 52, 24), "6"), Region((0, 28, 56, 84), names=("red", "circle"))))
    targets = cell_targets(task, tok, (84, 84), 28)
    space = tok.encode(" ", add_special_tokens=False)
    assert targets.shape == (9, MAX_TARGET_TOKENS)
    assert _cell(targets, 3, 0, 1) == _ids(tok, "6")
    assert _cell(targets, 3, 0, 0) == _cell(targets, 3, 0, 2) == _cell(targets, 3, 1, 2) == space
    for r, c in ((1, 0), (1, 1), (2, 0), (2, 1)):
        assert _cell(targets, 3, r, c) == _ids(tok, "red") + _ids(tok, "circle")


def test_a_written_word_is_split_into_its_tokens_left_to_right():
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    task = make_tasks(2, 10000)[1]  # a table: its cells are words and numbers
    boxes = labelled_boxes(task, tok)
    cake = [b for b in boxes if task.regions[0].box[0] <= b[0][0] < task.regions[0].box[2]
            and b[0][1] == task.regions[0].box[1]]
    assert [ids[0] for _, ids in cake] == _ids(tok, task.regions[0].text)
    lefts = [box[0] for box, _ in cake]
    assert lefts == sorted(lefts) and cake[-1][0][2] == task.regions[0].box[2]


def test_grounding_loss_is_zero_at_the_targets_and_pulls_features_towards_them():
    table = torch.randn(20, 8)
    targets = torch.tensor([[[1, 2, -1], [3, -1, -1], [-1, -1, -1]], [[4, 5, 6], [-1, -1, -1], [-1, -1, -1]]])
    exact = [table[1] + table[2], table[3]], [table[4] + table[5] + table[6]]
    features = [torch.stack(exact[0]), torch.stack(exact[1])]
    assert grounding_loss(features, targets, table).item() < 1e-10
    moved = [f.clone().requires_grad_() for f in features]
    with torch.no_grad():
        moved[0][0] += 1.0
    loss = grounding_loss(moved, targets, table)
    loss.backward()
    assert loss.item() > 0 and moved[0].grad[0].sum() > 0 and moved[1].grad.abs().sum() == 0


def test_grounding_term_trains_the_tower_and_is_logged(ar_dir):
    cfg = debug_config("vlm")
    cfg.vlm.grounding_weight = 1.0
    tokenizer = AutoTokenizer.from_pretrained(ar_dir)
    model = build_vlm(AutoModel.from_pretrained(ar_dir, dtype=torch.float32), tokenizer, cfg.vlm, cfg.seed)
    samples = ImageTaskSamples(tokenizer, model.config, cfg.vlm.train_seed, cfg.seq_len, cfg.vlm.kinds, grounding=True)
    batch = samples.batch(range(2))
    cells = (cfg.vlm.max_image_size // (cfg.vlm.patch_size * cfg.vlm.spatial_merge_size)) ** 2
    assert batch["cell_tokens"].shape == (2, cells, MAX_TARGET_TOKENS)
    objective = VLMJointObjective(cfg, model.train(), torch.device("cpu"))
    prepared = objective.prepare(batch, 0, 0, "train")
    with_term = objective.terms(model, prepared)
    stats = dict(zip(objective.stat_names, with_term.stats))
    assert stats["grounding_sum"] > 0 and stats["n_cells"] == sum(
        int((batch["input_ids"][r] == model.config.image_token_id).sum()) for r in range(2))
    assert "grounding_loss" in objective.summarize(stats)
    objective.grounding_weight = 0.0
    without = objective.terms(model, prepared).numerator
    extra = with_term.numerator - without
    assert torch.allclose(extra, torch.tensor(stats["grounding_sum"] * prepared.count / stats["n_cells"]), rtol=1e-4)
    model.zero_grad()
    extra.backward()
    tower = [p.grad for n, p in model.named_parameters() if "vision_tower" in n and p.grad is not None]
    assert tower and any(g.abs().sum() > 0 for g in tower)
