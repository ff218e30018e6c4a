"""The four decoding modes as small strategies over the shared loop (spec section 4).

Each strategy says what to feed the model and what to commit; the loop, the
cache, forward counting and emission (EOS, max_new_tokens) are shared.
Every mode starts from a *pending* token: emitted, keys not yet cached.

- :class:`AutoRegressive`: one causal write forward per token.
- :class:`BlockDiffusion`: peek-denoise ``[pending] + MASK*(B-1)`` until the
  block is filled, then one causal write forward stores it and yields the next
  pending token. Lossy by design (threshold is the speed/quality knob). With
  ``config.diffusion_drafter`` the LoRA drafter is on in the denoising peeks.
- :class:`LinearSpeculation`: a drafter peek over ``[pending] + MASK*(B-1)``,
  then one causal write forward verifies the drafts; 2 forwards per cycle.
- :class:`QuadraticSpeculation`: draft and verify fused in one forward per
  cycle (TiDAR style); drafts for the next cycle come from the mask group that
  assumed exactly the prefix that got accepted. The LoRA drafter, if loaded,
  acts on the mask groups only, so the verified tokens see the base model.

Both speculative modes accept with :func:`speculative_accept`, so at T=0 they
emit the AR argmax given the true prefix (token-identical to AR), and at T>0
they sample exactly from the AR distribution.
"""

from __future__ import annotations

import torch

from ..masks import quadratic_pattern
from .loop import Request, Runner
from .names import MODE_NAMES, SPECULATIVE_MODES  # noqa: F401  (re-exported: defined once, in names.py)
from .sampling import probabilities, speculative_accept


def _mask_block(run: Runner, n: int) -> torch.Tensor:
    """(B, n): each row's pending token followed by n-1 MASK tokens."""
    block = torch.full((run.batch, n), run.model.config.mask_token_id, dtype=torch.long, device=run.device)
    block[:, 0] = run.pending
    return block


class AutoRegressive:
    name = "ar"

    def scratch(self, request: Request, max_prompt: int) -> int:
        return 1

    def prefill(self, run: Runner) -> None:
        run.prefill_ar()

    def step(self, run: Runner) -> None:
        logits = run.forward(run.pending[:, None])  # causal write, (B, 1, V)
        tokens, _ = run.choose(logits[:, 0])
        run.emit([[t] for t in tokens.tolist()])


class BlockDiffusion:
    """Confidence-thresholded block denoising (``threshold=None``: fixed schedule of ``steps``)."""

    name = "diffusion"

    def scratch(self, request: Request, max_prompt: int) -> int:
        return request.block_length

    def prefill(self, run: Runner) -> None:
        run.prefill_ar()

    def step(self, run: Runner) -> None:
        req = run.request
        n = run.cycle_length(req.block_length)
        block = _mask_block(run, n)
        masked = torch.zeros(run.batch, n, dtype=torch.bool, device=run.device)
        masked[:, 1:] = True
        finished = [run.done[b] or n == 1 for b in range(run.batch)]
        schedule = _fixed_schedule(n - 1, req.steps) if req.threshold is None else None
        step = 0
        while not all(finished):
            # (B, n), (B, n, V); the drafter denoises when it carries the model's diffusion pathway
            tokens, probs = run.choose(run.peek_block(block, drafter=run.model.config.diffusion_drafter))
            conf = probs.gather(-1, tokens[..., None]).squeeze(-1).masked_fill(~masked, -1.0)
            for b in range(run.batch):
                if finished[b]:
                    continue
                commit = self.select(run, b, tokens[b], conf[b], masked[b], schedule, step)
                block[b, commit] = tokens[b, commit]
                masked[b] &= ~commit
                finished[b] = not bool(masked[b].any()) or _eos_before_masks(block[b], masked[b],
                                                                              req.eos_token_ids)
            step += 1
        drafts = [block[b, 1:].tolist() for b in range(run.batch)]
        if any(not run.done[b] and _needs_seed(drafts[b], run.remaining(b), req.eos_token_ids)
               for b in range(run.batch)):
            logits = run.forward(block, keep=1)  # causal write of the finished block, (B, 1, V)
            seeds, _ = run.choose(logits[:, 0])
            per_row = [d + [s] for d, s in zip(drafts, seeds.tolist())]
        else:  # every row ends inside this block: storing it would be a wasted forward
            per_row = drafts
        run.emit(per_row, drafted=n - 1)

    def select(self, run: Runner, row: int, tokens: torch.Tensor, conf: torch.Tensor, masked: torch.Tensor,
               schedule: list[int] | None, step: int) -> torch.Tensor:
        """Which masked positions of one row's block to commit now: (n,) bool.

        ``tokens`` may be overwritten in place (an oracle commits reference tokens).
        Threshold rule: every position at least ``threshold`` confident, plus the most
        confident one (always progress). Fixed schedule: the ``schedule[step]`` most confident.
        """
        if schedule is not None:
            remaining = int(masked.sum())
            k = remaining if step >= len(schedule) - 1 else min(schedule[step], remaining)
            commit = torch.zeros_like(masked)
            commit[torch.topk(conf, k).indices] = True
            return commit
        commit = (conf >= run.request.threshold) & masked
        commit[conf.argmax()] = True
        return commit


def _fixed_schedule(n_masked: int, steps: int | None) -> list[int]:
    """Tokens to commit per step when ``threshold=None``: an equal share over ``steps`` steps."""
    steps = max(1, min(steps or n_masked, n_masked)) if n_masked else 1
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _eos_before_masks(block: torch.Tensor, masked: torch.Tensor, eos: frozenset[int]) -> bool:
    """An EOS is committed and every position before it is filled: the rest cannot be emitted."""
    for tok, m in zip(block.tolist(), masked.tolist()):
        if m:
            return False
        if tok in eos:
            return True
    return False


