"""Batch-wide decisions on the device: speculative acceptance, diffusion's commit rule, and the
cache's host mirror, which keeps forwards free of device->host syncs.

A sync cannot be observed on CPU, so the sync tests count the Python-level reads that would be
one on a GPU (``.item()``, ``.tolist()``, ``int()``, ``bool()``, ...) while decoding.
"""

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from helpers import EOS_ID, MASK_ID, TEST_DEVICE, device_generator, random_prompts, tiny_model

import trimode
from trimode.generation.loop import Request, decode
from trimode.generation.modes import STRATEGIES, BlockDiffusion, _finished_rows, _fixed_schedule
from trimode.generation.sampling import SamplingParams, speculative_accept_batch
from trimode.masks import block_pattern

GREEDY = SamplingParams()
SAMPLING = SamplingParams(temperature=1.0)


# ------------------------------------------------------------------ acceptance
def _greedy_reference(drafts: list[int], target: torch.Tensor) -> tuple[int, int]:
    """One row, the obvious way: accept while the draft is the target argmax."""
    argmax = target.argmax(-1).tolist()
    k = 0
    while k < len(drafts) and drafts[k] == argmax[k]:
        k += 1
    return k, argmax[k]


@pytest.mark.parametrize("seed", range(4))
def test_batched_greedy_acceptance_equals_per_row_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    B, m, V = 5, 7, 6
    target = torch.rand(B, m + 1, V, generator=gen).softmax(-1)
    argmax = target.argmax(-1)
    drafts = argmax[:, :m].clone()
    cut = torch.randint(0, m + 1, (B,), generator=gen)
    cut[0], cut[1] = m, 0  # one row accepts everything, one row nothing
    for b in range(B):
        if cut[b] < m:  # the first wrong draft at cut[b]; later ones random
            drafts[b, cut[b]] = (argmax[b, cut[b]] + 1) % V
            drafts[b, cut[b] + 1:] = torch.randint(0, V, (m - cut[b] - 1,), generator=gen)
    accepted, token = speculative_accept_batch(drafts, None, target, GREEDY, None)
    want = [_greedy_reference(drafts[b].tolist(), target[b]) for b in range(B)]
    assert list(zip(accepted.tolist(), token.tolist())) == want
    assert accepted.tolist()[:2] == [m, 0]


def test_batched_acceptance_without_drafts_emits_the_target_token():
    target = torch.tensor([[[0.1, 0.7, 0.2]], [[0.6, 0.3, 0.1]]])
    drafts = torch.zeros(2, 0, dtype=torch.long)
    accepted, token = speculative_accept_batch(drafts, None, target, GREEDY, None)
    assert accepted.tolist() == [0, 0] and token.tolist() == [1, 0]
    accepted, token = speculative_accept_batch(drafts, None, target, SAMPLING, torch.Generator().manual_seed(0))
    assert accepted.tolist() == [0, 0] and token.shape == (2,)


def _emitted(drafts, accepted, token, position: int) -> torch.Tensor:
    """(N,) the emitted token at ``position`` of each row, -1 where the row emitted fewer."""
    rows = torch.arange(drafts.shape[0])
    out = torch.full_like(accepted, -1)
    at_token = accepted == position
    out[at_token] = token[at_token]
    from_draft = accepted > position
    out[from_draft] = drafts[rows, position][from_draft]
    return out


def test_batched_sampling_acceptance_reproduces_the_ar_distribution():
    """Fixed p and q over V=4 (q puts mass where p has none; p puts mass where q has none): the
    emitted tokens follow p at every position, whatever was rejected."""
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])  # (m + 1, V)
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])  # (m, V); q_2 == p_2: always accepted
    N = 40000
    gen = torch.Generator().manual_seed(0)
    drafts = torch.stack([torch.multinomial(q[i], N, replacement=True, generator=gen) for i in range(2)], 1)
    accepted, token = speculative_accept_batch(drafts, q.expand(N, -1, -1), p.expand(N, -1, -1), SAMPLING, gen)
    assert 0 < (accepted == 0).sum() and 0 < (accepted == 2).sum()  # both branches of the rule
    for position in (0, 1):
        tokens = _emitted(drafts, accepted, token, position)
        tokens = tokens[tokens >= 0]
        freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
        assert torch.allclose(freq, p[position], atol=0.012), (position, freq)


def test_seeded_batched_sampling_acceptance_is_reproducible():
    gen = torch.Generator().manual_seed(1)
    B, m, V = 6, 4, 5
    p = torch.rand(B, m + 1, V, generator=gen).softmax(-1)
    q = torch.rand(B, m, V, generator=gen).softmax(-1)
    drafts = torch.randint(0, V, (B, m), generator=gen)

    def run(seed):
        acc, tok = speculative_accept_batch(drafts, q, p, SAMPLING, torch.Generator().manual_seed(seed))
        return acc.tolist(), tok.tolist()

    assert run(7) == run(7)
    assert len({str(run(s)) for s in range(20)}) > 1  # still random across seeds


