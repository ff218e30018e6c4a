"""Published Nemotron-Labs-Diffusion checkpoints load as they are.

Each published ``config.json`` text (tests/fixtures/published-configs) is used verbatim,
with only its size fields shrunk, beside random safetensors weights written under the
published names (``encoder.*``, ``diffusion_head.weight``). The VLM's text fields are
loaded under the text ``model_type`` ``nemotron_labs_diffusion`` (the ``nemotron_labs_diffusion_vlm``
model with its vision tower is tested in tests/test_vlm_model.py).
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, Ministral3Config, Ministral3Model
from transformers.utils import logging as hf_logging

import trimode
from trimode.configuration import DLM_PARADIGMS
from trimode.loading import load
from trimode.loss import corrupt, joint_loss

FIXTURES = Path(__file__).parent / "fixtures" / "published-configs"
PUBLISHED = ("nld-3b", "nld-8b", "nld-vlm-8b")
# The size fields, shrunk; every other published field is kept. vocab >= 128 keeps eos 11 and mask 100.
SHRUNK = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, vocab_size=160)
SHRUNK_ORIGINAL_MAX = 16  # rope_parameters.original_max_position_embeddings: 40-token inputs pass it twice
TEXT_MODEL_TYPE = "nemotron_labs_diffusion"
# How each fixture's checkpoint is written: (shards, dtype). The 8B says torch_dtype bfloat16.
LAYOUT = {"nld-3b": (1, torch.float32), "nld-8b": (3, torch.bfloat16), "nld-vlm-8b": (2, torch.bfloat16)}
WEIGHT_STD = 0.4  # spreads the logits so greedy argmax ties never decide a comparison
SEQ = 40


def published_text(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def shrunk_config(name: str) -> dict:
    cfg = published_text(name)
    cfg.update(SHRUNK)
    cfg["rope_parameters"] = {**cfg["rope_parameters"], "original_max_position_embeddings": SHRUNK_ORIGINAL_MAX}
    if cfg["model_type"] != TEXT_MODEL_TYPE:
        cfg["model_type"] = TEXT_MODEL_TYPE  # the VLM's text fields (see the module docstring)
    return cfg


def published_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Weight names and shapes of the published layout, from the config alone."""
    H, I, V, D = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * D, cfg["num_key_value_heads"] * D
    shapes = {"encoder.embed_tokens.weight": (V, H), "encoder.norm.weight": (H,), "diffusion_head.weight": (V, H)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, H), p + "self_attn.k_proj.weight": (kv, H),
                       p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, q),
                       p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                       p + "mlp.down_proj.weight": (H, I), p + "input_layernorm.weight": (H,),
                       p + "post_attention_layernorm.weight": (H,)})
    return shapes


