"""The model shipped in the repository loads offline and keeps the exactness contract."""

import pytest
import torch

from trimode.data.tasks import format_prompt, generate_tasks
from trimode.evaluation.prompts import trained_families
from trimode.loading import SHIPPED_MODEL, load

pytestmark = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="no shipped model")


@pytest.fixture(scope="module")
def shipped():
    return load()


def test_shipped_model_loads_with_tokenizer_and_drafter(shipped):
    assert shipped.tokenizer is not None and shipped.has_drafter
    assert shipped.model.config.mask_token_id == shipped.tokenizer.mask_token_id
    assert sum(p.numel() for p in shipped.model.parameters()) < 60e6 / 4  # fits the 60 MB budget in fp32


def test_shipped_speculative_modes_equal_ar_greedy(shipped):
    tok, model = shipped.tokenizer, shipped.model
    prompts = [tok.encode(format_prompt(t), add_special_tokens=False)
               for t in generate_tasks("heldout", 2, seed=1, families=trained_families(model.config))]
    prompts.append(tok.encode("import os\n\ndef main(", add_special_tokens=False))
    ref, _ = model.ar_generate(prompts, max_new_tokens=40)
    for mode in ("linear-spec", "quadratic-spec"):
        for block in (4, 16):
            out, _ = model.decode_mode(mode, prompts, max_new_tokens=40, block_length=block)
            assert torch.equal(out, ref), (mode, block)


def test_demo_finishes_and_solves_its_task(capsys):
    """The README's main command: every mode gets room for the whole answer, and the shipped model's
    AR answer (so both lossless speculative modes' too) is right."""
    from trimode.cli import main

    assert main(["demo"]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("task ")]
    correct = {row[1]: row[-1] for row in table}
    assert set(correct) == {"ar", "diffusion", "linear-spec", "quadratic-spec"}
    assert correct["ar"] == correct["linear-spec"] == correct["quadratic-spec"] == "yes"