# ------------------------------------------------------------------- diffusion
def _old_select(threshold, tokens, conf, masked, schedule, step):
    """The per-row commit rule, written the obvious way (one row at a time)."""
    if schedule is not None:
        remaining = int(masked.sum())
        k = remaining if step >= len(schedule) - 1 else min(schedule[step], remaining)
        commit = torch.zeros_like(masked)
        commit[torch.topk(conf, k).indices] = True
        return commit
    commit = (conf >= threshold) & masked
    commit[conf.argmax()] = True
    return commit


def _old_finished(block, masked, eos):
    """No masks left, or an EOS committed with every position before it filled."""
    if not bool(masked.any()):
        return True
    for tok, m in zip(block.tolist(), masked.tolist()):
        if m:
            return False
        if tok in eos:
            return True
    return False


def _batched_commit(threshold, tokens, conf, masked, finished, schedule, step):
    """What BlockDiffusion._denoise commits: the rule, on masked positions of unfinished rows."""
    run = SimpleNamespace(request=SimpleNamespace(threshold=threshold))
    return BlockDiffusion().select(run, tokens, conf, masked, schedule, step) & masked & ~finished[:, None]


def _hand_made_batch():
    """B=4, n=5. Row 0: two positions above 0.9; row 1: none (only its best); row 2: finished
    (no masks); row 3: one mask left."""
    masked = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    probs = torch.tensor([[0.0, 0.95, 0.2, 0.91, 0.5], [0.0, 0.3, 0.6, 0.4, 0.5],
                          [0.0, 0.99, 0.99, 0.99, 0.99], [0.0, 0.2, 0.3, 0.1, 0.1]])
    conf = probs.masked_fill(~masked, -1.0)
    tokens = torch.arange(20).reshape(4, 5) + 10
    return tokens, conf, masked


