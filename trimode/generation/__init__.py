"""Decoding: one loop (:mod:`.loop`), four mode strategies (:mod:`.modes`), the published API (:mod:`.api`)."""

from .api import DecodingMixin, normalize_prompts
from .loop import Request, Runner, decode
from .modes import MODES
from .sampling import SamplingParams
from .stats import GenerationStats

__all__ = ["DecodingMixin", "normalize_prompts", "Request", "Runner", "decode", "MODES", "SamplingParams",
           "GenerationStats"]
