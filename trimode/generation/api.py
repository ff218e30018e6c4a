"""The published decoder methods, as a mixin of :class:`trimode.TrimodeModel`.

Every method returns ``(output_ids, nfe)``: ``output_ids`` is (batch, prompt +
generated) and ``nfe`` the forwards spent (prefill included). The per-call
:class:`~trimode.generation.stats.GenerationStats` is returned as a third item
with ``return_stats=True`` and is always kept in ``model.last_generation_stats``.

Prompts: a (L,) or (B, L) LongTensor, optionally with a (B, L) 0/1
``attention_mask`` marking real tokens (left or right padding), or a list of
token-id lists of different lengths. Output rows are the real prompt tokens
followed by the generated ones, right-padded with the pad id when rows differ.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .loop import Request, decode
from .modes import STRATEGIES
from .sampling import SamplingParams

_FROM_CONFIG = object()  # sentinel: "use the config's value" (lets callers pass None for threshold)


def normalize_prompts(prompt_ids, attention_mask=None, vocab_size: int | None = None) -> list[list[int]]:
    """Accept the prompt forms above and return one list of token ids per row."""
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
        ids = prompt_ids[None] if prompt_ids.dim() == 1 else prompt_ids
        if ids.dim() != 2:
            raise ValueError(f"prompt_ids must be (L,) or (batch, L), got shape {tuple(prompt_ids.shape)}")
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(ids.shape):
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal "
                                 f"prompt_ids shape {tuple(ids.shape)}")
            rows = [r[m.bool()].tolist() for r, m in zip(ids.cpu(), attention_mask.cpu())]
        else:
            rows = ids.tolist()
    elif isinstance(prompt_ids, Sequence) and len(prompt_ids) and all(isinstance(t, int) for t in prompt_ids):
        rows = [list(prompt_ids)]
    elif isinstance(prompt_ids, Sequence):
        rows = [r.tolist() if isinstance(r, torch.Tensor) else list(r) for r in prompt_ids]
    else:
        raise ValueError(f"prompt_ids must be a tensor or a list of token-id lists, got {type(prompt_ids).__name__}")
    if not rows:
        raise ValueError("prompt_ids is empty: give at least one prompt")
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        wrong = next((t for t in r if not isinstance(t, int) or isinstance(t, bool)), None)
        if wrong is not None:  # e.g. a tokenizer's BatchEncoding (its keys) or text instead of ids
            raise ValueError(f"prompt {i} holds {wrong!r} ({type(wrong).__name__}), not a token id: give token-id "
                             f"lists or a tensor (from a tokenizer's BatchEncoding, pass its ['input_ids'])")
        if vocab_size is not None:
            bad = [t for t in r if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token id {bad[0]} outside [0, vocab_size={vocab_size})")
    return rows


def _eos_set(eos_token_id, config) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset(config.eos_token_ids)
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not all(isinstance(t, int) for t in ids):
        raise ValueError(f"eos_token_id={eos_token_id!r} must be an int or a list of ints")
    return frozenset(ids)


def _block_length(value, model, mode: str) -> int:
    """None: the config's block_size; "auto": the block length that maximises tokens/s on this machine."""
    if value == "auto":
        from .autotune import auto_block_length  # measures on first use: imported only then

        return auto_block_length(model, mode)
    value = model.config.block_size if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"block_length={value!r} must be a positive integer or 'auto'")
    return value


def _threshold(value, config) -> float | None:
    value = config.threshold if value is _FROM_CONFIG else value
    if value is not None and (not isinstance(value, (int, float)) or not 0 < value <= 1):
        raise ValueError(f"threshold={value!r} must be in (0, 1], or None for a fixed schedule")
    return value


def _prefill_images(model, pixel_values, image_sizes) -> dict:
    """The image inputs of the prefill forward (a VLM's), or {}; refused for a model without images."""
    if pixel_values is None:
        if image_sizes is not None:
            raise ValueError("image_sizes was given without pixel_values")
        return {}
    if not hasattr(model, "get_image_features"):
        raise ValueError(f"pixel_values were given but {type(model).__name__} takes no images "
                         "(a vision-language model does: NemotronLabsDiffusionVLMModel)")
    return {"pixel_values": pixel_values, "image_sizes": image_sizes}


