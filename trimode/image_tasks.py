"""Generated image tasks with exactly checkable descriptions, for training and judging a small vision-language model.

Issue 18 wants a vision-language model of our own, trained on a laptop CPU, and a way to tell whether it reads
images right. Real photos cannot be checked exactly, so this module *draws* the images (with PIL) and knows what
is in them: every task pairs an image with a question and a long reference answer made of fixed-phrasing
sentences, one per fact ("Bar A is 7."). :func:`score` checks each fact in a generated answer, so AR accuracy is
the fraction of facts stated exactly.

Four kinds, each drawn at a size that is a multiple of 28 px, because the Pixtral vision tower (14 px patches,
2x2 merge) makes one image token per 28x28 cell:

=========  ==========  ======  ===============================================================================
kind       size (WxH)  tokens  why that size
=========  ==========  ======  ===============================================================================
``bars``   224 x 224   64      9 value levels at 16 px each (a one-step difference is over half a patch) plus
                               a row for the printed values and one for the labels; 5 bar slots of 39 px.
``table``  252 x 168   54      3 columns of 84 px (3 tokens; a 4-letter word at 22 px is 57 px wide) x 3 rows
                               of 56 px (2 tokens), the grid lines on token borders.
``shapes`` 168 x 168   36      a 3 x 3 grid of 56 px cells: each shape covers 2 x 2 tokens.
``text``   224 x 168   48      up to 3 lines of 56 px at 36 px (a glyph is about one token), a 4-letter word
                               is ~95 px wide, leaving room for +-20 px of horizontal jitter.
=========  ==========  ======  ===============================================================================

All text is DejaVu Sans Bold, the font matplotlib (a dependency) bundles, so no system font is needed and the
pixels are the same on every machine with the same Pillow/FreeType. Bold because thin strokes at these sizes
are one or two pixels wide, hard for a tiny encoder.

Splits: ``make_tasks(n, seed)`` draws task ``i`` from ``random.Random(f"{seed}:{i}")``, so two seeds give
independent streams and ``make_tasks(n, seed)`` is a prefix of ``make_tasks(m, seed)`` for ``m > n``. Training
uses seeds below :data:`HELDOUT_SEED` (``TRAIN_SEED`` = 0 by default); held-out evaluation uses seeds from
:data:`HELDOUT_SEED` up (see :func:`split`). The content spaces are large (from thousands of two-shape images
to millions of tables) and their smallest corners are rare, so a held-out task repeats a training task's
content only by chance: about 5 in 1000 against the first 5000 training tasks (the tests count them).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

TRAIN_SEED = 0
HELDOUT_SEED = 10_000  # seeds >= this are held out; training seeds are below it

KINDS = ("bars", "table", "shapes", "text")

# Small vocabularies: the model must learn to *read* them, not to know many of them.
LABELS = tuple("ABCDEFGHKMPRST")  # bar labels; no I/O/Q/L/J, which a tiny encoder confuses with 1/0/D
WORDS = ("cat", "dog", "sun", "box", "tree", "fish", "bird", "cake", "lamp", "door", "milk", "rain", "star", "ship",
         "road", "leaf")  # at most 4 letters so that a word fits an 84 px table cell
COLOURS = {  # saturated and far apart: a colour is recognisable from one 14 px patch
    "red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 220), "orange": (245, 140, 20),
    "purple": (140, 60, 180), "black": (0, 0, 0)}
BAR_COLOURS = ("red", "green", "blue", "orange", "purple")  # not black: black is the printed text
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top middle", "top right", "middle left", "center", "middle right", "bottom left",
             "bottom middle", "bottom right")  # reading order of a 3 x 3 grid

QUESTIONS = {  # one fixed question per kind: the answer's phrasing is fixed too
    "bars": "Describe the bar chart: the number of bars, each bar's value from left to right, "
            "and the tallest and the shortest bar.",
    "table": "Read the table: its size, then every row from top to bottom.",
    "shapes": "Describe the shapes: how many there are, the colour and kind of each by position, "
              "and how many of each kind.",
    "text": "What does the image say? Give the number of words, each word, the whole text and its length.",
}

WHITE = (255, 255, 255)
INK = (0, 0, 0)


@dataclass(frozen=True)
class Region:
    """Where something the answer names is drawn: an ink box and the words for it.

    ``box`` is (x0, y0, x1, y1) in pixels, ``x1``/``y1`` exclusive; ``text`` is what is written there, read left
    to right across the box (empty for a shape or a bar); ``names`` are words the answer uses for it that are not
    written (its colour, its kind). Training uses them to tell each image token what lies under it
    (:mod:`trimode.training.vlm_grounding`); scoring never does.
    """

    box: tuple[int, int, int, int]
    text: str = ""
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageTask:
    """One generated example: the image, the user prompt, the reference answer and the facts it states.

    ``answer`` is the sentences ``f"{name} {value}."`` of ``facts``, in order, joined by spaces: a fact's name is
    the fixed phrase that introduces it ("Bar A is"), so :func:`score` finds each fact in any text. ``regions``:
    where the named things are drawn (:class:`Region`).
    """

    kind: str
    image: Image.Image
    question: str
    answer: str
    facts: tuple[tuple[str, str], ...]
    regions: tuple[Region, ...] = ()


def split(seed: int) -> str:
    """``"heldout"`` for evaluation seeds (``>= HELDOUT_SEED``), ``"train"`` for the rest."""
    return "heldout" if seed >= HELDOUT_SEED else "train"


# --- fonts -----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans Bold at ``size`` px, from matplotlib's bundled fonts (found without importing matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise RuntimeError("trimode.image_tasks draws with the DejaVu font that matplotlib bundles: install matplotlib")
    path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    return ImageFont.truetype(str(path), size)


def _draw_centered(draw: ImageDraw.ImageDraw, cx: float, cy: float, text: str, size: int, fill=INK,
                   names: tuple[str, ...] = ()) -> Region:
    """Text whose ink box is centred on (cx, cy) (``anchor="mm"`` centres on the font's metrics instead, which
    puts digits and lowercase words at different heights); returns its :class:`Region`."""
    left, top, right, bottom = font(size).getbbox(text)
    x, y = round(cx - (left + right) / 2), round(cy - (top + bottom) / 2)
    draw.text((x, y), text, font=font(size), fill=fill)
    return Region((x + left, y + top, x + right, y + bottom), text, names)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- bars ------------------------------------------------------------------------------------------------------

BARS_SIZE = (224, 224)
BAR_UNIT = 16  # px per unit of value: 9 -> 144 px
BAR_BASELINE = 190  # y of the axis; labels go below it, values above each bar


def _bars(rng: random.Random) -> tuple[Image.Image, list[tuple[str, str]], list[Region]]:
    """3-5 bars with distinct labels and distinct values 1-9 (distinct, so the tallest and shortest are unique)."""
    n = rng.randint(3, 5)
    labels = rng.sample(LABELS, n)
    values = rng.sample(range(1, 10), n)
    colour_name = rng.choice(BAR_COLOURS)
    colour = COLOURS[colour_name]
    regions = []
    image = Image.new("RGB", BARS_SIZE, WHITE)
    draw = ImageDraw.Draw(image)
    width = BARS_SIZE[0]
    slot = (width - 28) / n  # 14 px margins left and right
    bar_w = min(36, round(slot * 0.7))
    draw.line([(8, BAR_BASELINE), (width - 8, BAR_BASELINE)], fill=(120, 120, 120), width=2)
    for i, (label, value) in enumerate(zip(labels, values)):
        cx = 14 + slot * (i + 0.5)
        x0 = round(cx - bar_w / 2)
        top = BAR_BASELINE - value * BAR_UNIT
        draw.rectangle([x0, top, x0 + bar_w - 1, BAR_BASELINE - 1], fill=colour)
        regions += [Region((x0, top, x0 + bar_w, BAR_BASELINE), names=(colour_name,)),
                    _draw_centered(draw, cx, top - 14, str(value), 22),
                    _draw_centered(draw, cx, BAR_BASELINE + 17, label, 22)]
    facts = [("The chart has", _plural(n, "bar"))]
    facts += [(f"Bar {label} is", str(value)) for label, value in zip(labels, values)]
    tallest = max(zip(values, labels))
    shortest = min(zip(values, labels))
    facts += [("The tallest bar is", f"{tallest[1]} with {tallest[0]}"),
              ("The shortest bar is", f"{shortest[1]} with {shortest[0]}")]
    return image, facts, regions


# --- table -----------------------------------------------------------------------------------------------------

TABLE_SIZE = (252, 168)
CELL_W, CELL_H = 84, 56


def _table(rng: random.Random) -> tuple[Image.Image, list[tuple[str, str]], list[Region]]:
    """A 2-3 x 2-3 grid: a word in the first column (a row's name), numbers 0-99 in the others."""
    rows, cols = rng.randint(2, 3), rng.randint(2, 3)
    cells = [[rng.choice(WORDS)] + [str(rng.randint(0, 99)) for _ in range(cols - 1)] for _ in range(rows)]
    image = Image.new("RGB", TABLE_SIZE, WHITE)
    draw = ImageDraw.Draw(image)
    # The table sits in the top-left corner, its lines on the 28 px token grid, so that a cell is whole tokens.
    for r in range(rows + 1):
        draw.line([(0, min(r * CELL_H, TABLE_SIZE[1] - 2)), (cols * CELL_W, min(r * CELL_H, TABLE_SIZE[1] - 2))],
                  fill=(90, 90, 90), width=2)
    for c in range(cols + 1):
        x = min(c * CELL_W, TABLE_SIZE[0] - 2)
        draw.line([(x, 0), (x, rows * CELL_H)], fill=(90, 90, 90), width=2)
    regions = [_draw_centered(draw, c * CELL_W + CELL_W / 2 + 1, r * CELL_H + CELL_H / 2 + 1, cell, 22)
               for r, row in enumerate(cells) for c, cell in enumerate(row)]
    facts = [("The table has", f"{_plural(rows, 'row')} and {_plural(cols, 'column')}")]
    facts += [(f"Row {r + 1}:", ", ".join(row)) for r, row in enumerate(cells)]
    return image, facts, regions


# --- shapes ----------------------------------------------------------------------------------------------------

SHAPES_SIZE = (168, 168)
SHAPE_CELL = 56


def _shapes(rng: random.Random) -> tuple[Image.Image, list[tuple[str, str]], list[Region]]:
    """2-4 shapes, each a colour and a kind, in distinct cells of a 3 x 3 grid.

    Not 1: only 162 one-shape images exist, so held-out ones would all be training images too; 2 is rarer than
    3 and 4 for the same reason (11664 two-shape images).
    """
    n = rng.choice((2, 3, 3, 4, 4))
    cells = sorted(rng.sample(range(9), n))  # reading order, the order the answer lists them in
    placed = [(cell, rng.choice(tuple(COLOURS)), rng.choice(SHAPES)) for cell in cells]
    image = Image.new("RGB", SHAPES_SIZE, WHITE)
    draw = ImageDraw.Draw(image)
    regions = [_draw_shape(draw, shape, colour, (cell % 3) * SHAPE_CELL, (cell // 3) * SHAPE_CELL)
               for cell, colour, shape in placed]
    facts = [("The image has", _plural(n, "shape"))]
    facts += [(f"At the {POSITIONS[cell]} there is", f"{_article(colour)} {colour} {shape}") for cell, colour, shape in placed]
    facts += [(f"{shape.capitalize()}s:", str(sum(s == shape for _, _, s in placed))) for shape in SHAPES]
    return image, facts, regions


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: str, x: int, y: int) -> Region:
    """A filled shape of about 40 px in the 56 px cell whose top-left corner is (x, y); returns its region."""
    fill = COLOURS[colour]
    m = 8  # margin: neighbouring shapes never touch
    box = [x + m, y + m, x + SHAPE_CELL - m - 1, y + SHAPE_CELL - m - 1]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle([box[0] + 2, box[1] + 2, box[2] - 2, box[3] - 2], fill=fill)  # same area as the circle, about
    else:
        draw.polygon([(x + SHAPE_CELL / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return Region((box[0], box[1], box[2] + 1, box[3] + 1), names=(colour, shape))


# --- text ------------------------------------------------------------------------------------------------------

TEXT_SIZE = (224, 168)
TEXT_LINE = 56
TEXT_FONT = 36


def _text(rng: random.Random) -> tuple[Image.Image, list[tuple[str, str]], list[Region]]:
    """1-3 words, each a vocabulary word or a number 0-999, one per line, in one colour.

    A text of one word is a number, and the colour is a fact too: with only 16 one-word texts, or without the
    colour, a held-out text would often be a training text.
    """
    n = rng.choice((1, 2, 2, 2, 3, 3, 3, 3))
    words = [rng.choice(WORDS) if n > 1 and rng.random() < 0.4 else str(rng.randint(0, 999)) for _ in range(n)]
    colour = rng.choice(tuple(COLOURS))
    image = Image.new("RGB", TEXT_SIZE, WHITE)
    draw = ImageDraw.Draw(image)
    top = (TEXT_SIZE[1] - n * TEXT_LINE) // 2  # the block of lines centred vertically
    # A small horizontal jitter, so that a word is read from its glyphs and not from where it starts.
    regions = [_draw_centered(draw, TEXT_SIZE[0] / 2 + rng.randint(-20, 20), top + (i + 0.5) * TEXT_LINE, word,
                              TEXT_FONT, COLOURS[colour], names=(colour,))
               for i, word in enumerate(words)]
    facts = [("The text has", _plural(n, "word")), ("The text is", colour)]
    facts += [(f"Word {i + 1} is", word) for i, word in enumerate(words)]
    facts += [("The image says:", " ".join(words)),
              ("Without spaces it has", _plural(sum(map(len, words)), "character"))]
    return image, facts, regions


GENERATORS: dict[str, Callable[[random.Random], tuple[Image.Image, list[tuple[str, str]], list[Region]]]] = {
    "bars": _bars, "table": _table, "shapes": _shapes, "text": _text}


# --- tasks -----------------------------------------------------------------------------------------------------

def make_task(kind: str, rng: random.Random) -> ImageTask:
    """One task of ``kind``, drawn from ``rng`` (the same state gives the same pixels and answer)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown image task kind {kind!r}; the kinds are {', '.join(KINDS)}")
    image, facts, regions = GENERATORS[kind](rng)
    answer = " ".join(f"{name} {value}." for name, value in facts)
    return ImageTask(kind, image, QUESTIONS[kind], answer, tuple(facts), tuple(regions))


def make_tasks(n: int, seed: int = TRAIN_SEED, kinds=None) -> list[ImageTask]:
    """``n`` tasks cycling through ``kinds`` (all of :data:`KINDS` by default), so the mix is balanced.

    Task ``i`` comes from its own ``random.Random(f"{seed}:{i}")``: the list for a seed is deterministic and a
    prefix of any longer list for that seed, and different seeds never share a task's random stream.
    """
    kinds = tuple(kinds or KINDS)
    return [make_task(kinds[i % len(kinds)], random.Random(f"{seed}:{i}")) for i in range(n)]


# --- scoring ---------------------------------------------------------------------------------------------------

def _normalize(text: str) -> str:
    """Whitespace made canonical: single spaces, none before ``. , :`` and one after each comma, so that
    "Row 1 :  cat ,4" reads "Row 1: cat, 4"."""
    text = re.sub(r"\s+([.,:])", r"\1", " ".join(text.split()))
    return re.sub(r",(?=\S)", ", ", text)


def stated_value(text: str, name: str) -> str | None:
    """The value that ``text`` states after the phrase ``name`` (its first statement), or None if it never does.

    A value runs to the next full stop (values hold no full stops) or to the end of the text.
    """
    match = re.search(r"(?<!\w)" + re.escape(_normalize(name)) + r"\s*([^.]*)", _normalize(text))
    return match.group(1).strip() if match else None


def score(task: ImageTask, generated_text: str) -> dict:
    """How many of ``task``'s facts ``generated_text`` states exactly: ``{"correct", "total", "exact"}``.

    A fact is correct when its phrase is present and the value after it is the reference value (case and words
    exact, whitespace free). A missing fact and a wrong value both count as wrong; only the first statement of a
    fact counts, so hedging with a second value does not help.
    """
    correct = sum(stated_value(generated_text, name) == _normalize(value) for name, value in task.facts)
    total = len(task.facts)
    return {"correct": correct, "total": total, "exact": correct == total}


# --- examples for people ---------------------------------------------------------------------------------------

def save_examples(tasks: list[ImageTask], folder) -> Path:
    """Each task's image as ``NNNN-kind.png`` and one line per task in ``examples.jsonl``; returns the JSONL path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, task in enumerate(tasks):
        name = f"{i:04d}-{task.kind}.png"
        task.image.save(folder / name)
        lines.append(json.dumps({"image": name, "kind": task.kind, "question": task.question, "answer": task.answer,
                                 "facts": [list(f) for f in task.facts]}))
    path = folder / "examples.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _wrap(text: str, font_: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` px."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and font_.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + ([line] if line else [])


def contact_sheet(tasks: list[ImageTask], path, columns: int = 4) -> Path:
    """One PNG tiling the tasks' images (at their real size, framed) with each answer wrapped underneath."""
    tile_w = max(t.image.width for t in tasks) + 16
    small = font(11)
    wrapped = [_wrap(t.answer, small, tile_w - 12) for t in tasks]
    tile_h = max(t.image.height for t in tasks) + 24 + 14 * max(map(len, wrapped))
    rows = -(-len(tasks) // columns)
    sheet = Image.new("RGB", (columns * tile_w, rows * tile_h), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    for i, (task, lines) in enumerate(zip(tasks, wrapped)):
        x, y = (i % columns) * tile_w + 8, (i // columns) * tile_h + 8
        draw.rectangle([x - 1, y - 1, x + task.image.width, y + task.image.height], outline=(150, 150, 150))
        sheet.paste(task.image, (x, y))
        text_y = y + max(t.image.height for t in tasks) + 6
        for j, line in enumerate(lines):
            draw.text((x, text_y + 14 * j), line, font=small, fill=INK)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
