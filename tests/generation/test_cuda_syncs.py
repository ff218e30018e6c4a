"""On a GPU, decoding waits for the device about once per cycle, never once per row or per layer.

Runs only with ``TRIMODE_TEST_DEVICE=cuda`` (see ``tests/helpers.py``). PyTorch's sync debug
mode warns at every host-device synchronisation (``.item()``, ``.tolist()``, a CPU copy,
``nonzero``...); the test counts those warnings during whole decodes. The CPU-side twin of this
test (``test_batched_acceptance.py``) counts the reads the loop makes; this one also catches a
sync hidden inside a torch op, which only the device can show.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TEST_DEVICE, device_generator, random_prompts, tiny_model

from trimode.generation.forward_timing import counted_syncs

pytestmark = pytest.mark.skipif(TEST_DEVICE.type != "cuda", reason="needs TRIMODE_TEST_DEVICE=cuda")

MODES = ("ar", "diffusion", "linear-spec", "quadratic-spec")


def _syncs(model, mode: str, rows: int, new_tokens: int, temperature: float) -> tuple[int, int]:
    """(synchronisations, decode forwards) of one decode of ``rows`` rows."""
    prompts = random_prompts(torch.Generator().manual_seed(rows), rows, vocab=model.config.vocab_size)
    kw = dict(max_new_tokens=new_tokens, block_length=4, eos_token_id=[], return_stats=True, temperature=temperature,
              generator=device_generator(0) if temperature else None)
    model.decode_mode(mode, prompts, **kw)  # warm-up: first-call allocations and lazy inits sync too
    if temperature:
        kw["generator"] = device_generator(0)
    with counted_syncs() as syncs:
        _, _, stats = model.decode_mode(mode, prompts, **kw)
    return len(syncs), stats.nfe - stats.prefill_forwards


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_each_further_cycle_costs_at_most_one_sync_whatever_the_batch(mode, temperature):
    """A decode syncs a few times to start and finish (prompt upload, prefill, rows that finish), then
    at most once per cycle: a longer decode adds no more syncs than forwards, for 1 row or 6."""
    model = tiny_model(seed=3, num_hidden_layers=3)
    for rows in (1, 6):
        short, long = (_syncs(model, mode, rows, n, temperature) for n in (17, 49))
        print(mode, temperature, rows, "rows: (syncs, decode forwards) for 17 and 49 new tokens:", short, long)
        assert long[1] > short[1]
        # A per-row or per-layer sync would add 6 or 3 syncs per extra forward.
        assert long[0] - short[0] <= long[1] - short[1], (rows, short, long)
