"""The files of a checkpoint directory, read without loading it; transformers kept quiet while loading.

Safetensors only: shards and index, their headers (element count, stored dtypes) read
from the first bytes of each file; a directory of pickled weights is refused with a
one-line reason, never unpickled.
"""

from __future__ import annotations

import json
import math
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
# safetensors header dtype names -> torch dtypes (the floating ones a checkpoint may hold).
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class CheckpointInfo:
    """What the safetensors headers say, read without touching the weights."""

    files: list[Path]  # the shards (one file when unsharded); empty: not safetensors
    numel: int  # elements over all tensors
    dtypes: set[torch.dtype]  # stored floating dtypes


def read_checkpoint_info(path: Path) -> CheckpointInfo:
    """Shard list, element count and stored dtypes of a safetensors checkpoint, from the headers only."""
    files = safetensors_files(path)
    numel, dtypes = 0, set()
    for file in files:
        for name, entry in _safetensors_header(file).items():
            if name == "__metadata__":
                continue
            numel += math.prod(entry["shape"])
            if entry["dtype"] in _SAFETENSORS_DTYPES:
                dtypes.add(_SAFETENSORS_DTYPES[entry["dtype"]])
    return CheckpointInfo(files=files, numel=numel, dtypes=dtypes)


def require_safetensors(path: Path) -> list[Path]:
    """The safetensors shards of ``path``; a one-line error when it has none (pickles are never loaded)."""
    files = safetensors_files(path)
    if not files:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        hint = f" (found {pickles}: pickled weights are not loaded; re-save them with safetensors)" if pickles else ""
        raise FileNotFoundError(f"{path} has no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX}{hint}")
    return files


def safetensors_files(path: Path) -> list[Path]:
    """The shards an index names (all must exist), or the single file; empty when neither is there."""
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [path / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are missing: {', '.join(missing)}")
        return files
    single = path / SAFETENSORS_SINGLE
    return [single] if single.is_file() else []


def _safetensors_header(file: Path) -> dict:
    """The JSON header of a safetensors file: 8-byte little-endian length, then the JSON."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


@contextmanager
def quiet_transformers(enabled: bool = True):
    """Within the block: transformers logs errors only and shows no progress bars. Restores
    transformers' verbosity and both transformers' and huggingface_hub's bar settings after."""
    if not enabled:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars_on, hub_bars_off = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars_on:
            hf_logging.enable_progress_bar()  # also turns huggingface_hub's bars on ...
            if hub_bars_off:
                disable_progress_bars()  # ... which were off before: leave them off
