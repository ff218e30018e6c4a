"""Compiled forwards (torch.compile, one graph per forward shape) never change a token.

One tiny model with a LoRA drafter on every projection (so the graphs carry the
drafter's per-position gate too) is compiled for AR steps, blocks of 4 and
quadratic-spec's 4 + 4 * 4 tokens; every mode must give the eager model's tokens.
"""

import pytest
import torch
from helpers import random_prompts, tiny_model
from peft import LoraConfig, get_peft_model

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = ("ar", "diffusion", "linear-spec", "quadratic-spec")


@pytest.fixture(scope="module")
def models():
    """(eager, compiled): the same weights; the compiled one packed first, as trimode.loading.load does."""
    def build():
        model = get_peft_model(tiny_model(seed=31), LoraConfig(r=4, lora_alpha=16, target_modules=ALL_PROJECTIONS,
                                                              init_lora_weights=False)).model
        return model.eval().requires_grad_(False)

    eager, compiled = build(), build()
    compiled.pack_weights(min_elements=0).compile_forwards(widths=(1, 4, 20), verbose=False)
    return eager, compiled


def _run(model, mode, prompts, **kw):
    kw = {"max_new_tokens": 14, "eos_token_id": [], **kw}
    if mode != "ar":
        kw.setdefault("block_length", 4)
    return model.decode_mode(mode, prompts, **kw)[0]


@pytest.mark.parametrize("mode", MODES)
def test_compiled_forwards_give_the_eager_tokens(models, mode):
    eager, compiled = models
    prompts = random_prompts(torch.Generator().manual_seed(5), 3)
    calls = compiled.compiled_forwards.calls
    assert torch.equal(_run(compiled, mode, prompts), _run(eager, mode, prompts))
    assert compiled.compiled_forwards.calls > calls  # the graphs did run
    if mode in ("linear-spec", "quadratic-spec"):  # and the speculative modes stay exact
        assert torch.equal(_run(compiled, mode, prompts), _run(compiled, "ar", prompts))


def test_other_widths_run_eagerly_and_graphs_are_reused(models):
    eager, compiled = models
    backbone = compiled.compiled_forwards
    prompts = random_prompts(torch.Generator().manual_seed(6), 3)
    _run(compiled, "linear-spec", prompts)
    shapes = dict(backbone.compile_seconds)
    assert {(3, 1, 256), (3, 4, 256)} <= set(shapes)
    # Another length within the same rounded capacity, and a block of 3 (not compiled): no new graph.
    assert torch.equal(_run(compiled, "linear-spec", prompts, max_new_tokens=9, block_length=3),
                       _run(eager, "linear-spec", prompts, max_new_tokens=9, block_length=3))
    assert backbone.compile_seconds == shapes


def test_compile_widths_are_checked():
    with pytest.raises(ValueError, match="positive integers"):
        tiny_model().compile_forwards(widths=(0, 4))
