"""Loading a model directory for inference: weights, tokenizer, and the LoRA drafter if present.

``load(path)`` returns a :class:`Loaded` bundle. Without a path it opens the
model shipped in the repository (``models/trimode-tiny``). A ``linear_spec_lora/``
subfolder is attached with PEFT (the published usage), and the underlying
:class:`~trimode.TrimodeModel` is returned: its decoders switch the adapter on
for draft forwards only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

DRAFTER_SUBFOLDER = "linear_spec_lora"
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "trimode-tiny"


@dataclass
class Loaded:
    model: "torch.nn.Module"  # a TrimodeModel (with the drafter injected when present)
    tokenizer: object | None
    path: Path
    has_drafter: bool


def default_model_path() -> Path:
    return Path(os.environ.get("TRIMODE_MODEL", SHIPPED_MODEL))


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
         dtype: torch.dtype = torch.float32, drafter: bool = True) -> Loaded:
    """Load ``path`` (default: the shipped model) for inference on ``device`` in ``dtype``."""
    import trimode  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModel, AutoTokenizer

    path = Path(path) if path is not None else default_model_path()
    if not (path / "config.json").is_file():
        hint = " (the shipped model is missing: reinstall from a full clone, or rebuild it with the command in the README)" \
            if path == SHIPPED_MODEL else ""
        raise FileNotFoundError(f"no model at {path}: expected a directory with config.json{hint}")
    model = AutoModel.from_pretrained(path, dtype=dtype)
    has_drafter = drafter and (path / DRAFTER_SUBFOLDER / "adapter_config.json").is_file()
    if has_drafter:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, path, subfolder=DRAFTER_SUBFOLDER).model
    model = model.to(device).eval()
    if torch.device(device).type == "cpu":
        model.enable_decode_layout()  # faster single-token decode on CPU (see modeling.Projection)
    tokenizer = None
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
    return Loaded(model=model, tokenizer=tokenizer, path=path, has_drafter=has_drafter)
