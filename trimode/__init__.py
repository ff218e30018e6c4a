"""trimode: one checkpoint, three decoders (AR, block diffusion, lossless self-speculation).

``import trimode`` registers the model with transformers' Auto classes, under
both ``model_type = "trimode"`` and the published ``"nemotron_labs_diffusion"``,
so ``AutoModel.from_pretrained(dir)`` returns a :class:`TrimodeModel` (with
all four decoders) for either layout.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import KVCache
from .configuration import NemotronLabsDiffusionConfig, TrimodeConfig
from .generation import GenerationStats, SamplingParams
from .loss import JointLossOutput, joint_loss
from .modeling import NemotronLabsDiffusionModel, TrimodeModel

__version__ = "0.1.0"


def _register() -> None:
    for config_cls, model_cls in ((TrimodeConfig, TrimodeModel),
                                  (NemotronLabsDiffusionConfig, NemotronLabsDiffusionModel)):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)


_register()

__all__ = ["TrimodeConfig", "NemotronLabsDiffusionConfig", "TrimodeModel", "NemotronLabsDiffusionModel",
           "KVCache", "GenerationStats", "SamplingParams", "joint_loss", "JointLossOutput", "__version__"]
