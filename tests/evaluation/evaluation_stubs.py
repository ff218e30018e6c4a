"""Stub models for the harness tests (beside tests/helpers.py's StubModel): a fixed acceptance pattern, a host."""

import torch

from helpers import StubHost, StubModel, truth
from trimode.modeling import TrimodeOutput


class PatternStub(StubModel):
    """Drafts (mask queries) are right except at positions divisible by ``period``."""

    def __init__(self, period: int = 5, vocab: int = 32):
        super().__init__("right", vocab)
        self.period = period

    def forward(self, input_ids, position_ids=None, past_key_values=None, cache_write=True, logits_to_keep=0, **_):
        B_, Q = input_ids.shape
        V = self.config.vocab_size
        cache = past_key_values
        if position_ids is None:
            position_ids = (cache.lengths[:, None] if cache is not None else 0) + torch.arange(Q)[None]
        is_mask = input_ids == self.config.mask_token_id
        target = torch.where(is_mask, truth(position_ids, V), truth(position_ids + 1, V))
        wrong = is_mask & (position_ids % self.period == 0)
        target = torch.where(wrong, 4 + (target - 4 + 1) % (V - 4), target)
        logits = torch.full((B_, Q, V), -20.0).scatter_(-1, target[..., None], 20.0)
        if cache is not None and cache_write:
            cache.advance(Q)
        if isinstance(logits_to_keep, torch.Tensor):
            logits = torch.gather(logits, 1, logits_to_keep[..., None].expand(-1, -1, V))
        elif logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return TrimodeOutput(logits=logits)


def host(stub, fail_mode: str | None = None):
    """The decoders of the mixin over a stub (what helpers.stub_decode does, kept as an object).

    ``fail_mode``: decoding in that mode raises a RuntimeError (an engine error to report).
    """

    class Host(StubHost):
        def decode_mode(self, mode, prompt_ids, **kwargs):
            if mode == fail_mode:
                raise RuntimeError("KVCache overflow: simulated")
            return super().decode_mode(mode, prompt_ids, **kwargs)

    return Host(stub)