def _needs_seed(drafts: list[int], remaining: int, eos: frozenset[int]) -> bool:
    return remaining > len(drafts) and not any(t in eos for t in drafts)


class LinearSpeculation:
    name = "linear-spec"

    def scratch(self, request: Request, max_prompt: int) -> int:
        return request.block_length

    def prefill(self, run: Runner) -> None:
        run.prefill_ar()

    def step(self, run: Runner) -> None:
        n = run.cycle_length(run.request.block_length)
        if n > 1:
            draft_logits = run.peek_block(_mask_block(run, n), drafter=True)[:, 1:]  # (B, n-1, V)
            drafts, q = run.choose(draft_logits)
        else:
            drafts = torch.zeros(run.batch, 0, dtype=torch.long, device=run.device)
            q = None
        before = run.cache.lengths.clone()
        logits = run.forward(torch.cat([run.pending[:, None], drafts], 1))  # causal write, (B, n, V)
        p = probabilities(logits, run.request.sampling)
        keep, per_row = before.clone(), []
        for b in range(run.batch):
            if run.done[b]:
                per_row.append(None)
                continue
            k, token = speculative_accept(drafts[b].tolist(), None if q is None else q[b], p[b],
                                          run.request.sampling, run.request.generator)
            per_row.append(drafts[b, :k].tolist() + [token])
            keep[b] += 1 + k  # the pending token and the accepted drafts stay cached
        run.cache.crop(keep)
        run.emit(per_row, drafted=n - 1)


class QuadraticSpeculation:
    """One forward per cycle over ``[d_0..d_{n-1}] + n groups of n MASKs`` (see masks.quadratic_pattern)."""

    name = "quadratic-spec"

    def __init__(self):
        self.drafts: torch.Tensor | None = None  # (B, n-1) drafts following the pending token
        self.draft_probs: torch.Tensor | None = None  # (B, n-1, V) distributions they came from

    def scratch(self, request: Request, max_prompt: int) -> int:
        n = request.block_length
        return n + n * n

    def prefill(self, run: Runner) -> None:
        """Prompt (causal, written) + one mask group after each row's prompt: the first drafts for free."""
        n = run.cycle_length(run.request.block_length)
        lengths = run.prompt_lengths
        width = int(lengths.max())
        tokens = run.padded_prompts(extra=n)
        tokens[:, width:] = run.model.config.mask_token_id
        ar = torch.arange(n, device=run.device)
        positions = torch.cat([torch.arange(width, device=run.device).expand(run.batch, width),
                               lengths[:, None] + ar], 1)
        pattern = torch.stack([quadratic_pattern(width, [int(l) - 1], n, device=run.device) for l in lengths])
        keep = torch.cat([(lengths - 1)[:, None], width + ar.expand(run.batch, n)], 1)
        drafting = torch.arange(width + n, device=run.device) >= width  # (width + n,): the mask group
        logits = run.forward(tokens, positions=positions, pattern=pattern, write=False, keep=keep, drafter=drafting)
        run.cache.advance(lengths)  # commit each row's real prompt tokens
        first, _ = run.choose(logits[:, 0])
        self.drafts, self.draft_probs = run.choose(logits[:, 2:])  # masks 1..n-1: after the first token
        run.emit([[t] for t in first.tolist()])
        run.end_prefill()

    def step(self, run: Runner) -> None:
        n = run.cycle_length(run.request.block_length)
        B, dev = run.batch, run.device
        drafts, q = self.drafts[:, :n - 1], self.draft_probs[:, :n - 1]
        chain = torch.cat([run.pending[:, None], drafts], 1)  # (B, n): d_0 .. d_{n-1}
        groups = torch.full((B, n * n), run.model.config.mask_token_id, dtype=torch.long, device=dev)
        base = run.cache.lengths[:, None]
        ar = torch.arange(n, device=dev)
        group_pos = (ar[:, None] + 1 + ar[None, :]).reshape(-1)  # group g, slot m -> g + 1 + m
        positions = torch.cat([base + ar, base + group_pos], 1)
        pattern = quadratic_pattern(n, list(range(n)), n, device=dev)
        drafting = torch.arange(n + n * n, device=dev) >= n  # the drafter acts on the mask groups only
        logits = run.forward(torch.cat([chain, groups], 1), positions=positions, pattern=pattern, write=False,
                             drafter=drafting)
        p = probabilities(logits[:, :n], run.request.sampling)  # (B, n, V): AR targets
        group_tokens, group_probs = run.choose(logits[:, n:].reshape(B, n, n, -1))  # (B, n, n)
        commit = torch.zeros(B, dtype=torch.long, device=dev)
        new_drafts, new_probs, per_row = group_tokens[:, 0, 1:].clone(), group_probs[:, 0, 1:].clone(), []
        for b in range(B):
            if run.done[b]:
                per_row.append(None)
                continue
            k, token = speculative_accept(drafts[b].tolist(), q[b], p[b], run.request.sampling,
                                          run.request.generator)
            per_row.append(drafts[b, :k].tolist() + [token])
            commit[b] = k + 1  # d_0 .. d_k keys are exact (causal) and already in place
            new_drafts[b], new_probs[b] = group_tokens[b, k, 1:], group_probs[b, k, 1:]
        run.cache.advance(commit)
        self.drafts, self.draft_probs = new_drafts, new_probs
        run.emit(per_row, drafted=n - 1)


# Keyed by each strategy's own name; their order and spelling are MODE_NAMES (names.py),
# which the torch-free command line uses (a test checks that the two agree).
MODES = {cls.name: cls for cls in (AutoRegressive, BlockDiffusion, LinearSpeculation, QuadraticSpeculation)}