def test_diffusion_threshold_commit_on_a_hand_made_batch():
    tokens, conf, masked = _hand_made_batch()
    finished = ~masked.any(-1)
    commit = _batched_commit(0.9, tokens, conf, masked, finished, None, 0)
    assert commit.long().tolist() == [[0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]


def test_diffusion_fixed_schedule_commit_on_a_hand_made_batch():
    tokens, conf, masked = _hand_made_batch()
    finished = ~masked.any(-1)
    commit = _batched_commit(None, tokens, conf, masked, finished, [2, 2], 0)  # 2 per row, capped at remaining
    assert commit.long().tolist() == [[0, 1, 0, 1, 0], [0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]
    commit = _batched_commit(None, tokens, conf, masked, finished, [1, 1], 1)  # last step: all remaining
    assert commit.long().tolist() == [[0, 1, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]


def test_diffusion_finished_rows_with_eos():
    M, E = MASK_ID, EOS_ID
    block = torch.tensor([[9, 5, E, M, M],  # EOS with everything before it filled: finished
                          [9, M, E, M, M],  # EOS after a mask: not yet
                          [9, 5, 6, 7, 8],  # no masks: finished
                          [9, 5, 6, M, E],  # masks only: not finished (the EOS is after a mask)
                          [9, M, M, M, M]])
    masked = block == M
    eos = torch.tensor([E])
    assert _finished_rows(block, masked, eos).tolist() == [True, False, True, False, False]
    assert _finished_rows(block, masked, torch.zeros(0, dtype=torch.long)).tolist() == [0, 0, 1, 0, 0]
    assert [_old_finished(block[b], masked[b], {E}) for b in range(5)] == [True, False, True, False, False]


@pytest.mark.parametrize("seed", range(6))
def test_diffusion_batched_commit_equals_the_per_row_rule_on_random_batches(seed):
    gen = torch.Generator().manual_seed(seed)
    B, n = 7, 6
    masked = torch.rand(B, n, generator=gen) < 0.6
    masked[:, 0] = False
    masked[0] = False  # a finished row
    masked[1, 1:] = True
    conf = torch.rand(B, n, generator=gen).masked_fill(~masked, -1.0)  # distinct: no ties
    tokens = torch.randint(4, 40, (B, n), generator=gen)
    finished = ~masked.any(-1)
    schedule = _fixed_schedule(n - 1, 3)
    for threshold, sched, step in ((0.7, None, 0), (0.2, None, 0), (None, schedule, 0), (None, schedule, 1),
                                   (None, schedule, 2)):
        got = _batched_commit(threshold, tokens, conf, masked, finished, sched, step)
        for b in range(B):
            want = (torch.zeros(n, dtype=torch.bool) if finished[b]
                    else _old_select(threshold, tokens[b], conf[b], masked[b], sched, step))
            assert got[b].tolist() == want.tolist(), (threshold, step, b)


# ------------------------------------------------------------------ host mirror
def _mirrors(cache):
    assert cache.host_lengths == cache.lengths.tolist()
    assert cache.max_length == max(cache.lengths.tolist())
    assert cache.uniform == (len(set(cache.lengths.tolist())) == 1)


def test_cache_host_mirror_follows_advance_and_crop():
    cache = trimode.KVCache(2, 3, 1, 4, capacity=32)
    _mirrors(cache)
    cache.advance(5)
    _mirrors(cache)
    assert cache.uniform and cache.max_length == 5
    cache.advance([1, 0, 3])
    _mirrors(cache)
    assert not cache.uniform and cache.host_lengths == [6, 5, 8]
    cache.advance(torch.tensor([2, 3, 0]))  # read back once
    _mirrors(cache)
    cache.advance(torch.tensor([1, 1, 1]), host=[1, 1, 1])  # the caller's host values, no read
    _mirrors(cache)
    assert cache.host_lengths == [9, 9, 9] and cache.uniform
    cache.crop([4, 9, 2])
    _mirrors(cache)
    cache.crop(torch.tensor([3, 5, 2]))
    _mirrors(cache)
    cache.crop(torch.tensor([3, 4, 1]), host=[3, 4, 1])
    _mirrors(cache)
    cache.crop(1)
    _mirrors(cache)
    assert cache.host_lengths == [1, 1, 1]
    with pytest.raises(ValueError, match="crop"):
        cache.crop([0, 2, 0])  # beyond a row's committed tokens
    with pytest.raises(ValueError, match="crop"):
        cache.crop(-1)
    cache.reset()
    _mirrors(cache)
    assert cache.max_length == 0


# -------------------------------------------------------------------- syncs
SYNC_READS = ("item", "tolist", "__int__", "__bool__", "__float__", "__index__")


@pytest.fixture
def reads(monkeypatch):
    """Counts every Python-level read of a tensor's value (each one a device->host sync on a GPU)."""
    counts = Counter()
    for name in SYNC_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def test_forwards_over_a_ragged_cache_read_nothing_back(reads):
    """KVCache.store, with_prefix and _build_mask read the host mirror, never the device lengths."""
    model = tiny_model(seed=1, num_hidden_layers=3)
    cache = trimode.KVCache.for_model(model, 3, 32)
    with torch.no_grad():
        model(torch.randint(4, 48, (3, 6), device=TEST_DEVICE), past_key_values=cache)
        cache.crop([6, 3, 5])
        reads.clear()
        model(torch.randint(4, 48, (3, 2), device=TEST_DEVICE), past_key_values=cache)  # causal write, ragged rows
        model(torch.randint(4, 48, (3, 3), device=TEST_DEVICE), attention_mask=block_pattern(3, device=TEST_DEVICE), past_key_values=cache,
              cache_write=False)  # peek
        model(torch.randint(4, 48, (3, 1), device=TEST_DEVICE), past_key_values=cache)
    assert sum(reads.values()) == 0, reads
    assert cache.host_lengths == [9, 6, 8]


class _CountingStrategy:
    """Wraps a mode and counts the value reads made inside its decode cycles."""

    def __init__(self, inner, counts: Counter):
        self.inner, self.name, self.counts = inner, inner.name, counts
        self.cycles, self.cycle_reads = 0, 0

    def scratch(self, request, max_prompt):
        return self.inner.scratch(request, max_prompt)

    def prefill(self, run):
        self.inner.prefill(run)

    def step(self, run):
        before = sum(self.counts.values())
        self.inner.step(run)
        run.freeze_finished()  # the loop's own per-cycle bookkeeping counts too
        self.cycles += 1
        self.cycle_reads += sum(self.counts.values()) - before


def _reads_per_cycle(mode, layers, rows, reads, sampling=GREEDY):
    model = tiny_model(seed=3, num_hidden_layers=layers)
    prompts = random_prompts(torch.Generator().manual_seed(rows), rows)
    generator = None if sampling.greedy else device_generator(0)
    request = Request(max_new_tokens=13, eos_token_ids=frozenset(), sampling=sampling, generator=generator,
                      block_length=4)
    strategy = _CountingStrategy(STRATEGIES[mode](), reads)
    decode(model, prompts, strategy, request)
    assert strategy.cycles > 1
    return strategy.cycle_reads / strategy.cycles


@pytest.mark.parametrize("mode", ["ar", "linear-spec", "quadratic-spec"])
def test_one_host_read_per_cycle_whatever_the_layers_and_rows(mode, reads):
    counts = {(layers, rows): _reads_per_cycle(mode, layers, rows, reads) for layers in (1, 4) for rows in (1, 4)}
    assert all(c <= 1 for c in counts.values()), counts
    counts_t = _reads_per_cycle(mode, 4, 4, reads, SamplingParams(temperature=0.8, top_k=20))
    assert counts_t <= 1


def test_diffusion_reads_once_per_denoising_step(reads):
    model = tiny_model(seed=3, num_hidden_layers=3)
    prompts = random_prompts(torch.Generator().manual_seed(4), 4)
    request = Request(max_new_tokens=13, eos_token_ids=frozenset(), sampling=GREEDY, generator=None,
                      block_length=4, threshold=None, steps=3)
    strategy = _CountingStrategy(STRATEGIES["diffusion"](), reads)
    run = decode(model, prompts, strategy, request)
    denoise_forwards = run.stats.nfe - run.stats.prefill_forwards - strategy.cycles  # minus one write per block
    assert strategy.cycle_reads <= denoise_forwards + strategy.cycles  # + the seed token of each block
