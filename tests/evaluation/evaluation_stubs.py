"""Stub models for the harness tests (beside tests/helpers.py's StubModel): a fixed acceptance pattern, a host."""

import torch
from helpers import StubHost, StubModel


class PatternStub(StubModel):
    """Drafts (mask queries) are right except at positions divisible by ``period``."""

    def __init__(self, period: int = 5, vocab: int = 32):
        super().__init__("right", vocab)
        self.period = period

    def wrong_drafts(self, position_ids: torch.Tensor, is_mask: torch.Tensor) -> torch.Tensor:
        return is_mask & (position_ids % self.period == 0)


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
