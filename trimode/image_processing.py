"""Images in, VLM inputs out: load an image safely, resize it for the Pixtral tower, build the prompt ids.

A vision-language model (:class:`~trimode.modeling_vlm.NemotronLabsDiffusionVLMModel`) takes three
things: ``input_ids`` with one ``config.image_token_id`` placeholder per image feature,
``pixel_values`` (N, 3, H, W) and ``image_sizes`` (N, 2). This module makes them from what a user
has: a chat in OpenAI style (text parts and image parts) or a plain prompt with ``<image>`` markers.

- :func:`load_image`: a path, a PIL image, raw bytes or a ``data:image/...;base64,`` URL to an RGB
  PIL image. Nothing is fetched over the network (``http://``, ``file://``, ... are refused), the
  byte size is checked before reading and the pixel count from the header before decoding, so a
  hostile input costs neither a request nor a decompression bomb. Every refusal is one
  :class:`ImageInputError` naming the bad value and what is allowed.
- :class:`ImageProcessor`: transformers' Pixtral image processor (resize so the longest edge is at
  most ``config.max_image_size``, each side rounded up to a multiple of ``patch_size *
  spatial_merge_size``, bicubic, CLIP mean/std, pad the batch), PIL backend. One merged patch
  (28 x 28 px for the published tower) is one image token.
- :func:`image_token_ids`: the placeholder ids of one image, framed as ``docs/nld-vlm-layout.md``
  section 5 describes (Pixtral rows with ``[IMG_BREAK]``/``[IMG_END]``, NLD's ``IMG_START``...; the
  config says which frame tokens exist).
- :func:`build_inputs` (chat) and :func:`build_prompt` (plain text): the text is rendered with a
  marker where each image goes, split on the marker, and the pieces' ids are joined with each
  image's placeholder ids. Text pieces are tokenized separately, so no text token can merge with an
  image token and the placeholder count is exact by construction.

Known difference from the published checkpoint (doc section 4): its ``image_processing.py`` resizes
with cv2 ``INTER_CUBIC`` and rounds half to even when shrinking; transformers' Pixtral processor
uses PIL bicubic and floors. The token grid can differ by one row or column for some sizes, and
pixel values differ slightly.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import uuid
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageOps
from transformers import PixtralImageProcessorPil

DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # an encoded image; a 1400 px photo is well under 5 MB
DEFAULT_MAX_PIXELS = 50_000_000  # decoded, ~150 MB as RGB; below PIL's own bomb warning (89.5 M)
DATA_URL_TYPES = ("png", "jpeg", "jpg", "webp", "gif")
# The decoders PIL may use. Formats outside this list are refused even if PIL could read them:
# fewer parsers exposed to untrusted bytes.
DECODE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
IMAGE_MARKER = "<image>"  # where an image goes in a plain prompt (build_prompt)
ALLOWED_SOURCES = ("a file path (str or pathlib.Path), a PIL.Image.Image, raw bytes, "
                   "or a data:image/<png|jpeg|webp|gif>;base64,... URL")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")  # 2+ chars, so a Windows drive "C:" is a path
_DATA_URL = re.compile(r"^data:image/([A-Za-z0-9.+\-]+)((?:;[^;,]*)*);base64,", re.IGNORECASE)


class ImageInputError(ValueError):
    """A user-supplied image or prompt that cannot be used; the message says what is allowed."""


# ------------------------------------------------------------------------------------------ loading
def load_image(source: Any, *, max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB PIL image from ``source``: a path, a PIL image, raw bytes or a ``data:image/...;base64,`` URL.

    Transparency is composited on white and EXIF orientation applied (as transformers' ``load_image``
    and ``convert_to_rgb`` do). Raises :class:`ImageInputError` for a URL of any other scheme (no
    network fetches), a missing file, undecodable bytes, bad base64, more than ``max_bytes`` encoded
    bytes or more than ``max_pixels`` pixels (read from the header, before decoding).
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, "PIL image")
        return _to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_bytes(len(data), max_bytes, "raw image bytes")
        return _decode(data, max_pixels, "raw image bytes")
    if isinstance(source, Path):
        return _read_file(source, max_bytes, max_pixels)
    if isinstance(source, str):
        scheme = _SCHEME.match(source)
        if scheme and scheme.group(1).lower() == "data":
            return _decode(_data_url_bytes(source, max_bytes), max_pixels, "data: URL")
        if scheme:
            raise ImageInputError(
                f"image URL scheme {scheme.group(1)!r} is not supported ({_short(source)}): trimode does no network or "
                f"URL fetches. Allowed: {ALLOWED_SOURCES}. For a local file name that contains ':', pass a "
                "pathlib.Path.")
        return _read_file(Path(source), max_bytes, max_pixels)
    raise ImageInputError(f"an image of type {type(source).__name__} is not supported; allowed: {ALLOWED_SOURCES}")


def _short(text: str, limit: int = 80) -> str:
    """``text`` for an error message: a data URL can be megabytes long."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_bytes(n: int, max_bytes: int, what: str) -> None:
    if n > max_bytes:
        raise ImageInputError(f"{what}: {n} bytes is over the limit of {max_bytes} bytes (max_bytes)")


