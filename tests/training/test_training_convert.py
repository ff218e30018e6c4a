"""Conversion: a transformers Mistral / Ministral-3 / Llama AR checkpoint becomes the start of a joint stage."""

import json
import warnings

import pytest
import torch
from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, Ministral3Config, Ministral3ForCausalLM,
                          MistralConfig, MistralForCausalLM)
from training_helpers import debug_config

from trimode.loading import load
from trimode.training import convert_hf_checkpoint, train

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
# Ministral-3: YaRN + llama-4 query scaling with a short original context, so both act within the test.
MINISTRAL_ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 16,
                  "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                  "llama_4_scaling_beta": 0.1}


def _hf_model(kind: str, vocab: int):
    torch.manual_seed(0)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(vocab_size=vocab, **SHAPE))
    elif kind == "ministral3":
        model = Ministral3ForCausalLM(Ministral3Config(vocab_size=vocab, rope_parameters=dict(MINISTRAL_ROPE),
                                                       **SHAPE))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, **SHAPE))
    with torch.no_grad():  # spread the logits so greedy argmax never hinges on a near-tie
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


def _greedy(model, prompt, n):
    """Reference greedy decoding: full recompute per token with the model's own forward."""
    ids = torch.tensor([prompt])
    for _ in range(n):
        ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], 1)
    return ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("kind", ["mistral", "ministral3"])
def test_convert_then_train_joint(tmp_path, tokenizer_dir, kind):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    hf = _hf_model(kind, vocab=len(tok))
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
    hf = _hf_model(kind, vocab=97)
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
    hf = _hf_model("mistral", vocab=50)
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


_LETTERS = [chr(ord("a") + i) for i in range(26)]
# 97 byte-level BPE tokens with one merge; "<|endoftext|>" is the unknown token transformers' GGUF
# tokenizer expects, so the tokenizer holds exactly the model's 97 ids.
GGUF_TOKENS = ["<|endoftext|>", "<s>", "</s>", "ab"] + _LETTERS + [x + y for x in "cde" for y in _LETTERS][:67]


def _permute_for_gguf(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's storage order of q/k rows (pairs of rotary halves interleaved), which
    transformers' GGUF loader undoes on read."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def _write_llama_gguf(hf, path, tokens: list[str]) -> None:
    """A float32 GGUF file of a tiny Llama, laid out as llama.cpp's converter writes it (tied head)."""
    gguf = pytest.importorskip("gguf")
    c = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {"self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        q = _permute_for_gguf(hf.model.layers[i].self_attn.q_proj.weight.detach(), c.num_attention_heads)
        k = _permute_for_gguf(hf.model.layers[i].self_attn.k_proj.weight.detach(), c.num_key_value_heads)
        w.add_tensor(f"blk.{i}.attn_q.weight", q.numpy())
        w.add_tensor(f"blk.{i}.attn_k.weight", k.numpy())
        for hf_name, gguf_name in names.items():
            w.add_tensor(f"blk.{i}.{gguf_name}.weight", sd[p + hf_name + ".weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_file_converts_with_the_source_logits(tmp_path):
    """A GGUF file (llama.cpp layout, tied embeddings, no mask token) converts: a mask token is
    appended, the head is the untied copy of the embeddings, and AR logits equal the source's."""
    hf = _hf_model("llama", vocab=97)
    _write_llama_gguf(hf, tmp_path / "tiny.gguf", GGUF_TOKENS)
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

    hf = _hf_model("llama", vocab=97)
    _write_llama_gguf(hf, tmp_path / "tiny.gguf", GGUF_TOKENS)
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