class DecodingMixin:
    """``ar_generate``, ``generate`` (block diffusion), ``linear_spec_generate``, ``quadratic_spec_generate``.

    Images (a vision-language model): ``pixel_values`` (N, C, H, W) and ``image_sizes`` (N, 2),
    the images of every row in row order, each at its row's ``image_token_id`` placeholders; they
    enter the prompt's prefill forward only, so every decoder runs unchanged after it.
    Every decoder takes ``trace=``: a callable given one :class:`~trimode.generation.trace.TraceEvent`
    per forward (a :class:`~trimode.generation.trace.Trace` collects them); tokens are the same with
    or without it.
    """

    last_generation_stats = None

    def _decode(self, mode: str, prompt_ids, max_new_tokens, *, attention_mask=None, eos_token_id=None,
                temperature=0.0, top_p=None, top_k=None, generator=None, block_length=1,
                threshold=None, steps=None, return_stats=False, trace=None, pixel_values=None,
                image_sizes=None):
        if trace is not None and not callable(trace):
            raise ValueError(f"trace must be a callable taking a TraceEvent (e.g. a trimode.generation.trace.Trace), "
                             f"got {type(trace).__name__}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a non-negative integer")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps={steps!r} must be a positive integer or None")
        prompts = normalize_prompts(prompt_ids, attention_mask, self.config.vocab_size)
        request = Request(
            max_new_tokens=max_new_tokens,
            eos_token_ids=_eos_set(eos_token_id, self.config),
            sampling=SamplingParams(float(temperature or 0.0), top_k, top_p).validate(),
            generator=generator,
            block_length=block_length,
            threshold=threshold,
            steps=steps,
        )
        images = _prefill_images(self, pixel_values, image_sizes)
        run = decode(self, prompts, STRATEGIES[mode](), request, trace=trace, prefill_inputs=images)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else (
            min(request.eos_token_ids) if request.eos_token_ids else 0)
        out = run.output_ids(pad)
        self.last_generation_stats = run.stats
        return (out, run.stats.nfe, run.stats) if return_stats else (out, run.stats.nfe)

    @torch.no_grad()
    def ar_generate(self, prompt_ids, max_new_tokens: int = 128, eos_token_id=None, temperature: float = 0.0,
                    top_p: float | None = None, top_k: int | None = None,
                    generator: torch.Generator | None = None, attention_mask=None, return_stats: bool = False,
                    trace=None, pixel_values=None, image_sizes=None):
        """Autoregressive decoding: one causal forward per token (the reference)."""
        return self._decode("ar", prompt_ids, max_new_tokens, attention_mask=attention_mask,
                            eos_token_id=eos_token_id, temperature=temperature, top_p=top_p, top_k=top_k,
                            generator=generator, return_stats=return_stats, trace=trace,
                            pixel_values=pixel_values, image_sizes=image_sizes)

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int = 128, block_length: int | str | None = None,
                 threshold=_FROM_CONFIG, eos_token_id=None, temperature: float = 0.0,
                 top_p: float | None = None, top_k: int | None = None, generator: torch.Generator | None = None,
                 steps: int | None = None, attention_mask=None, return_stats: bool = False, trace=None,
                 pixel_values=None, image_sizes=None):
        """Block diffusion: denoise blocks of ``block_length`` tokens in parallel.

        ``threshold`` (default: ``config.threshold``, 0.9): commit every masked position
        at least this confident, plus the most confident one; ``None``: a fixed schedule
        committing an equal share per step over ``steps`` steps (default block_length - 1).
        """
        return self._decode("diffusion", prompt_ids, max_new_tokens, attention_mask=attention_mask,
                            eos_token_id=eos_token_id, temperature=temperature, top_p=top_p, top_k=top_k,
                            generator=generator, block_length=_block_length(block_length, self, "diffusion"),
                            threshold=_threshold(threshold, self.config), steps=steps,
                            return_stats=return_stats, trace=trace,
                            pixel_values=pixel_values, image_sizes=image_sizes)

    @torch.no_grad()
    def linear_spec_generate(self, prompt_ids, max_new_tokens: int = 128, block_length: int | str | None = None,
                             eos_token_id=None, temperature: float = 0.0, top_p: float | None = None,
                             top_k: int | None = None, generator: torch.Generator | None = None,
                             attention_mask=None, return_stats: bool = False, trace=None,
                             pixel_values=None, image_sizes=None):
        """Linear self-speculation: diffusion draft (LoRA drafter on) + causal verify; lossless."""
        return self._decode("linear-spec", prompt_ids, max_new_tokens, attention_mask=attention_mask,
                            eos_token_id=eos_token_id, temperature=temperature, top_p=top_p, top_k=top_k,
                            generator=generator, block_length=_block_length(block_length, self, "linear-spec"),
                            return_stats=return_stats, trace=trace,
                            pixel_values=pixel_values, image_sizes=image_sizes)

    @torch.no_grad()
    def quadratic_spec_generate(self, prompt_ids, max_new_tokens: int = 128, block_length: int | str | None = None,
                                eos_token_id=None, temperature: float = 0.0, top_p: float | None = None,
                                top_k: int | None = None, generator: torch.Generator | None = None,
                                attention_mask=None, return_stats: bool = False, trace=None,
                             pixel_values=None, image_sizes=None):
        """Quadratic self-speculation: draft and verify fused in one forward per cycle; lossless."""
        return self._decode("quadratic-spec", prompt_ids, max_new_tokens, attention_mask=attention_mask,
                            eos_token_id=eos_token_id, temperature=temperature, top_p=top_p, top_k=top_k,
                            generator=generator, block_length=_block_length(block_length, self, "quadratic-spec"),
                            return_stats=return_stats, trace=trace,
                            pixel_values=pixel_values, image_sizes=image_sizes)

    def decode_mode(self, mode: str, prompt_ids, **kwargs):
        """Dispatch by mode name (``ar``, ``diffusion``, ``linear-spec``, ``quadratic-spec``)."""
        methods = {"ar": self.ar_generate, "diffusion": self.generate,
                   "linear-spec": self.linear_spec_generate, "quadratic-spec": self.quadratic_spec_generate}
        if mode not in methods:
            raise ValueError(f"mode={mode!r} is not one of {sorted(methods)}")
        if mode == "ar":
            kwargs.pop("block_length", None)
            kwargs.pop("threshold", None)
        elif mode != "diffusion":
            kwargs.pop("threshold", None)
        if mode != "diffusion":
            kwargs.pop("steps", None)
        return methods[mode](prompt_ids, **kwargs)