def _check_pixels(size: tuple[int, int], max_pixels: int, what: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageInputError(f"{what}: an image of {width}x{height} pixels is empty")
    if width * height > max_pixels:
        raise ImageInputError(f"{what}: {width}x{height} = {width * height} pixels is over the limit of "
                              f"{max_pixels} pixels (max_pixels)")


def _read_file(path: Path, max_bytes: int, max_pixels: int) -> Image.Image:
    what = f"image file {str(path)!r}"
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageInputError(f"{what} is not a regular file; allowed: {ALLOWED_SOURCES}")
    except OSError as e:  # missing, unreadable directory, name too long...
        raise ImageInputError(f"{what} cannot be read ({e.strerror or e}); allowed: {ALLOWED_SOURCES}") from None
    _check_bytes(size, max_bytes, what)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageInputError(f"{what} cannot be read ({e.strerror or e})") from None
    return _decode(data, max_pixels, what)


def _data_url_bytes(url: str, max_bytes: int) -> bytes:
    """The decoded payload of a ``data:image/<type>;base64,<payload>`` URL, size checked before decoding."""
    m = _DATA_URL.match(url)
    if not m:
        raise ImageInputError(f"data: URL {_short(url)} is not of the form data:image/<type>;base64,<data> "
                              f"with <type> one of {', '.join(DATA_URL_TYPES)}")
    if m.group(1).lower() not in DATA_URL_TYPES:
        raise ImageInputError(f"data: URL image type {m.group(1)!r} is not supported; allowed: "
                              f"{', '.join(DATA_URL_TYPES)}")
    payload = "".join(url[m.end():].split())  # base64 wrapped over lines is still base64
    _check_bytes(len(payload) * 3 // 4, max_bytes, "data: URL")  # no decoding of an oversized payload
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageInputError(f"data: URL payload is not valid base64 ({e})") from None


def _decode(data: bytes, max_pixels: int, what: str) -> Image.Image:
    """Open ``data`` (header only), check the pixel count, then decode."""
    try:
        image = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
    except Image.DecompressionBombError as e:  # PIL's own limit, hit while reading the header
        raise ImageInputError(f"{what}: too many pixels to decode safely ({e}); the limit is {max_pixels} "
                              "pixels (max_pixels)") from None
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise ImageInputError(f"{what} is not a decodable image ({e}); allowed formats: "
                              f"{', '.join(DECODE_FORMATS)}") from None
    _check_pixels(image.size, max_pixels, what)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageInputError(f"{what} ({image.format}, {image.size[0]}x{image.size[1]}) is corrupt or truncated "
                              f"({e})") from None
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image: EXIF orientation applied, transparency composited on white (transformers' rule)."""
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError):  # broken EXIF: keep the pixels as stored
        pass
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


# ------------------------------------------------------------------------------------------ processor
class ImageProcessor:
    """Images to ``pixel_values`` and ``image_sizes`` for a VLM, with transformers' Pixtral processor.

    Built from a :class:`~trimode.configuration_vlm.NemotronLabsDiffusionVLMConfig`: the tower's
    ``vision_config.patch_size`` (14 published), ``spatial_merge_size`` (2) and ``max_image_size``
    (1400). The transformers processor is given ``patch_size * spatial_merge_size`` (28) as its patch,
    so both sides of every processed image are multiples of one merged patch = one image token, which
    the projector needs (a side that is not silently loses its last row or column of patches).

    The PIL backend (``PixtralImageProcessorPil``) is used even where torchvision is installed: the
    images are PIL images already, and the pixels are then the same on every machine.
    """

    def __init__(self, config, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.patch_size = int(config.vision_config.patch_size)
        self.spatial_merge_size = int(config.spatial_merge_size)
        self.max_image_size = int(config.max_image_size)
        self.cell = self.patch_size * self.spatial_merge_size  # pixels per image token, each way
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.hf_processor = PixtralImageProcessorPil(patch_size={"height": self.cell, "width": self.cell},
                                                     size={"longest_edge": self.max_image_size})

    def __call__(self, images) -> dict[str, torch.Tensor]:
        """``images`` (one or a list of anything :func:`load_image` takes) to model inputs.

        Returns ``pixel_values`` (N, 3, H, W) float32, each image at the top left, zero-padded to the
        batch's largest height and width (as transformers does), and ``image_sizes`` (N, 2) int64, the
        (height, width) in pixels of each image before padding.
        """
        images = _as_list(images)
        if not images:
            raise ImageInputError("no images given: pass one image or a non-empty list")
        loaded = [load_image(im, max_bytes=self.max_bytes, max_pixels=self.max_pixels) for im in images]
        for i, im in enumerate(loaded):
            self.token_grid((im.height, im.width), what=f"image {i}")  # refuses a side that would shrink to 0
        out = self.hf_processor(loaded, return_tensors="pt")
        return {"pixel_values": out["pixel_values"].float(), "image_sizes": out["image_sizes"].long()}

    def token_grid(self, image_size: Sequence[int], *, what: str = "image") -> tuple[int, int]:
        """(rows, cols) of merged patches (image tokens) for an image of ``image_size`` = (height, width) px.

        The same size rule as transformers' Pixtral ``get_resize_output_image_size``: shrink (never
        enlarge) so the longest edge fits ``max_image_size``, flooring, then round each side up to a
        whole merged patch. A processed size gives its own grid back (``rows * cell, cols * cell``).
        """
        height, width = (int(v) for v in image_size)
        if height < 1 or width < 1:
            raise ImageInputError(f"{what}: size {height}x{width} (height x width) is empty")
        ratio = max(height / self.max_image_size, width / self.max_image_size)
        if ratio > 1:
            height, width = math.floor(height / ratio), math.floor(width / ratio)
        if height < 1 or width < 1:
            raise ImageInputError(f"{what}: an aspect ratio of {image_size[0]}x{image_size[1]} (height x width) is "
                                  f"too extreme: the short side would be 0 px once the long side is "
                                  f"{self.max_image_size} px (max_image_size)")
        return -(-height // self.cell), -(-width // self.cell)


def _as_list(images) -> list:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


# ------------------------------------------------------------------------------------------ prompt ids
def image_token_ids(rows: int, cols: int, config) -> list[int]:
    """The prompt ids of one image with a ``rows`` x ``cols`` token grid: exactly ``rows * cols`` placeholders.

    ``[start]`` + for each row: ``cols`` x ``image_token_id`` then ``image_break_token_id``, the last
    row's break replaced by ``image_end_token_id`` (Pixtral); without a break id the end id (if any)
    follows the last row; ids that are None in the config are left out (doc section 5).
    """
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if config.image_token_id is None:
        raise ValueError("config.image_token_id is None: the published config names no image token; set "
                         "config.image_token_id (and the start/break/end ids of your tokenizer) before building prompts")
    start, brk, end = config.image_start_token_id, config.image_break_token_id, config.image_end_token_id
    ids = [] if start is None else [start]
    for row in range(rows):
        ids += [config.image_token_id] * cols
        if brk is not None:
            ids.append(end if row == rows - 1 and end is not None else brk)
    if brk is None and end is not None:
        ids.append(end)
    return ids


def _images_inputs(images: list, processor: ImageProcessor) -> tuple[dict, list[tuple[int, int]]]:
    """The model's image inputs and each image's (rows, cols) grid, from the sizes the model will see."""
    if not images:
        return {"pixel_values": None, "image_sizes": None}, []
    out = processor(images)
    grids = [(int(h) // processor.cell, int(w) // processor.cell) for h, w in out["image_sizes"].tolist()]
    return out, grids


def _splice(tokenizer, text: str, marker: str, grids: list[tuple[int, int]], config) -> list[int]:
    """Ids of ``text`` with each ``marker`` replaced by the next image's placeholder ids.

    Each piece between markers is tokenized on its own without added special tokens: special-token
    strings in it (a chat template's) are still matched, and no piece can merge with an image token.
    """
    pieces = text.split(marker)
    if len(pieces) - 1 != len(grids):  # the callers count first; this guards the splice itself
        raise ImageInputError(f"{len(pieces) - 1} image markers in the prompt for {len(grids)} images")
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            ids += image_token_ids(*grids[i - 1], config)
        if piece:
            ids += tokenizer.encode(piece, add_special_tokens=False)
    return ids


def _special_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer puts before any text it encodes (e.g. Llama's BOS), [] if none.

    Found by encoding a probe with and without special tokens; what it adds after the text (an EOS)
    is not wanted at the end of a prompt and is left out.
    """
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def build_prompt(tokenizer, text: str, images, config, processor: ImageProcessor | None = None) -> dict[str, Any]:
    """Inputs for a plain (non-chat) prompt: ``text`` with one ``<image>`` per image, in order.

    Without any ``<image>`` in ``text``, the images go first. The tokenizer's own leading special
    tokens (a BOS) are added once, unless ``text`` already starts with them. Returns ``input_ids``
    (list of ints), ``pixel_values`` (N, 3, H, W) and ``image_sizes`` (N, 2), or None for both
    without images.
    """
    if not isinstance(text, str):
        raise ImageInputError(f"the prompt must be a str, got {type(text).__name__}")
    images = _as_list(images)
    markers = text.count(IMAGE_MARKER)
    if markers == 0:
        text = IMAGE_MARKER * len(images) + text
    elif len(images) > markers:
        raise ImageInputError(f"more images than {IMAGE_MARKER} markers: {len(images)} images, {markers} markers "
                              f"in the prompt; put one {IMAGE_MARKER} where each image goes (or none: images first)")
    elif len(images) < markers:
        raise ImageInputError(f"more {IMAGE_MARKER} markers than images: {markers} markers in the prompt, "
                              f"{len(images)} images")
    return _build(tokenizer, text, IMAGE_MARKER, images, config, processor, plain=True)


def _build(tokenizer, text: str, marker: str, images: list, config, processor, *, plain: bool) -> dict[str, Any]:
    processor = processor if processor is not None else ImageProcessor(config)
    inputs, grids = _images_inputs(images, processor)
    ids = _splice(tokenizer, text, marker, grids, config)
    if plain:
        prefix = _special_prefix(tokenizer)
        if prefix and ids[:len(prefix)] != prefix:  # no second BOS when the text brings its own
            ids = prefix + ids
    return {"input_ids": ids, **inputs}


# ------------------------------------------------------------------------------------------ chat
_PART_TYPES = ("text", "image_url", "image")


def _flatten_messages(messages, marker: str) -> tuple[list[dict], list]:
    """Messages with string contents (each image part replaced by ``marker``) and the images in order.

    Contents are flattened to strings because most chat templates (ChatML, SmolLM2, trimode-tiny)
    expect a string; parts are joined with nothing between them, so the text says where spaces go.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ImageInputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    flat, images = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ImageInputError(f"messages[{i}] must be a dict with 'role' and 'content', got {_short(str(message))}")
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            content = "".join(_part_text(part, f"messages[{i}].content[{j}]", marker, images)
                              for j, part in enumerate(content))
        elif content is not None and not isinstance(content, str):
            raise ImageInputError(f"messages[{i}].content must be a string or a list of parts "
                                  f"({', '.join(_PART_TYPES)}), got {type(content).__name__}")
        flat.append({**message, "content": content})
    return flat, images


def _part_text(part, where: str, marker: str, images: list) -> str:
    """The text of one content part; an image part appends its source to ``images`` and gives ``marker``."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ImageInputError(f"{where}: a text part needs a string 'text'")
        return part["text"]
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url  # {"url": ...} (OpenAI) or the URL itself
        if not isinstance(url, str):
            raise ImageInputError(f"{where}: an image_url part needs 'image_url': {{'url': '...'}} or a URL string")
        images.append(url)
        return marker
    if kind == "image":
        if part.get("image") is None:
            raise ImageInputError(f"{where}: an image part needs 'image' (a path, PIL image or bytes)")
        images.append(part["image"])
        return marker
    raise ImageInputError(f"{where}: part type {kind!r} is not supported; allowed: {', '.join(_PART_TYPES)} "
                          "(each a dict with a 'type' key)")


def build_inputs(tokenizer, messages, config, processor: ImageProcessor | None = None, *,
                 add_generation_prompt: bool = True, **template_kwargs) -> dict[str, Any]:
    """Inputs for a chat: ``messages`` in OpenAI style, images as content parts, through the chat template.

    A content is a string or a list of parts: ``{"type": "text", "text": ...}``,
    ``{"type": "image_url", "image_url": {"url": ...}}`` (or ``"image_url": "..."``), ``{"type":
    "image", "image": path | PIL image | bytes}``. The template is rendered with a unique marker per
    image; the ids of the text between markers are the template's own tokenization (as
    ``apply_chat_template(tokenize=True)``: no special tokens added, the template writes them), and
    each marker becomes :func:`image_token_ids`. ``template_kwargs`` go to the template (e.g.
    ``enable_thinking=False``). A tokenizer without a chat template: the contents are joined by
    newlines and go to :func:`build_prompt`'s rules. Returns as :func:`build_prompt`.
    """
    marker = f"<trimode-image-{uuid.uuid4().hex}>"  # cannot occur in user text by chance
    flat, images = _flatten_messages(messages, marker)
    if getattr(tokenizer, "chat_template", None) is None:
        text = "\n".join(m["content"] for m in flat if m["content"])
        return _build(tokenizer, text, marker, images, config, processor, plain=True)
    text = tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs)
    found = text.count(marker)
    if found != len(images):
        raise ImageInputError(f"the chat template kept {found} of the {len(images)} images (a template that drops "
                              "or repeats message contents cannot place images)")
    return _build(tokenizer, text, marker, images, config, processor, plain=False)


__all__ = ["ImageInputError", "ImageProcessor", "load_image", "image_token_ids", "build_inputs", "build_prompt",
           "IMAGE_MARKER", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS"]
