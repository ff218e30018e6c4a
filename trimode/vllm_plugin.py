"""vLLM plugin: vLLM serves the AR pathway of trimode and published Nemotron-Labs-Diffusion checkpoints.

Installed with trimode, this module is vLLM's ``vllm.general_plugins`` entry point (see
``pyproject.toml``): vLLM calls :func:`register` in each of its processes, which registers
trimode's configs with ``transformers`` (so vLLM can read ``model_type: trimode`` /
``nemotron_labs_diffusion``) and maps the checkpoints' architectures to
:class:`trimode.vllm_models.TrimodeForCausalLM`. Then ``vllm serve DIR`` runs the AR mode
of a trimode directory as it is, without ``trimode export``.

Only the AR mode: self-speculation and diffusion need trimode's decoders (``trimode serve``)
or the published SGLang fork. Vision-language checkpoints are not registered.
"""

from __future__ import annotations

# The text architectures a trimode or published config.json names.
ARCHITECTURES = ("TrimodeModel", "NemotronLabsDiffusionModel")


def register() -> None:
    """Called by vLLM at start-up (entry point ``vllm.general_plugins: trimode``)."""
    from vllm import ModelRegistry

    from ._registration import register_auto_classes

    register_auto_classes()
    for architecture in ARCHITECTURES:
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, "trimode.vllm_models:TrimodeForCausalLM")


__all__ = ["register", "ARCHITECTURES"]
