"""The four decoding modes as small strategies over the shared loop.

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

Both speculative modes accept with :func:`speculative_accept_batch`, so at T=0
they emit the AR argmax given the true prefix (token-identical to AR), and at
T>0 they sample exactly from the AR distribution.

Host syncs: the commit decisions (acceptance, diffusion's commit rule and its
"row finished" test) are batched tensor ops on the device. A speculative cycle
brings its result to the host once (:func:`_accepted_on_host`); block diffusion
once per denoising step, plus once for its seed token.
"""

from __future__ import annotations

import torch

from ..masks import quadratic_offsets, quadratic_pattern
from .loop import Request, Runner
from .names import MODE_NAMES, SPECULATIVE_MODES  # noqa: F401  (re-exported: defined once, in names.py)
from .sampling import probabilities, speculative_accept_batch


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
        run.emit([[t] for t in tokens.tolist()], last=tokens)


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
        block = _mask_block(run, n)  # (B, n)
        masked = torch.zeros(run.batch, n, dtype=torch.bool, device=run.device)
        masked[:, 1:] = True
        drafts = [[0] * (n - 1)] * run.batch  # (B, n-1) on the host, read back by each denoising step
        if n > 1 and not run.all_done():
            block, drafts = self._denoise(run, block, masked, n)
        live = [not d for d in run.done]
        if any(ok and _needs_seed(d, run.remaining(b), req.eos_token_ids)
               for b, (ok, d) in enumerate(zip(live, drafts))):
            logits = run.forward(block, keep=1, kind="write")  # causal write of the finished block, (B, 1, V)
            seeds, _ = run.choose(logits[:, 0])
            per_row = [d + [s] for d, s in zip(drafts, seeds.tolist())]
            last = seeds
        else:  # every row ends inside this block: storing it would be a wasted forward
            per_row, last = drafts, block[:, -1]
        run.emit(per_row, drafted=n - 1, last=last)

    def _denoise(self, run: Runner, block: torch.Tensor, masked: torch.Tensor, n: int
                 ) -> tuple[torch.Tensor, list[list[int]]]:
        """Peek-denoise until every live row's block is finished: (B, n) block, its drafts on the host.

        One host sync per denoising step: the finished flags and the drafts come back together.
        """
        req = run.request
        schedule = _fixed_schedule(n - 1, req.steps) if req.threshold is None else None
        finished = ~run.live_mask()  # (B,); finished rows are carried along unchanged
        step = 0
        while True:
            # (B, n), (B, n, V); the drafter denoises when it carries the model's diffusion pathway
            tokens, probs = run.choose(run.peek_block(block, drafter=run.model.config.diffusion_drafter))
            conf = probs.gather(-1, tokens[..., None]).squeeze(-1).masked_fill(~masked, -1.0)
            commit = self.select(run, tokens, conf, masked, schedule, step) & masked & ~finished[:, None]
            block = torch.where(commit, tokens, block)
            masked = masked & ~commit
            if run.tracer is not None:
                _trace_denoise(run, commit, tokens, conf, masked)
            finished = finished | _finished_rows(block, masked, run.eos_ids)
            step += 1
            state = torch.cat([finished[:, None].long(), block[:, 1:]], 1).tolist()  # the one sync
            if all(row[0] for row in state):
                return block, [row[1:] for row in state]

    def select(self, run: Runner, tokens: torch.Tensor, conf: torch.Tensor, masked: torch.Tensor,
               schedule: list[int] | None, step: int) -> torch.Tensor:
        """Which masked positions of each row's block to commit now: (B, n) bool.

        tokens (B, n): this step's choices, which may be overwritten in place (an oracle commits
        reference tokens); conf (B, n): their probabilities, -1 at positions already filled;
        masked (B, n). The caller keeps only masked positions of rows still denoising.
        Threshold rule: every position at least ``threshold`` confident, plus each row's most
        confident one (always progress). Fixed schedule: each row's ``schedule[step]`` most
        confident (all remaining ones at the last step); ties go to the leftmost position.
        """
        if schedule is not None:
            remaining = masked.sum(-1)  # (B,)
            k = remaining if step >= len(schedule) - 1 else remaining.clamp(max=schedule[step])
            return _top_k_per_row(conf, k)
        commit = (conf >= run.request.threshold) & masked
        return commit.scatter(-1, conf.argmax(-1, keepdim=True), True)


def _top_k_per_row(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, n) scores, (B,) counts -> (B, n) bool: each row's k[b] highest scores (ties: leftmost)."""
    order = scores.argsort(dim=-1, descending=True, stable=True)  # (B, n)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device)
                                            .expand_as(order))
    return rank < k[:, None]