def random_weights(cfg: dict, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in published_shapes(cfg).items():
        if len(shape) == 1:  # norms: near 1, but not 1, so a norm left unloaded shows
            out[name] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            out[name] = WEIGHT_STD * torch.randn(shape, generator=gen)
    return {k: v.to(dtype) for k, v in out.items()}


def write_checkpoint(path: Path, cfg: dict, weights: dict[str, torch.Tensor], shards: int) -> Path:
    """config.json + safetensors (with model.safetensors.index.json when shards > 1)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    if shards == 1:
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
        return path
    names = list(weights)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        save_file({k: weights[k] for k in part}, path / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in weights.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("published")
    dirs = {}
    for seed, name in enumerate(PUBLISHED):
        cfg = shrunk_config(name)
        shards, dtype = LAYOUT[name]
        dirs[name] = write_checkpoint(root / name, cfg, random_weights(cfg, seed, dtype), shards)
    return dirs


@pytest.fixture(scope="module")
def loaded(checkpoints) -> dict[str, trimode.TrimodeModel]:
    return {name: load(path, dtype="float32").model for name, path in checkpoints.items()}


def file_weights(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return {k: v.float() for k, v in out.items()}


def ministral3_reference(path: Path):
    """transformers' Ministral3Model with the files' encoder.* weights, and the head's weight."""
    cfg = json.loads((path / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_parameters")
    ref = Ministral3Model(Ministral3Config(**{k: cfg[k] for k in keys})).eval()
    weights = file_weights(path)
    ref.load_state_dict({k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")})
    return ref, weights["diffusion_head.weight"]


def test_only_size_fields_are_shrunk():
    """Guard for the fixtures below: every non-size field is the published one."""
    size = set(SHRUNK) | {"rope_parameters", "model_type"}
    for name in PUBLISHED:
        text, cfg = published_text(name), shrunk_config(name)
        assert {k: v for k, v in text.items() if k not in size} == {k: v for k, v in cfg.items() if k not in size}
        rope = dict(cfg["rope_parameters"], original_max_position_embeddings=None)
        assert rope == dict(text["rope_parameters"], original_max_position_embeddings=None)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_config_fields(checkpoints, name):
    config = trimode.NemotronLabsDiffusionConfig.from_pretrained(checkpoints[name])
    text = published_text(name)
    assert config.dlm_paradigm == text["dlm_paradigm"] == "bidirectional"
    assert config.dlm_loss_weight == 0.3 and config.ar_loss_weight == 1.0  # null / absent: the defaults
    assert (config.eos_token_id, config.mask_token_id, config.block_size) == (11, 100, 32)
    assert config.rope_parameters["rope_type"] == "yarn"
    assert config.dlm_type == text.get("dlm_type")
    assert not hasattr(config, "auto_map")  # remote code references are dropped on read


def test_published_null_loss_weight_is_the_default_in_the_loss(loaded):
    model = loaded["nld-8b"]  # its config.json says "dlm_loss_weight": null
    assert published_text("nld-8b")["dlm_loss_weight"] is None
    ids = torch.randint(12, 160, (2, 16), generator=torch.Generator().manual_seed(0))
    corruption = corrupt(ids, model.config.mask_token_id, None, 1e-3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = joint_loss(model, ids, corruption=corruption).loss
        want = joint_loss(model, ids, alpha=0.3, ar_weight=1.0, corruption=corruption).loss
    assert torch.isfinite(got) and got.item() == want.item()


@pytest.mark.parametrize("name", PUBLISHED)
def test_ar_logits_match_transformers_ministral3(checkpoints, loaded, name):
    model = loaded[name]
    assert type(model) is trimode.NemotronLabsDiffusionModel and next(model.parameters()).dtype == torch.float32
    ref, head = ministral3_reference(checkpoints[name])
    ids = torch.randint(0, SHRUNK["vocab_size"], (2, SEQ), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref(ids).last_hidden_state @ head.T
        got = model(ids).logits
    assert SEQ > 2 * SHRUNK_ORIGINAL_MAX  # YaRN and the llama-4 query scaling both act
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", PUBLISHED)
def test_speculative_modes_equal_ar_greedy(loaded, name):
    model = loaded[name]
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(12, 160, (n,), generator=gen).tolist() for n in (9, 5)]
    kwargs = dict(max_new_tokens=SEQ - 9, eos_token_id=[])
    ref, _ = model.ar_generate(prompts, **kwargs)
    for block in (4, 8):
        for method in ("linear_spec_generate", "quadratic_spec_generate"):
            out, nfe = getattr(model, method)(prompts, block_length=block, **kwargs)
            assert torch.equal(out, ref), (method, block)


def test_bf16_checkpoint_loads_float32_by_default_on_cpu(checkpoints):
    path = checkpoints["nld-8b"]
    assert published_text("nld-8b")["torch_dtype"] == "bfloat16"
    assert next(load(path).model.parameters()).dtype == torch.float32
    for dtype in ("bfloat16", torch.bfloat16):
        model = load(path, dtype=dtype).model
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert next(load(path, dtype="float32").model.parameters()).dtype == torch.float32
    model = AutoModel.from_pretrained(path, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_auto_keeps_bfloat16_when_float32_does_not_fit(checkpoints, monkeypatch, capsys):
    monkeypatch.setattr("trimode.loading.available_memory", lambda: 100_000)  # bytes
    model = load(checkpoints["nld-8b"], drafter=False).model
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not model.encoder.layers[0].self_attn.q_proj.packed  # packing is for float32
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bfloat16" in err[0] and "float32" in err[0]


@pytest.mark.parametrize("bad", ["float16", "fp64", torch.float16, None])
def test_unsupported_dtype_names_value_and_allowed(checkpoints, bad):
    with pytest.raises(ValueError, match=r"dtype=.*(float16|fp64|None).*allowed: 'auto', 'float32', 'bfloat16'"):
        load(checkpoints["nld-3b"], dtype=bad)


MARKER_CODE = ("import pathlib\n"
               "pathlib.Path(__file__).with_name('EXECUTED').write_text(__name__)\n"
               "raise RuntimeError('remote code was executed')\n")


@pytest.fixture(scope="module")
def booby_trapped(checkpoints, tmp_path_factory) -> Path:
    """The 8B checkpoint plus the .py files its auto_map names, which leave a marker if run."""
    path = tmp_path_factory.mktemp("trapped")
    for file in checkpoints["nld-8b"].iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    for module in json.loads((path / "config.json").read_text())["auto_map"].values():
        (path / f"{module.split('.')[0]}.py").write_text(MARKER_CODE)
    return path


@pytest.mark.parametrize("auto", [AutoModel, AutoModelForCausalLM], ids=lambda c: c.__name__)
@pytest.mark.parametrize("trust", [None, False, True])
@pytest.mark.parametrize("trapped", [False, True], ids=["no-code", "code-present"])
def test_auto_classes_load_without_running_directory_code(checkpoints, loaded, booby_trapped, auto, trust,
                                                          trapped):
    path = booby_trapped if trapped else checkpoints["nld-8b"]
    kwargs = {} if trust is None else {"trust_remote_code": trust}
    model, info = auto.from_pretrained(path, dtype=torch.float32, output_loading_info=True, **kwargs)
    assert type(model) is trimode.NemotronLabsDiffusionModel
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not (path / "EXECUTED").exists()
    assert not [m for m in sys.modules if m.startswith("transformers_modules")]
    ids = torch.randint(0, 160, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded["nld-8b"](ids).logits)


def test_resaved_published_checkpoint_names_no_remote_code(loaded, tmp_path):
    loaded["nld-8b"].save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in saved and saved["dlm_paradigm"] == "bidirectional"
    assert type(AutoModel.from_pretrained(tmp_path, trust_remote_code=True)) is trimode.NemotronLabsDiffusionModel


def test_loading_is_quiet_unless_verbose(checkpoints, capfd):
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    load(checkpoints["nld-8b"])
    assert capfd.readouterr().err == ""
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == (level, bars)
    if bars:
        load(checkpoints["nld-8b"], verbose=True)
        assert "Loading weights" in capfd.readouterr().err


@pytest.mark.parametrize("paradigm", DLM_PARADIGMS)
def test_every_supported_dlm_paradigm_loads(checkpoints, tmp_path, paradigm):
    cfg = shrunk_config("nld-3b")
    cfg["dlm_paradigm"] = paradigm
    path = write_checkpoint(tmp_path, cfg, load_file(checkpoints["nld-3b"] / "model.safetensors"), 1)
    assert load(path, drafter=False).model.config.dlm_paradigm == paradigm


@pytest.mark.parametrize("paradigm", ["autoregressive", "prefix_bidirectional", "Bidirectional"])
def test_unsupported_dlm_paradigm_names_value_and_allowed(paradigm):
    cfg = {k: v for k, v in shrunk_config("nld-8b").items() if k != "model_type"}
    cfg["dlm_paradigm"] = paradigm
    with pytest.raises(ValueError, match=rf"dlm_paradigm='{paradigm}'.*allowed: \('bidirectional', 'block_diff'"):
        trimode.NemotronLabsDiffusionConfig(**cfg)


def test_unknown_dlm_type_names_value_and_allowed():
    cfg = {k: v for k, v in shrunk_config("nld-vlm-8b").items() if k != "model_type"}
    cfg["dlm_type"] = "dream"
    with pytest.raises(ValueError, match=r"dlm_type='dream'.*allowed: \(None, 'llada'\)"):
        trimode.NemotronLabsDiffusionConfig(**cfg)
