"""Registering trimode's classes with transformers' Auto classes.

Registration needs the config and model classes, so it imports torch and transformers
(seconds). ``import trimode`` calls it, except where the ``trimode`` command line asked
to defer it (see :mod:`trimode_cli`); code that loads a model calls it before it does.
"""

from __future__ import annotations

_registered = False


def register_auto_classes() -> None:
    """Register the model types (``trimode``, ``nemotron_labs_diffusion``, and the VLM's
    ``nemotron_labs_diffusion_vlm``) with ``AutoConfig``, ``AutoModel`` and
    ``AutoModelForCausalLM``. Idempotent."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from .configuration import NemotronLabsDiffusionConfig, TrimodeConfig
    from .configuration_vlm import NemotronLabsDiffusionVLMConfig
    from .modeling import NemotronLabsDiffusionModel, TrimodeModel
    from .modeling_vlm import NemotronLabsDiffusionVLMModel

    for config_cls, model_cls in ((TrimodeConfig, TrimodeModel),
                                  (NemotronLabsDiffusionConfig, NemotronLabsDiffusionModel),
                                  (NemotronLabsDiffusionVLMConfig, NemotronLabsDiffusionVLMModel)):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    _registered = True
