"""Decoding: one loop (:mod:`.loop`), four mode strategies (:mod:`.modes`), the published API (:mod:`.api`).

The public names are imported on first use (PEP 562): the mode names (:mod:`.names`)
must be importable without torch, for the command line's parsers.
"""

from __future__ import annotations

from .._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "DecodingMixin": ".api",
    "normalize_prompts": ".api",
    "Request": ".loop",
    "Runner": ".loop",
    "decode": ".loop",
    "STRATEGIES": ".modes",
    "MODE_NAMES": ".names",
    "SPECULATIVE_MODES": ".names",
    "SamplingParams": ".sampling",
    "GenerationStats": ".stats",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

__all__ = list(_EXPORTS)
