"""Images in chat requests: OpenAI ``image_url`` parts -> a VLM's prompt ids, ``pixel_values`` and ``image_sizes``.

A request's images are checked in this order, each failure a 400 naming the part
(``messages.0.content.1.image_url.url``) and what is allowed, before any pixel is decoded:

1. the model takes images (a vision-language model whose image token is known),
2. at most ``max_images`` of them,
3. each URL is a ``data:`` URL: the server fetches nothing and reads no files, so ``http(s)://``,
   ``file://`` or a bare path is refused whatever it points to,
4. then each is decoded by :func:`trimode.image_processing.load_image` with the server's
   ``max_image_bytes`` and ``max_image_pixels`` (the size before base64 decoding, the pixel
   count from the header), and the prompt is built by
   :func:`~trimode.image_processing.build_inputs` through the model's chat template.

Decoding and resizing run in a worker thread (``asyncio.to_thread``): a large image takes a
noticeable time to decode, and the event loop keeps streaming other requests' tokens meanwhile.

The image placeholder token is reserved for images: a prompt whose *text* tokenizes to it
(a client typing ``[IMG]``, or token ids in ``/v1/completions``) is refused, since the model
would find one image feature too few for it (:func:`check_placeholders`).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..image_processing import DATA_URL_TYPES, ImageInputError, ImageProcessor, build_inputs, load_image
from .protocol import APIError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
INLINE_ONLY = (f"send each image inline as a data:image/<{'|'.join(DATA_URL_TYPES)}>;base64,<data> URL "
               "(this server fetches no URLs and reads no files)")


@dataclass
class ImageSource:
    """One ``image_url`` part of a request: where it is (message, part) and its URL."""

    message: int
    part: int
    url: str

    @property
    def param(self) -> str:
        return f"messages.{self.message}.content.{self.part}.image_url.url"


class ImagePrompts:
    """Turns a chat with image parts into prompt ids and image inputs, with the server's limits."""

    def __init__(self, loaded, tokenizer, name: str, max_images: int, max_bytes: int, max_pixels: int):
        self.config = loaded.model.config
        self.tokenizer = tokenizer
        self.problem = loaded.image_support_error(name)  # why this model takes no images, or None
        self.processor = (ImageProcessor(self.config, max_bytes=max_bytes, max_pixels=max_pixels)
                          if loaded.is_vlm else None)
        self.token = self.config.image_token_id if self.problem is None else None
        self.max_images = max_images
        self.max_bytes, self.max_pixels = max_bytes, max_pixels

    # ------------------------------------------------------------ checks before decoding
    def check(self, sources: list[ImageSource]) -> None:
        """The checks 1-3 of the module docstring: cheap, before any image is decoded."""
        if self.problem is not None:
            raise APIError(400, f"{sources[0].param}: {self.problem}", sources[0].param, code="images_not_supported")
        if len(sources) > self.max_images:
            raise APIError(400, f"messages: {len(sources)} images in one request; at most {self.max_images} "
                                "(max_images)", "messages", code="too_many_images")
        for source in sources:
            check_inline(source)

    # ------------------------------------------------------------ building
    async def build(self, messages: list[dict], sources: list[ImageSource]) -> tuple[list[int], dict]:
        """Prompt ids and ``{"pixel_values", "image_sizes"}`` of a checked chat, built off the event loop."""
        # The thread also tokenizes: encoding without truncation or padding only reads the tokenizer, so it
        # runs safely beside the event loop's own encoding and decoding of other requests.
        built = await asyncio.to_thread(self._build, messages, sources)
        ids = built["input_ids"]
        images = {"pixel_values": built["pixel_values"], "image_sizes": built["image_sizes"]}
        self.check_placeholders(ids, "messages", expected=self.image_tokens(images))
        return ids, images

    def _build(self, messages: list[dict], sources: list[ImageSource]) -> dict:
        """(worker thread) decode every image, then render the chat with the images in place."""
        messages = [dict(m, content=list(m["content"])) if isinstance(m["content"], list) else dict(m)
                    for m in messages]  # the caller's parts stay as they were
        for source in sources:
            try:
                image = load_image(source.url, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
            except ImageInputError as e:
                raise APIError(400, f"{source.param}: {e}", source.param, code="invalid_image") from None
            messages[source.message]["content"][source.part] = {"type": "image", "image": image}
        try:
            return build_inputs(self.tokenizer, messages, self.config, self.processor)
        except ImageInputError as e:
            raise APIError(400, f"messages: {e}", "messages", code="invalid_image") from None
        except Exception as e:  # a template that refuses the conversation: the client's input, not a crash
            raise APIError(400, f"messages: the chat template rejected the conversation: {e}", "messages") from None

    # ------------------------------------------------------------ placeholders
    def image_tokens(self, images: dict | None) -> int:
        """Placeholder tokens the images fill: one per merged patch of each image."""
        if not images:
            return 0
        grid = images["image_sizes"] // self.processor.cell
        return int(grid.prod(dim=-1).sum())

    def check_placeholders(self, ids: list[int], param: str, expected: int = 0) -> None:
        """Refuse a prompt that holds the image placeholder anywhere but where its images put it."""
        if self.token is None:
            return
        found = ids.count(self.token)
        if found != expected:
            text = self.tokenizer.convert_ids_to_tokens(self.token)
            raise APIError(400, f"{param}: the prompt's text holds the image placeholder token {text!r} (id "
                                f"{self.token}), {found - expected} time(s); it is reserved for images: send them as "
                                "image_url parts of a chat message", param, code="invalid_image")


def check_inline(source: ImageSource) -> None:
    """A ``data:`` URL, else a 400 naming the scheme (or the missing one) and what is allowed."""
    m = _SCHEME.match(source.url)
    if m and m.group(1).lower() == "data":
        return
    what = f"URL scheme {m.group(1)!r}" if m else "an image URL without a scheme (a file path?)"
    raise APIError(400, f"{source.param}: {what} is not supported; {INLINE_ONLY}", source.param,
                   code="invalid_image")


def split_images(messages) -> tuple[list[dict], list[ImageSource]]:
    """Request messages as chat-template dicts (``developer`` -> ``system``) and their image parts in order.

    Text-only contents are joined into one string (what every chat template takes); a content with
    images keeps its parts, for :func:`~trimode.image_processing.build_inputs`.
    """
    out, sources = [], []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role  # OpenAI's newer name for system
        content = m.content
        if not isinstance(content, str):
            if any(p.type == "image_url" for p in content):
                sources += [ImageSource(i, j, p.image_url.url) for j, p in enumerate(content) if p.type == "image_url"]
                content = [{"type": "text", "text": p.text} if p.type == "text" else
                           {"type": "image_url", "image_url": {"url": p.image_url.url}} for p in content]
            else:
                content = "".join(p.text for p in content)
        out.append({"role": role, "content": content})
    return out, sources


def batch_images(images: list[dict | None], device: torch.device) -> dict:
    """The decoders' image inputs for one batch: every row's images in row order, zero-padded to the
    largest height and width (as the processor pads one request's images), on ``device``; {} without any.

    The tower crops each image to its ``image_sizes`` before its first layer, so the padding never
    reaches a feature: an image gives the same features alone or batched with other requests'.
    """
    present = [im for im in images if im]
    if not present:
        return {}
    height = max(im["pixel_values"].shape[-2] for im in present)
    width = max(im["pixel_values"].shape[-1] for im in present)
    pixels = [F.pad(im["pixel_values"], (0, width - im["pixel_values"].shape[-1],
                                          0, height - im["pixel_values"].shape[-2])) for im in present]
    return {"pixel_values": torch.cat(pixels).to(device),
            "image_sizes": torch.cat([im["image_sizes"] for im in present]).to(device)}


__all__ = ["ImagePrompts", "ImageSource", "batch_images", "check_inline", "split_images"]
