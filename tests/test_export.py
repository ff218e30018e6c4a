"""`trimode export`: the AR pathway as a transformers directory and as a GGUF file, checked by loading them back."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from trimode.cli import main
from trimode.export import export_gguf, export_transformers, gguf_blocker, interleave_rope_rows
from trimode.loading import SHIPPED_MODEL, load

DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def _greedy(hf, prompts, n):
    return [hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                        pad_token_id=0)[0].tolist() for p in prompts]


@pytest.mark.parametrize("rope, architecture, expected", [
    (DEFAULT_ROPE, "auto", "LlamaForCausalLM"),            # no query scaling: the engines' common class
    (None, "auto", "Ministral3ForCausalLM"),               # the helpers' YaRN + llama-4 scaling (published style)
    (DEFAULT_ROPE, "ministral3", "Ministral3ForCausalLM"),
])
def test_exported_directory_gives_the_ar_modes_greedy_tokens(tmp_path, rope, architecture, expected):
    model = tiny_model(seed=4, **({"rope_parameters": dict(rope)} if rope else {}))
    assert export_transformers(model, None, tmp_path, architecture=architecture) == expected
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__ == expected
    prompts = [[5, 9, 11, 7], [20, 4, 33]]
    ours = [model.ar_generate([p], max_new_tokens=12, eos_token_id=[])[0][0].tolist() for p in prompts]
    assert _greedy(hf, prompts, 12) == ours


def test_query_scaling_cannot_be_called_llama(tmp_path):
    with pytest.raises(ValueError, match="llama_4_scaling_beta=0.1.*export it as ministral3"):
        export_transformers(tiny_model(), None, tmp_path, architecture="llama")


def test_rope_rows_interleave_per_head():
    # head_dim 4: rows (h, half, j) -> (h, j, half): [0, 1, 2, 3] -> [0, 2, 1, 3] in each head
    w = torch.arange(8.0)[:, None].expand(8, 3)
    assert interleave_rope_rows(w, heads=2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.fixture(scope="module")
def shipped():
    return load(SHIPPED_MODEL, drafter=False)


def test_gguf_loads_back_with_the_same_tensors_tokens_and_tokenizer(tmp_path, shipped):
    import gguf

    model, tokenizer = shipped.model, shipped.tokenizer
    (tmp_path / "hf").mkdir()
    export_transformers(model, tokenizer, tmp_path / "hf")
    path = export_gguf(model, tokenizer, tmp_path / "gguf" / "model.gguf")

    reader = gguf.GGUFReader(path)
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    cfg = model.config
    assert len(tensors) == 2 + 1 + 9 * cfg.num_hidden_layers  # embeddings, head, final norm; 9 per layer
    head = model.state_dict()["diffusion_head.weight"]
    assert torch.equal(tensors["output.weight"], head)
    q = model.state_dict()["encoder.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(tensors["blk.1.attn_q.weight"], interleave_rope_rows(q, cfg.num_attention_heads))
    assert reader.fields["llama.attention.head_count_kv"].contents() == cfg.num_key_value_heads

    # transformers' GGUF loader undoes the row order: the same weights as the transformers export.
    theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ref = exported.state_dict()
    assert set(theirs.state_dict()) == set(ref)
    assert all(torch.equal(v, ref[k]) for k, v in theirs.state_dict().items())
    prompt = tokenizer("The quick brown fox")["input_ids"]
    ours = model.ar_generate([prompt], max_new_tokens=10, eos_token_id=[])[0][0].tolist()
    assert _greedy(theirs, [prompt], 10) == [ours]
    read_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in ("The quick brown fox", "def f(x):\n    return x + 1", "<|user|>hi<|assistant|>"):
        assert read_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_models_llama_cpp_cannot_run_are_refused_with_the_reason(tmp_path):
    scaled = tiny_model()  # Ministral-3's query scaling
    assert "query scaling" in gguf_blocker(scaled.config)
    with pytest.raises(ValueError, match="cannot export this model to GGUF: Ministral-3's position-dependent"):
        export_gguf(scaled, None, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    yarn = tiny_model(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                                       "original_max_position_embeddings": 64})
    assert "rope_type='yarn'" in gguf_blocker(yarn.config)


def test_export_command(tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, model_dir, ignore=shutil.ignore_patterns("linear_spec_lora", "training"))
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "hf"),
                 "--gguf", str(tmp_path / "m.gguf")]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and "m.gguf" in out and "AR mode only" in out
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()
    # Nothing to write, an existing target, a wrong suffix: one-line errors (exit 2).
    assert main(["export", "--model", str(model_dir)]) == 2
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "hf")]) == 2
    assert main(["export", "--model", str(model_dir), "--gguf", str(tmp_path / "m.bin")]) == 2
    err = capsys.readouterr().err
    assert "nothing to write" in err and "pass --overwrite" in err and "must end in .gguf" in err
