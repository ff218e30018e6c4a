"""SOL ("speed of light"): the TPF an oracle block-diffusion sampler reaches.

The oracle runs block diffusion exactly like the real sampler (same loop, same
blocks, same denoise and write forwards, counted in the same place) but
decides what to commit knowing the AR greedy output for its prompt (the
*reference*). At every denoising step, for one row's block:

1. every masked position whose argmax already equals the reference token at
   that place is committed;
2. if none does, the leftmost masked position is committed *with the reference
   token* (overwriting the argmax), so every forward commits at least one token,
   as the real sampler's "most confident always" rule does;
3. masked positions past the end of the row's reference (beyond
   ``max_new_tokens``, so never emitted) are committed for free: they cannot
   be emitted, so an oracle does not wait for them.

The oracle therefore emits the reference itself, and it commits a position as
soon as any sampler with the model's own argmax could have: its TPF bounds
what confidence-based samplers reach at that block length. SOL TPF =
generated tokens / nfe of that run (prefill included, like every TPF here).

Block positions: ``block[0]`` is the row's pending token (already emitted),
so block position ``j`` holds generated token index
``len(run.generated[row]) + j - 1`` of that row.

Greedy only: the reference is the AR argmax path (T = 0).
"""

from __future__ import annotations

import torch

from ..generation.loop import Request, decode
from ..generation.modes import AutoRegressive, BlockDiffusion
from ..generation.sampling import SamplingParams
from ..generation.stats import GenerationStats


class OracleDiffusion(BlockDiffusion):
    """Block diffusion whose commit rule knows each row's AR greedy reference (see the module docstring)."""

    name = "diffusion-sol"

    def __init__(self, references: list[list[int]]):
        self.references = references

    def select(self, run, tokens: torch.Tensor, conf: torch.Tensor, masked: torch.Tensor,
               schedule, step: int) -> torch.Tensor:
        """The batched hook of :meth:`BlockDiffusion.select`: (B, n) commit, rules 1-3 per row."""
        ref = self._reference_block(run, tokens.shape[1]).to(tokens.device)  # (B, n); -1 past the end
        commit = masked & ((ref < 0) | (tokens == ref))  # rule 3 / rule 1
        # Rule 2: a row with nothing to commit takes its leftmost masked position, with the reference
        # token (every masked position is then inside the reference, or rule 3 would have fired).
        stuck = masked.any(-1) & ~commit.any(-1)  # (B,)
        leftmost = torch.zeros_like(masked).scatter(-1, masked.long().argmax(-1, keepdim=True), True)
        forced = leftmost & stuck[:, None]
        tokens.copy_(torch.where(forced, ref, tokens))  # in place: the caller commits these tokens
        return commit | forced

    def _reference_block(self, run, n: int) -> torch.Tensor:
        """(B, n) the reference token at each block position of each row (-1 past its end)."""
        rows = []
        for row, ref in enumerate(self.references):
            start = len(run.generated[row]) - 1  # generated index of block position 0 (the pending token)
            rows.append([ref[i] if 0 <= i < len(ref) else -1 for i in range(start, start + n)])
        return torch.tensor(rows, dtype=torch.long)


def greedy_request(max_new_tokens: int, block_length: int, eos_token_ids) -> Request:
    return Request(max_new_tokens=max_new_tokens, eos_token_ids=frozenset(eos_token_ids),
                   sampling=SamplingParams().validate(), generator=None, block_length=block_length,
                   threshold=None, steps=None)


def ar_references(model, prompts: list[list[int]], max_new_tokens: int, eos_token_ids) -> list[list[int]]:
    """AR greedy generated tokens per prompt (through the engine loop, so stub models work too)."""
    run = decode(model, prompts, AutoRegressive(), greedy_request(max_new_tokens, 1, eos_token_ids))
    return [list(g) for g in run.generated]


def speed_of_light(model, prompts: list[list[int]], block_length: int, max_new_tokens: int,
                   eos_token_ids=None, references: list[list[int]] | None = None
                   ) -> tuple[GenerationStats, list[list[int]]]:
    """Run the oracle on ``prompts`` (one batch) and return (its stats, its generated tokens per row).

    ``references``: AR greedy generated tokens per prompt, computed when not given. The oracle's
    output equals them unless a near-tie flips an argmax between the block write and the AR
    step (different forward shapes); the caller can check with the returned tokens.
    """
    if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
        raise ValueError(f"SOL block_length={block_length!r} must be a positive integer")
    eos = model.config.eos_token_ids if eos_token_ids is None else list(eos_token_ids)
    if references is None:
        references = ar_references(model, prompts, max_new_tokens, eos)
    if len(references) != len(prompts):
        raise ValueError(f"{len(references)} references for {len(prompts)} prompts: give one per prompt")
    run = decode(model, prompts, OracleDiffusion(references), greedy_request(max_new_tokens, block_length, eos))
    return run.stats, [list(g) for g in run.generated]
