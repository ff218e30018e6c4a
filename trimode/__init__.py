"""trimode: one checkpoint, three decoders (AR, block diffusion, lossless self-speculation).

``import trimode`` registers the model with transformers' Auto classes, under
both ``model_type = "trimode"`` and the published ``"nemotron_labs_diffusion"``,
so ``AutoModel.from_pretrained(dir)`` returns a :class:`TrimodeModel` (with
all four decoders) for either layout.

The public names below are imported on first use (PEP 562), so that the
``trimode`` command line can answer ``--help`` without importing torch; the
command line defers the registration too, until a command loads a model.
"""

from __future__ import annotations

import os

from ._lazy import lazy_exports
from ._registration import register_auto_classes

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "TrimodeConfig": ".configuration",
    "NemotronLabsDiffusionConfig": ".configuration",
    "TrimodeModel": ".modeling",
    "NemotronLabsDiffusionModel": ".modeling",
    "NemotronLabsDiffusionVLMConfig": ".configuration_vlm",
    "NemotronLabsDiffusionVLMModel": ".modeling_vlm",
    "ImageProcessor": ".image_processing",
    "ImageInputError": ".image_processing",
    "build_inputs": ".image_processing",
    "build_prompt": ".image_processing",
    "load_image": ".image_processing",
    "load": ".loading",
    "Loaded": ".loading",
    "KVCache": ".cache",
    "GenerationStats": ".generation",
    "SamplingParams": ".generation",
    "joint_loss": ".loss",
    "JointLossOutput": ".loss",
}

# Set (only while it imports this package) by the `trimode` console script: see trimode_cli.
DEFER_REGISTRATION_ENV = "TRIMODE_DEFER_AUTO_REGISTRATION"


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if os.environ.get(DEFER_REGISTRATION_ENV) != "1":
    register_auto_classes()

__all__ = [*_EXPORTS, "register_auto_classes", "__version__"]
