"""``trimode generate``: run one prompt through one or all decoding modes and print text + stats.

``--image PATH`` (repeatable) gives a vision-language model images: the prompt is then built by
:mod:`trimode.image_processing` (through the chat template, or as a plain prompt with ``--raw``), and
every mode decodes it with ``pixel_values``/``image_sizes``. A bad image or a model without a vision
tower is a one-line error (exit status 2), as every bad input of the command line.
"""

from __future__ import annotations

import argparse

from pydantic import Field

from .common import (
    MODE_CHOICES,
    STAT_COLUMNS,
    STATS_LEGEND,
    add_model_arguments,
    load_model,
    positive_int,
    stats_row,
    stats_table,
    threshold_value,
)
from .config_flags import bounded


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate from a prompt in one or all modes",
                       description="Generate from PROMPT (and --image files, for a vision-language model) with "
                                   "the chosen decoding mode(s) and print each mode's text and statistics (nfe, "
                                   "TPF, tokens and forwards per cycle, tokens/s).")
    add_model_arguments(p)
    p.add_argument("--mode", choices=MODE_CHOICES + ["all"], default="all", help="decoding mode (default: all)")
    p.add_argument("--block-length", type=positive_int, default=None, help="block length (default: config)")
    p.add_argument("--threshold", type=threshold_value, default=argparse.SUPPRESS,
                   help="diffusion confidence threshold in (0, 1], or 'none' (default: config)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="new tokens (default: %(default)s)")
    p.add_argument("--temperature", type=bounded(float, Field(ge=0).metadata), default=0.0,
                   help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", action="store_true", default=None,
                      help="wrap PROMPT with the model's chat template (the default for a chat model, such as "
                           "trimode-smol)")
    chat.add_argument("--raw", dest="chat", action="store_false",
                      help="encode PROMPT as it is (the default for a model trained by trimode train, such as "
                           "trimode-tiny, which continues text)")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="also save what every forward did: FILE.html (a self-contained page, as the playground "
                        "of trimode serve draws it) or FILE.json (the events)")
    p.add_argument("--image", action="append", default=None, metavar="PATH", dest="images",
                   help="an image for a vision-language model (PNG, JPEG, WebP, GIF or BMP file, or a "
                        "data:image/...;base64 URL; no http URLs); repeat for several. Each <image> in PROMPT "
                        "marks where the next image goes; without any, the images come first")
    p.add_argument("prompt", help="the prompt text")
    p.set_defaults(func=run)


def encode_prompt(tok, prompt: str, chat: bool) -> list[int]:
    """The prompt's token ids (with the chat template when ``chat``)."""
    from ..tokenization import chat_prompt_ids

    ids = chat_prompt_ids(tok, prompt) if chat else tok(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the prompt is empty after tokenization")
    return ids


def image_parts(prompt: str, images: list[str]) -> list[dict]:
    """A user turn's content parts: ``prompt`` with each ``<image>`` replaced by the next image, in order.

    The same rule as a plain prompt (:func:`~trimode.image_processing.build_prompt`): one marker per
    image, or none and the images come first.
    """
    from ..image_processing import IMAGE_MARKER, ImageInputError

    pieces = prompt.split(IMAGE_MARKER)
    if len(pieces) == 1:
        pieces = [""] * len(images) + [prompt]
    elif len(pieces) - 1 != len(images):
        raise ImageInputError(f"PROMPT has {len(pieces) - 1} {IMAGE_MARKER} markers for {len(images)} --image "
                              f"files; put one {IMAGE_MARKER} where each image goes, or none (images first)")
    parts = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append({"type": "image", "image": images[i - 1]})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def prompt_inputs(loaded, prompt: str, images: list[str] | None, chat: bool) -> tuple[list[int], dict]:
    """The prompt's token ids and the decoders' image inputs (``pixel_values``, ``image_sizes``; {} without
    images). With images the prompt is built by :mod:`trimode.image_processing`: through the chat template
    (``build_inputs``, one user turn) when ``chat``, else as a plain prompt (``build_prompt``)."""
    if not images:
        return encode_prompt(loaded.tokenizer, prompt, chat), {}
    loaded.require_image_support("--image: ")
    from ..image_processing import build_inputs, build_prompt

    tok, config, processor = loaded.tokenizer, loaded.model.config, loaded.image_processor
    if chat:
        built = build_inputs(tok, [{"role": "user", "content": image_parts(prompt, images)}], config, processor)
    else:
        built = build_prompt(tok, prompt, images, config, processor)
    return built["input_ids"], {"pixel_values": built["pixel_values"], "image_sizes": built["image_sizes"]}


def _check_length(ids: list[int], images: dict, max_new_tokens: int, config) -> None:
    """Prompt (image tokens included) + new tokens must fit the model's context."""
    max_len = config.max_position_embeddings
    if len(ids) + max_new_tokens <= max_len:
        return
    held = f", {ids.count(config.image_token_id)} of them image tokens" if images else ""
    raise ValueError(f"prompt ({len(ids)} tokens{held}) + --max-new-tokens {max_new_tokens} exceeds the "
                     f"model's context of {max_len} tokens")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generation.trace import Trace, token_texts

    loaded = load_model(args, need="to encode the prompt")
    model, tok = loaded.model, loaded.tokenizer
    from ..evaluation.prompts import is_chat_model

    chat = is_chat_model(model.config, tok) if args.chat is None else args.chat
    ids, images = prompt_inputs(loaded, args.prompt, args.images, chat)
    _check_length(ids, images, args.max_new_tokens, model.config)
    modes = MODE_CHOICES if args.mode == "all" else [args.mode]
    if args.trace is not None and not args.trace.endswith((".html", ".json")):
        raise ValueError(f"--trace {args.trace}: the file must end in .html (a page) or .json (the events)")
    rows, traces = [], {}
    for mode in modes:
        trace = Trace() if args.trace else None
        kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      generator=torch.Generator().manual_seed(args.seed), return_stats=True, trace=trace, **images)
        if args.block_length is not None:
            kwargs["block_length"] = args.block_length
        if mode == "diffusion" and hasattr(args, "threshold"):  # absent: the config's threshold
            kwargs["threshold"] = args.threshold
        out, nfe, stats = model.decode_mode(mode, [ids], **kwargs)
        text = tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)
        print(f"=== {mode} ===\n{text}\n")
        rows.append(stats_row(mode, nfe, stats))
        if trace is not None:
            traces[mode] = [dict(view, text=token_texts(view["row"], tok.decode)) for view in trace.row_views()]
    print(stats_table(rows, STAT_COLUMNS))
    print(f"\n{STATS_LEGEND}")
    if loaded.has_drafter:
        print("(linear-spec and quadratic-spec draft with the LoRA drafter; verification never uses it)")
    if args.trace:
        from ..serving.playground import recorded, write_trace

        print(f"trace: {write_trace(args.trace, recorded(loaded.name, args.prompt, traces, images=args.images))}")
    return 0