def _fixed_schedule(n_masked: int, steps: int | None) -> list[int]:
    """Tokens to commit per step when ``threshold=None``: an equal share over ``steps`` steps."""
    steps = max(1, min(steps or n_masked, n_masked)) if n_masked else 1
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _finished_rows(block: torch.Tensor, masked: torch.Tensor, eos_ids: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the row's block has no masks left, or an EOS is committed with every position
    before it filled (nothing after that EOS can be emitted). block, masked: (B, n); eos_ids: (E,)."""
    no_mask_yet = masked.long().cumsum(-1) == 0  # (B, n): no masked position at or before j
    eos_reached = torch.isin(block, eos_ids) & no_mask_yet
    return ~masked.any(-1) | eos_reached.any(-1)


def _trace_denoise(run: Runner, commit: torch.Tensor, tokens: torch.Tensor, conf: torch.Tensor,
                   masked: torch.Tensor) -> None:
    """A denoising step's trace: per row, the block positions it unmasked (as output positions, with
    token and confidence) and the masks left. Only when tracing: it reads the step back to the host."""
    commit_h, tokens_h, conf_h, left = commit.tolist(), tokens.tolist(), conf.tolist(), masked.sum(-1).tolist()
    for b in run.active:
        base = len(run.generated[b]) - 1  # block position 0 is the pending token, already emitted
        entry = run.tracer.row(b)
        entry.committed = [[base + j, tokens_h[b][j], conf_h[b][j]] for j, c in enumerate(commit_h[b]) if c]
        entry.masks_left = left[b]


def _trace_verify(run: Runner, accepted: list[int], drafts: torch.Tensor, per_row: list) -> None:
    """A verification's trace: per row, the drafts checked, how many were kept, the rest, the bonus."""
    drafts_h = drafts.tolist()
    for b in run.active:
        entry = run.tracer.row(b)
        entry.drafted, entry.accepted = drafts_h[b], accepted[b]
        entry.rejected, entry.bonus = drafts_h[b][accepted[b]:], per_row[b][-1]


def _needs_seed(drafts: list[int], remaining: int, eos: frozenset[int]) -> bool:
    return remaining > len(drafts) and not any(t in eos for t in drafts)


def _committed(run: Runner, accepted: torch.Tensor) -> torch.Tensor:
    """(B,) tokens a speculative cycle commits: the pending token and the accepted drafts; 0 for
    finished rows (device side of :func:`_count`)."""
    return torch.where(run.live_mask(), accepted + 1, 0)


def _count(run: Runner, row: int, accepted_host: list[int]) -> int:
    """Host side of :func:`_committed` for one row."""
    return 0 if run.done[row] else accepted_host[row] + 1


def _accepted_on_host(run: Runner, accepted: torch.Tensor, token: torch.Tensor, drafts: torch.Tensor
                      ) -> tuple[list[int], list[list[int] | None]]:
    """The cycle's one host sync: accepted (B,), token (B,) and drafts (B, m) in one ``.tolist()``.

    Returns the accepted counts and each row's emitted tokens (accepted drafts + token; None
    for finished rows)."""
    rows = torch.cat([accepted[:, None], token[:, None], drafts], 1).tolist()  # (B, 2 + m)
    per_row = [None if run.done[b] else row[2:2 + row[0]] + [row[1]] for b, row in enumerate(rows)]
    return [row[0] for row in rows], per_row


class LinearSpeculation:
    name = "linear-spec"

    def scratch(self, request: Request, max_prompt: int) -> int:
        return request.block_length

    def prefill(self, run: Runner) -> None:
        run.prefill_ar()

    def step(self, run: Runner) -> None:
        n = run.cycle_length(run.request.block_length)
        if n > 1:
            draft_logits = run.peek_block(_mask_block(run, n), drafter=True, kind="draft")[:, 1:]  # (B, n-1, V)
            drafts, q = run.choose(draft_logits)
            if run.tracer is not None:
                for b, row in zip(run.active, drafts[run.active].tolist()):
                    run.tracer.row(b).drafted = row
        else:
            drafts = torch.zeros(run.batch, 0, dtype=torch.long, device=run.device)
            q = None
        before, before_host = run.cache.lengths.clone(), run.cache.host_lengths
        logits = run.forward(torch.cat([run.pending[:, None], drafts], 1), kind="verify")  # causal write, (B, n, V)
        p = probabilities(logits, run.request.sampling)
        accepted, token = speculative_accept_batch(drafts, q, p, run.request.sampling, run.request.generator)
        # The pending token and the accepted drafts stay cached; finished rows roll back entirely.
        kept = _committed(run, accepted)  # (B,)
        accepted_host, per_row = _accepted_on_host(run, accepted, token, drafts)
        if run.tracer is not None:
            _trace_verify(run, accepted_host, drafts, per_row)
        run.cache.crop(before + kept, host=[h + _count(run, b, accepted_host) for b, h in enumerate(before_host)])
        run.emit(per_row, drafted=n - 1, last=token)


