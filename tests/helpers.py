"""Shared builders for the tests: tiny random tri-mode models and stub models with forced behaviour."""

from __future__ import annotations

import os

import torch
from torch import nn

import trimode
from trimode.generation.api import DecodingMixin
from trimode.modeling import TrimodeOutput, scaled_init_

# A YaRN + llama-4 rope consistent with a short context, so tiny models exercise the published rope path.
TINY_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
             "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
             "llama_4_scaling_beta": 0.1}
# TRIMODE_TEST_DEVICE=cuda runs the tiny models (and the generators that sample on them) on a GPU:
# the suite's exactness and batching proofs then hold on the device users decode on.
TEST_DEVICE = torch.device(os.environ.get("TRIMODE_TEST_DEVICE", "cpu"))
MASK_ID = 3
EOS_ID = 2


def tiny_config(**overrides) -> trimode.TrimodeConfig:
    kw = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=256, rope_parameters=dict(TINY_ROPE),
              mask_token_id=MASK_ID, eos_token_id=EOS_ID, bos_token_id=1, pad_token_id=0, block_size=4)
    kw.update(overrides)
    return trimode.TrimodeConfig(**kw)


def tiny_model(seed: int = 0, std: float = 0.6, **overrides) -> trimode.TrimodeModel:
    """A random tiny model. A large init scale spreads the logits, so greedy argmax ties never decide a test."""
    torch.manual_seed(seed)
    model = trimode.TrimodeModel(tiny_config(**overrides)).eval()
    return scaled_init_(model, std, torch.Generator().manual_seed(seed)).to(TEST_DEVICE)


def device_generator(seed: int) -> torch.Generator:
    """A seeded generator on the tiny models' device (a decoder refuses one on another device)."""
    return torch.Generator(device=TEST_DEVICE).manual_seed(seed)


def random_prompts(gen: torch.Generator, n: int, low: int = 2, high: int = 12, vocab: int = 48) -> list[list[int]]:
    lengths = torch.randint(low, high + 1, (n,), generator=gen).tolist()
    # Ids from 4 up: never pad/bos/eos/mask inside a prompt.
    return [torch.randint(4, vocab, (L,), generator=gen).tolist() for L in lengths]


def truth(position: torch.Tensor, vocab: int) -> torch.Tensor:
    """The stub's "true" token at each position (never a special id < 4; period vocab-4 for vocab 32)."""
    return 4 + (position * 5 + 3) % (vocab - 4)


class StubModel(nn.Module):
    """A model with forced behaviour, driven by positions only.

    AR (non-mask) queries at position i predict truth(i + 1), confidently. Mask
    queries at position i predict:
      - ``"right"``: truth(i), confidently (drafts always accepted, diffusion commits all at once);
      - ``"wrong"``: a token that is never truth(i), confidently (drafts always rejected);
      - ``"unsure"``: truth(i) but with low confidence (diffusion commits one token per step).
    It honours the cache contract (a write forward advances each row by Q).
    """

    def __init__(self, drafts: str, vocab: int = 32):
        super().__init__()
        self.config = tiny_config(vocab_size=vocab, num_hidden_layers=1)
        self.drafts = drafts
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, position_ids=None, attention_mask=None, past_key_values=None, cache_write=True,
                use_drafter=False, logits_to_keep=0, **_):
        B, Q = input_ids.shape
        V = self.config.vocab_size
        cache = past_key_values
        if position_ids is None:
            position_ids = (cache.lengths[:, None] if cache is not None else 0) + torch.arange(Q)[None]
        is_mask = input_ids == self.config.mask_token_id
        target = torch.where(is_mask, truth(position_ids, V), truth(position_ids + 1, V))
        wrong = self.wrong_drafts(position_ids, is_mask)
        target = torch.where(wrong, 4 + (target - 4 + 1) % (V - 4), target)
        logits = torch.full((B, Q, V), -20.0)
        logits.scatter_(-1, target[..., None], 20.0)
        if self.drafts == "unsure":
            flat = torch.zeros(B, Q, V)
            flat.scatter_(-1, target[..., None], 1.0)  # favourite, but probability far below 0.9
            logits = torch.where(is_mask[..., None], flat, logits)
        if cache is not None and cache_write:
            cache.advance(Q)
        if isinstance(logits_to_keep, torch.Tensor):
            logits = torch.gather(logits, 1, logits_to_keep[..., None].expand(-1, -1, V))
        elif logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return TrimodeOutput(logits=logits)

    def wrong_drafts(self, position_ids: torch.Tensor, is_mask: torch.Tensor) -> torch.Tensor:
        """Which mask queries predict a wrong token (override for other acceptance patterns)."""
        return is_mask if self.drafts == "wrong" else torch.zeros_like(is_mask)


class StubHost(DecodingMixin):
    """The decoders of the mixin over a stub model (a stub is not a TrimodeModel, so it borrows them)."""

    def __init__(self, stub: StubModel):
        self.stub = stub
        self.config = stub.config

    def __call__(self, *args, **kwargs):
        return self.stub(*args, **kwargs)

    def parameters(self):
        return self.stub.parameters()


def stub_decode(stub: StubModel, mode: str, prompts, **kwargs):
    """Run one decoding mode on a stub; returns (output_ids, nfe, stats)."""
    return StubHost(stub).decode_mode(mode, prompts, return_stats=True, **kwargs)


def pattern_batch(gen: torch.Generator, batch: int, length: int, vocab: int) -> torch.Tensor:
    """Arithmetic sequences x_{t+1} = x_t + step (mod vocab-4, shifted past special ids): easy to learn."""
    start = torch.randint(0, vocab - 4, (batch, 1), generator=gen)
    step = torch.randint(1, 4, (batch, 1), generator=gen)
    return 4 + (start + step * torch.arange(length)[None]) % (vocab - 4)


def quickly_trained_model(steps: int = 150, seed: int = 0) -> "trimode.TrimodeModel":
    """A tiny model trained for a few seconds with the joint loss, so drafts are often accepted."""
    from trimode import joint_loss

    torch.manual_seed(seed)
    model = trimode.TrimodeModel(tiny_config(vocab_size=24, hidden_size=64, intermediate_size=128,
                                             num_attention_heads=4, head_dim=16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = joint_loss(model, pattern_batch(gen, 16, 24, 24), block_size=4, generator=gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().to(TEST_DEVICE)  # trained on the CPU (the same weights everywhere), tested on the device
