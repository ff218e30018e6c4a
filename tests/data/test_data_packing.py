import itertools
import random

import pytest
import torch

from trimode.data.packing import Batcher, pack_documents, pack_sft_examples

EOS, PAD = 2, 0


def _docs(n=200, seed=0):
    rng = random.Random(seed)
    return [[rng.randint(10, 500) for _ in range(rng.choice([0, 1, 3, 17, 40, 130]))] for _ in range(n)]


@pytest.mark.parametrize("seq_len", [2, 16, 64])
def test_pack_documents(seq_len):
    docs = _docs()
    chunks = list(pack_documents(iter(docs), seq_len, EOS))
    stream = [t for d in docs if d for t in d + [EOS]]
    assert len(chunks) == len(stream) // seq_len
    assert all(c.shape == (seq_len,) and c.dtype == torch.long for c in chunks)
    assert torch.cat(chunks).tolist() == stream[: len(chunks) * seq_len]


def test_pack_documents_streams():
    # an endless document stream still yields chunks: nothing waits for the end
    endless = ([i % 100 + 10] * 5 for i in itertools.count())
    first = list(itertools.islice(pack_documents(endless, 8, EOS), 3))
    assert first[0].tolist() == [10, 10, 10, 10, 10, EOS, 11, 11]


def test_pack_documents_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len=1"):
        list(pack_documents([[1, 2]], 1, EOS))


def _examples(n=300, seed=0):
    rng = random.Random(seed)
    # prompt tokens 10..99, response tokens 100..199: every token's role is unambiguous
    return [
        ([rng.randint(10, 99) for _ in range(rng.randint(0, 30))], [rng.randint(100, 199) for _ in range(rng.randint(0, 30))])
        for _ in range(n)
    ]


def test_pack_sft_examples():
    seq_len = 48
    examples = _examples() + [([10] * 40, [100] * 8)]  # 49 tokens with EOS -> skipped
    stats = {}
    seqs = list(pack_sft_examples(examples, seq_len, PAD, EOS, stats=stats))
    kept = [(p, r) for p, r in examples if len(p) + len(r) + 1 <= seq_len]
    assert stats == {"examples": len(kept), "skipped": len(examples) - len(kept), "sequences": len(seqs)}
    todo = iter(kept)
    nxt = next(todo, None)
    for ids, mask in seqs:
        assert ids.shape == mask.shape == (seq_len,) and ids.dtype == mask.dtype == torch.long
        ids, mask = ids.tolist(), mask.tolist()
        pos = 0
        # whole examples, in order, back to back; never split across sequences
        while nxt is not None and ids[pos : pos + len(nxt[0]) + len(nxt[1]) + 1] == nxt[0] + nxt[1] + [EOS]:
            p, r = nxt
            assert mask[pos : pos + len(p)] == [0] * len(p)
            assert mask[pos + len(p) : pos + len(p) + len(r) + 1] == [1] * (len(r) + 1)
            pos += len(p) + len(r) + 1
            nxt = next(todo, None)
        assert pos > 0
        assert ids[pos:] == [PAD] * (seq_len - pos) and mask[pos:] == [0] * (seq_len - pos)
    assert nxt is None  # every kept example was found
    # loss mask is 1 exactly on response tokens and EOS
    all_ids = torch.stack([s[0] for s in seqs])
    all_mask = torch.stack([s[1] for s in seqs]).bool()
    assert ((all_ids >= 100) | (all_ids == EOS)).eq(all_mask).all()


def _sequences():
    return (torch.arange(i * 5, i * 5 + 5) for i in range(53))  # 53 items -> 13 batches of 4 per epoch


def test_batcher_epochs_and_shuffle():
    b = Batcher(_sequences, batch_size=4, seed=0, shuffle_buffer=8, epochs=2)
    batches = list(b)
    assert len(batches) == 26 and all(x.shape == (4, 5) for x in batches)
    e0, e1 = torch.cat(batches[:13]), torch.cat(batches[13:])
    assert len({row[0].item() for row in e0}) == 52  # no repeats within an epoch
    assert not torch.equal(e0, e1)  # each epoch reshuffled
    assert not torch.equal(e0, torch.stack(list(_sequences())[:52]))
    assert list(b) == []  # exhausted
    assert b.state_dict()["batches_consumed"] == 26


def test_batcher_resume_exact():
    ref = list(itertools.islice(Batcher(_sequences, 4, seed=1), 40))
    run = Batcher(_sequences, 4, seed=1)
    first = list(itertools.islice(iter(run), 17))  # crosses into epoch 1
    state = run.state_dict()
    assert state["batches_consumed"] == 17 and state["epoch"] == 1 and state["batch_in_epoch"] == 4
    resumed = Batcher(_sequences, 4, seed=1)
    resumed.load_state_dict(state)
    rest = list(itertools.islice(resumed, 23))
    assert all(torch.equal(x, y) for x, y in zip(first + rest, ref, strict=True))
    # re-iterating the same object also continues where it stopped
    more = list(itertools.islice(run, 3))
    assert all(torch.equal(x, y) for x, y in zip(more, ref[17:20], strict=True))


def test_batcher_with_sft_tuples():
    factory = lambda: pack_sft_examples(_examples(100), 48, PAD, EOS)  # noqa: E731
    ids, mask = next(iter(Batcher(factory, 3, seed=0)))
    assert ids.shape == mask.shape == (3, 48)


def test_batcher_bad_state_and_args():
    b = Batcher(_sequences, 4, seed=1)
    state = Batcher(_sequences, 4, seed=2).state_dict()
    with pytest.raises(ValueError, match="seed=2"):
        b.load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size=0"):
        Batcher(_sequences, 0)
    with pytest.raises(ValueError, match="fewer than batch_size=100"):
        next(iter(Batcher(_sequences, 100)))
    stale = Batcher(_sequences, 4, epochs=1)
    stale.load_state_dict({**stale.state_dict(), "batch_in_epoch": 50})
    with pytest.raises(RuntimeError, match="changed since the checkpoint"):
        list(stale)
