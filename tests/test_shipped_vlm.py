"""The vision-language model shipped in the repository (models/trimode-tiny-vlm) loads offline, reads its held-out
images, and keeps the exactness contract with images in the prompt."""

import pytest
import torch

from trimode.evaluation.image_eval import ImageSetting, evaluate_images, task_inputs
from trimode.image_tasks import HELDOUT_SEED, make_tasks
from trimode.loading import SHIPPED_MODELS, load

SHIPPED_VLM = SHIPPED_MODELS / "trimode-tiny-vlm"
pytestmark = pytest.mark.skipif(not (SHIPPED_VLM / "config.json").is_file(), reason="no shipped VLM")


@pytest.fixture(scope="module")
def shipped():
    return load(SHIPPED_VLM)


def test_shipped_vlm_loads_with_processor_and_drafter(shipped):
    assert shipped.is_vlm and shipped.has_drafter and shipped.image_support_error() is None
    files = sum(p.stat().st_size for p in SHIPPED_VLM.rglob("*") if p.is_file())
    assert files < 60e6  # the budget for the directory


def test_shipped_vlm_speculative_modes_equal_ar_greedy_with_images(shipped):
    """Rows with different images (and one without) in one batch: both speculative modes give AR's tokens."""
    model, tok = shipped.model, shipped.tokenizer
    tasks = make_tasks(2, HELDOUT_SEED + 7)
    inputs = [task_inputs(tok, t, model.config, shipped.image_processor) for t in tasks]
    prompts = [x["input_ids"] for x in inputs] + [tok.encode("The chart has", add_special_tokens=False)]
    images = shipped.image_processor([t.image for t in tasks])  # two sizes, padded into one batch
    kwargs = dict(max_new_tokens=40, pixel_values=images["pixel_values"], image_sizes=images["image_sizes"])
    ref, _ = model.decode_mode("ar", prompts, **kwargs)
    for mode in ("linear-spec", "quadratic-spec"):
        for block in (4, 16):
            out, _ = model.decode_mode(mode, prompts, block_length=block, **kwargs)
            assert torch.equal(out, ref), (mode, block)


def test_shipped_vlm_reads_held_out_images(shipped):
    """Facts that can only come from the image: most are right (its model card gives the full figures)."""
    report = evaluate_images(shipped.model, shipped.tokenizer, shipped.image_processor, n_tasks=8,
                             settings=[ImageSetting("ar")], seed=HELDOUT_SEED + 500)
    assert report.results[0].accuracy >= 0.8, report.results[0].summary()
