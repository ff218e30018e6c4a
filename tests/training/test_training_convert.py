"""Conversion: a transformers Mistral / Ministral-3 / Llama AR checkpoint becomes the start of a joint stage."""

import json
import warnings

import pytest
import torch
from hf_sources import GGUF_TOKENS, hf_model, write_llama_gguf
from training_helpers import debug_config
from transformers import AutoTokenizer

from trimode.loading import load
from trimode.training import convert_hf_checkpoint, train


def _greedy(model, prompt, n):
    """Reference greedy decoding: full recompute per token with the model's own forward."""
    ids = torch.tensor([prompt])
    for _ in range(n):
        ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], 1)
    return ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("kind", ["mistral", "ministral3"])
def test_convert_then_train_joint(tmp_path, tokenizer_dir, kind):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    hf = hf_model(kind, vocab=len(tok))
    src = tmp_path / kind
    hf.save_pretrained(src)
    tok.save_pretrained(src)
    assert json.loads((src / "config.json").read_text())["model_type"] == kind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Mistral's default sliding_window note
        conv = convert_hf_checkpoint(src)
    model = conv.model.eval()
    assert conv.mask_token_id == tok.mask_token_id and not conv.added_mask_token
    prompt = tok.encode("def add(a, b):\n    return", add_special_tokens=False)
    # 40 positions: past the 16-token original context of the Ministral-3 YaRN rope.
    ids = torch.randint(7, len(tok), (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max().item() < 1e-4
        want = _greedy(hf, prompt, 20)
    out, _ = model.ar_generate([prompt], max_new_tokens=20, eos_token_id=[])
    assert out[0, len(prompt):].tolist() == want

    # The HF directory is the --init of a joint stage.
    out_dir = tmp_path / "joint"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(debug_config("joint", steps=3, eval_batches=0, checkpoint_interval=0), out=out_dir, init=src)
    assert result.step == 3 and f"converted {kind}" in result.info["model"]
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    trained = load(out_dir).model
    assert trained.config.model_type == "trimode" and trained.config.mask_token_id == tok.mask_token_id
    run, _ = trained.linear_spec_generate([prompt], max_new_tokens=8, eos_token_id=[])
    ref, _ = trained.ar_generate([prompt], max_new_tokens=8, eos_token_id=[])
    assert torch.equal(run, ref)


@pytest.mark.parametrize("kind", ["ministral3", "llama"])
def test_new_mask_token_keeps_greedy_output(tmp_path, kind):
    """No tokenizer, no --mask-token-id: one token is appended (mean embedding); AR output is unchanged."""
    hf = hf_model(kind, vocab=97)
    hf.save_pretrained(tmp_path)
    conv = convert_hf_checkpoint(tmp_path)
    model = conv.model.eval()
    assert conv.added_mask_token and conv.mask_token_id == 97 and model.config.vocab_size == 98
    emb = model.encoder.embed_tokens.weight
    assert torch.allclose(emb[97], hf.model.embed_tokens.weight.mean(0))
    if kind == "llama":  # tied embeddings are copied into the untied head
        assert torch.equal(model.diffusion_head.weight[:97], hf.model.embed_tokens.weight)
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids).logits[..., :97] - hf(ids).logits).abs().max().item() < 1e-4
        want = _greedy(hf, ids[0].tolist(), 12)
    out, _ = model.ar_generate(ids, max_new_tokens=12, eos_token_id=[])
    assert out[0, 30:].tolist() == want


def test_conversion_errors(tmp_path):
    hf = hf_model("mistral", vocab=50)
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"mask_token_id=50 must be in \[0, vocab_size=50\)"):
        convert_hf_checkpoint(tmp_path, mask_token_id=50)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2'.*llama, mistral, ministral3"):
        convert_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickled weights are not loaded"):
        convert_hf_checkpoint(tmp_path)




def test_gguf_file_converts_with_the_source_logits(tmp_path):
    """A GGUF file (llama.cpp layout, tied embeddings, no mask token) converts: a mask token is
    appended, the head is the untied copy of the embeddings, and AR logits equal the source's."""
    hf = hf_model("llama", vocab=97)
    write_llama_gguf(hf, tmp_path / "tiny.gguf", GGUF_TOKENS)
    conv = convert_hf_checkpoint(tmp_path / "tiny.gguf")
    model = conv.model.eval()
    assert conv.source_type == "llama" and conv.added_mask_token and conv.mask_token_id == 97
    assert conv.tokenizer is not None and conv.tokenizer.mask_token_id == 97
    assert torch.equal(model.diffusion_head.weight[:97], hf.model.embed_tokens.weight)
    ids = torch.randint(3, 97, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(ids).logits[..., :97] - hf(ids).logits).abs().max().item() < 1e-4
        want = _greedy(hf, ids[0].tolist(), 10)
    out, _ = model.ar_generate(ids[:1], max_new_tokens=10, eos_token_id=[])
    assert out[0, 30:].tolist() == want


def test_gguf_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file at"):
        convert_hf_checkpoint(tmp_path / "missing.gguf")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="not a .gguf file"):
        convert_hf_checkpoint(tmp_path / "weights.bin")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(ValueError, match="broken.gguf"):
        convert_hf_checkpoint(tmp_path / "broken.gguf")


def test_convert_command_writes_a_loadable_tri_mode_directory(tmp_path, capsys):
    """`trimode convert FILE.gguf --out DIR`: DIR loads with the tokenizer and the source's AR logits;
    a second run refuses to overwrite it without --overwrite."""
    from trimode.cli import main

    hf = hf_model("llama", vocab=97)
    write_llama_gguf(hf, tmp_path / "tiny.gguf", GGUF_TOKENS)
    out = tmp_path / "converted"
    assert main(["convert", str(tmp_path / "tiny.gguf"), "--out", str(out)]) == 0
    assert "mask token id 97" in capsys.readouterr().out
    loaded = load(out)
    assert loaded.tokenizer is not None and loaded.tokenizer.mask_token_id == loaded.model.config.mask_token_id == 97
    ids = torch.randint(3, 97, (1, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (loaded.model(ids).logits[..., :97] - hf(ids).logits).abs().max().item() < 1e-4
    assert main(["convert", str(tmp_path / "tiny.gguf"), "--out", str(out)]) == 2
    assert "already holds a model; pass --overwrite" in capsys.readouterr().err
