"""The generated image tasks (issue 18): deterministic, the facts the answers state are in the pixels, and the
scorer counts exactly the facts a text states right."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from trimode import image_tasks as it


def pixels(task) -> np.ndarray:
    return np.asarray(task.image, dtype=np.int16)


def fact(task, pattern: str) -> list[tuple[str, str]]:
    return [(name, value) for name, value in task.facts if re.fullmatch(pattern, name)]


@pytest.fixture(scope="module")
def sample():
    return it.make_tasks(40, seed=7)  # 10 of each kind


def test_same_seed_same_pixels_and_answers_and_a_longer_list_extends_a_shorter_one():
    a, b = it.make_tasks(12, seed=3), it.make_tasks(12, seed=3)
    assert [t.image.tobytes() for t in a] == [t.image.tobytes() for t in b]
    assert [(t.kind, t.question, t.answer, t.facts) for t in a] == [(t.kind, t.question, t.answer, t.facts) for t in b]
    assert [t.answer for t in it.make_tasks(20, seed=3)[:12]] == [t.answer for t in a]
    assert [t.answer for t in it.make_tasks(12, seed=4)] != [t.answer for t in a]


def test_every_kind_generates_in_a_balanced_mix_at_its_documented_size(sample):
    assert [t.kind for t in sample[:8]] == list(it.KINDS) * 2
    sizes = {"bars": (224, 224), "table": (252, 168), "shapes": (168, 168), "text": (224, 168)}
    for task in sample:
        assert task.image.mode == "RGB" and task.image.size == sizes[task.kind]
        assert task.image.width % 28 == 0 and task.image.height % 28 == 0  # whole image tokens
        assert task.question == it.QUESTIONS[task.kind]
        # the answer is exactly the fact sentences: nothing in it goes unchecked
        assert task.answer == " ".join(f"{name} {value}." for name, value in task.facts)
    assert [t.kind for t in it.make_tasks(4, seed=1, kinds=["text"])] == ["text"] * 4
    with pytest.raises(ValueError, match="unknown image task kind"):
        it.make_tasks(1, seed=1, kinds=["photo"])


def test_splits_are_named_by_seed():
    assert it.split(it.TRAIN_SEED) == "train" and it.split(it.HELDOUT_SEED - 1) == "train"
    assert it.split(it.HELDOUT_SEED) == "heldout" and it.split(it.HELDOUT_SEED + 5) == "heldout"


def test_heldout_tasks_rarely_repeat_a_training_task():
    training = {(t.kind, t.answer) for t in it.make_tasks(5000, seed=it.TRAIN_SEED)}
    heldout = it.make_tasks(1000, seed=it.HELDOUT_SEED)
    repeats = [t.answer for t in heldout if (t.kind, t.answer) in training]
    print(f"{len(repeats)} of {len(heldout)} held-out tasks repeat one of the first 5000 training tasks")
    assert len(repeats) <= 10, repeats  # about 5 expected by chance; 1-shape and 1-word-text tasks would give ~50


# --- the scorer --------------------------------------------------------------------------------------------------

def test_the_reference_answer_scores_full_marks_even_with_its_whitespace_mangled(sample):
    for task in sample:
        n = len(task.facts)
        assert it.score(task, task.answer) == {"correct": n, "total": n, "exact": True}
        mangled = "  " + task.answer.replace(" ", "\n  ").replace(".", " .").replace(",", " ,") + "\n"
        assert it.score(task, mangled)["exact"], mangled


def test_one_changed_fact_costs_exactly_one_and_an_empty_answer_scores_zero(sample):
    for task in sample:
        n = len(task.facts)
        assert it.score(task, "") == {"correct": 0, "total": n, "exact": False}
        for name, value in task.facts:
            wrong = task.answer.replace(f"{name} {value}.", f"{name} {value}x.", 1)
            assert it.score(task, wrong) == {"correct": n - 1, "total": n, "exact": False}, (name, wrong)
            dropped = task.answer.replace(f"{name} {value}.", "", 1)
            assert it.score(task, dropped)["correct"] == n - 1


def test_wrong_values_are_wrong_and_only_the_first_statement_counts():
    task = next(t for t in it.make_tasks(4, seed=11) if t.kind == "bars")
    (name, value), = fact(task, "Bar . is")[:1]
    other = str(int(value) % 9 + 1)
    assert it.stated_value(task.answer, name) == value
    assert it.score(task, f"{name} {other}. {name} {value}.")["correct"] == 0  # hedging does not help
    assert it.score(task, f"{name} {value}")["correct"] == 1  # cut off before the full stop: still stated
    assert it.score(task, f"{name.lower()} {value}.")["correct"] == 0  # the phrasing is exact, not case-free


# --- the facts are in the pixels ---------------------------------------------------------------------------------

def colourful(px: np.ndarray) -> np.ndarray:
    """Pixels of a saturated colour (not white, grey or black ink)."""
    return (px.max(axis=2) - px.min(axis=2)) > 60


def runs(mask_1d: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask_1d.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_a_bar_is_drawn_as_tall_as_its_value_in_the_stated_order(sample):
    for task in (t for t in sample if t.kind == "bars"):
        heights = colourful(pixels(task)).sum(axis=0)  # coloured pixels per column
        bars = [int(heights[a:b].max()) for a, b in runs(heights > 0)]
        values = [int(v) for _, v in fact(task, "Bar . is")]
        assert bars == [v * it.BAR_UNIT for v in values]
        assert f"{len(values)} bars" == dict(task.facts)["The chart has"]


def test_each_stated_shape_is_in_its_cell_with_its_colour_and_outline_and_the_other_cells_are_empty(sample):
    fill = {"square": (0.95, 1.01), "circle": (0.70, 0.85), "triangle": (0.40, 0.60)}  # area / bounding box
    for task in (t for t in sample if t.kind == "shapes"):
        px = pixels(task)
        stated = {m.group(1): value for name, value in task.facts if (m := re.fullmatch(r"At the (.+) there is", name))}
        for cell, position in enumerate(it.POSITIONS):
            y, x = (cell // 3) * it.SHAPE_CELL, (cell % 3) * it.SHAPE_CELL
            block = px[y:y + it.SHAPE_CELL, x:x + it.SHAPE_CELL]
            ink = (block != 255).any(axis=2)
            if position not in stated:
                assert not ink.any(), position
                continue
            _, colour, shape = stated[position].split()
            rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
            area = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
            assert fill[shape][0] < ink.sum() / area < fill[shape][1], (position, shape)
            inside = block[ink & (np.abs(block - it.COLOURS[colour]).sum(axis=2) < 30)]
            assert len(inside) > 0.8 * ink.sum(), (position, colour)  # the rest is the antialiased edge
        counts = {name[:-2].lower(): int(v) for name, v in fact(task, r"\w+s:")}
        assert sum(counts.values()) == len(stated) == int(dict(task.facts)["The image has"].split()[0])


def test_each_word_of_a_text_is_a_line_of_ink_in_the_stated_colour(sample):
    for task in (t for t in sample if t.kind == "text"):
        px = pixels(task)
        ink = (px != 255).any(axis=2)
        lines = runs(ink.any(axis=1))
        words = [v for _, v in fact(task, r"Word \d is")]
        assert len(lines) == len(words) and dict(task.facts)["The image says:"] == " ".join(words)
        for a, b in lines:
            assert ink[a:b].sum() > 150  # at least one 36 px glyph of ink
            assert b - a >= 20  # glyphs about as tall as a 28 px token
        solid = px[(np.abs(px - it.COLOURS[dict(task.facts)["The text is"]]).sum(axis=2) < 30)]
        assert len(solid) > 0.5 * ink.sum()


def test_each_table_cell_holds_ink_and_the_rest_of_the_image_is_blank(sample):
    for task in (t for t in sample if t.kind == "table"):
        px = pixels(task)
        rows = len(fact(task, r"Row \d:"))
        cols = len(fact(task, r"Row 1:")[0][1].split(", "))
        assert dict(task.facts)["The table has"] == f"{rows} rows and {cols} columns"
        black = (px < 60).all(axis=2)
        for r in range(rows):
            for c in range(cols):
                inner = black[r * it.CELL_H + 4:(r + 1) * it.CELL_H - 4, c * it.CELL_W + 4:(c + 1) * it.CELL_W - 4]
                assert inner.sum() > 40, (r, c)
        assert (px[rows * it.CELL_H + 2:] == 255).all() and (px[:, cols * it.CELL_W + 2:] == 255).all()


# --- for people --------------------------------------------------------------------------------------------------

def test_save_examples_and_contact_sheet_write_what_they_say(tmp_path, sample):
    tasks = sample[:5]
    jsonl = it.save_examples(tasks, tmp_path / "examples")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["answer"] for line in lines] == [t.answer for t in tasks]
    assert [tuple(map(tuple, line["facts"])) for line in lines] == [t.facts for t in tasks]
    for line, task in zip(lines, tasks):
        assert Image.open(tmp_path / "examples" / line["image"]).convert("RGB").tobytes() == task.image.tobytes()
    sheet = Image.open(it.contact_sheet(tasks, tmp_path / "sheet.png", columns=3))
    assert sheet.width == 3 * (252 + 16) and sheet.height > 2 * 224
