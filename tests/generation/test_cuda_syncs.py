"""On a GPU, decoding waits for the device about once per cycle, never once per row or per layer.

Runs only with ``TRIMODE_TEST_DEVICE=cuda`` (see ``tests/helpers.py``). PyTorch's sync debug
mode warns at every host-device synchronisation (``.item()``, ``.tolist()``, a CPU copy,
``nonzero``...); the test counts those warnings during whole decodes. The CPU-side twin of this
test (``test_batched_acceptance.py``) counts the reads the loop makes; this one also catches a
sync hidden inside a torch op, which only the device can show.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import TEST_DEVICE, device_generator, random_prompts, tiny_model

pytestmark = pytest.mark.skipif(TEST_DEVICE.type != "cuda", reason="needs TRIMODE_TEST_DEVICE=cuda")

MODES = ("ar", "diffusion", "linear-spec", "quadratic-spec")


def _syncs(model, mode: str, rows: int, temperature: float) -> tuple[int, int]:
    """(synchronisations, decode forwards) of one decode of ``rows`` rows."""
    prompts = random_prompts(torch.Generator().manual_seed(rows), rows, vocab=model.config.vocab_size)
    kw = dict(max_new_tokens=17, block_length=4, eos_token_id=[], return_stats=True, temperature=temperature,
              generator=device_generator(0) if temperature else None)
    model.decode_mode(mode, prompts, **kw)  # warm-up: first-call allocations and lazy inits sync too
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _, _, stats = model.decode_mode(mode, prompts, **kw)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return syncs, stats.nfe - stats.prefill_forwards


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_at_most_one_sync_per_decode_forward_whatever_the_batch(mode, temperature):
    model = tiny_model(seed=3, num_hidden_layers=3)
    counts = {rows: _syncs(model, mode, rows, temperature) for rows in (1, 6)}
    print(mode, temperature, "rows: (syncs, decode forwards)", counts)
    for syncs, forwards in counts.values():
        # One read per cycle (a cycle is at least one forward), plus the prefill and the final output;
        # a per-row or per-layer sync would put 6 rows or 3 layers over this bound.
        assert syncs <= forwards + 3, counts