class QuadraticSpeculation:
    """One forward per cycle over ``[d_0..d_{n-1}] + n groups of n MASKs`` (see masks.quadratic_pattern)."""

    name = "quadratic-spec"

    def __init__(self):
        self.drafts: torch.Tensor | None = None  # (B, n-1) drafts following the pending token
        self.draft_probs: torch.Tensor | None = None  # (B, n-1, V) distributions they came from
        # Step patterns by block length, built once: building one copies its anchors to the device.
        self.patterns: dict[int, torch.Tensor] = {}

    def scratch(self, request: Request, max_prompt: int) -> int:
        n = request.block_length
        return n + n * n

    def prefill(self, run: Runner) -> None:
        """Prompt (causal, written) + one mask group after each row's prompt: the first drafts for free."""
        n = run.cycle_length(run.request.block_length)
        lengths = run.prompt_lengths
        width = max(run.prompt_lens)
        tokens = run.padded_prompts(extra=n)
        tokens[:, width:] = run.model.config.mask_token_id
        slots = torch.arange(n, device=run.device)  # the mask group's slots
        positions = torch.cat([torch.arange(width, device=run.device).expand(run.batch, width),
                               lengths[:, None] + slots], 1)
        pattern = torch.stack([quadratic_pattern(width, [length - 1], n, device=run.device)
                               for length in run.prompt_lens])
        keep = torch.cat([(lengths - 1)[:, None], width + slots.expand(run.batch, n)], 1)
        drafting = torch.arange(width + n, device=run.device) >= width  # (width + n,): the mask group
        logits = run.forward(tokens, positions=positions, pattern=pattern, write=False, keep=keep, drafter=drafting,
                             kind="prefill")
        run.cache.advance(lengths, host=run.prompt_lens)  # commit each row's real prompt tokens
        first, _ = run.choose(logits[:, 0])
        self.drafts, self.draft_probs = run.choose(logits[:, 2:])  # masks 1..n-1: after the first token
        run.emit([[t] for t in first.tolist()], last=first)
        run.end_prefill()

    def step(self, run: Runner) -> None:
        n = run.cycle_length(run.request.block_length)
        B, dev = run.batch, run.device
        drafts, q = self.drafts[:, :n - 1], self.draft_probs[:, :n - 1]
        chain = torch.cat([run.pending[:, None], drafts], 1)  # (B, n): d_0 .. d_{n-1}
        groups = torch.full((B, n * n), run.model.config.mask_token_id, dtype=torch.long, device=dev)
        positions = run.cache.lengths[:, None] + quadratic_offsets(n, device=dev)  # (B, n + n*n)
        if n not in self.patterns:
            self.patterns[n] = quadratic_pattern(n, list(range(n)), n, device=dev)  # (n + n*n,) squared
        pattern = self.patterns[n]
        drafting = torch.arange(n + n * n, device=dev) >= n  # the drafter acts on the mask groups only
        logits = run.forward(torch.cat([chain, groups], 1), positions=positions, pattern=pattern, write=False,
                             drafter=drafting, kind="draft+verify")
        p = probabilities(logits[:, :n], run.request.sampling)  # (B, n, V): AR targets
        group_tokens, group_probs = run.choose(logits[:, n:].reshape(B, n, n, -1))  # (B, n, n)
        accepted, token = speculative_accept_batch(drafts, q, p, run.request.sampling, run.request.generator)
        # Next drafts: the mask group that assumed exactly the accepted prefix d_0 .. d_k.
        rows = torch.arange(B, device=dev)
        self.drafts, self.draft_probs = group_tokens[rows, accepted, 1:], group_probs[rows, accepted, 1:]
        commit = _committed(run, accepted)  # d_0 .. d_k keys are exact (causal) and already in place
        accepted_host, per_row = _accepted_on_host(run, accepted, token, drafts)
        if run.tracer is not None:
            _trace_verify(run, accepted_host, drafts, per_row)
        run.cache.advance(commit, host=[_count(run, b, accepted_host) for b in range(B)])
        run.emit(per_row, drafted=n - 1, last=token)


# Keyed by each strategy's own name; their order and spelling are MODE_NAMES (names.py),
# which the torch-free command line uses (a test checks that the two agree).
STRATEGIES = {cls.name: cls for cls in (AutoRegressive, BlockDiffusion, LinearSpeculation, QuadraticSpeculation)}
