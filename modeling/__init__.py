"""mosaic_vlm.modeling: the models. Importing any mosaic_vlm subpackage registers every config, model,
image processor and processor with transformers' Auto API, and marks them to be saved as remote code."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
)

from .configuration_mosaic_clip import MosaicClipConfig, MosaicClipTextConfig, MosaicClipVisionConfig
from .modeling_mosaic_clip import (
    MosaicClipModel,
    MosaicClipOutput,
    MosaicClipPreTrainedModel,
    MosaicClipTextModel,
    MosaicClipTextModelWithProjection,
    MosaicClipVisionModel,
    MosaicClipVisionModelWithProjection,
)
from .configuration_mosaic_fuyu import MosaicFuyuConfig
from .modeling_mosaic_fuyu import MosaicFuyuForCausalLM, MosaicFuyuModel, MosaicFuyuPreTrainedModel

for _config in (MosaicClipConfig, MosaicClipTextConfig, MosaicClipVisionConfig, MosaicFuyuConfig):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    _config.register_for_auto_class()
AutoModel.register(MosaicClipConfig, MosaicClipModel, exist_ok=True)
AutoModel.register(MosaicClipTextConfig, MosaicClipTextModel, exist_ok=True)
AutoModel.register(MosaicClipVisionConfig, MosaicClipVisionModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(MosaicClipConfig, MosaicClipModel, exist_ok=True)
AutoModel.register(MosaicFuyuConfig, MosaicFuyuModel, exist_ok=True)
AutoModelForCausalLM.register(MosaicFuyuConfig, MosaicFuyuForCausalLM, exist_ok=True)
AutoModelForImageTextToText.register(MosaicFuyuConfig, MosaicFuyuForCausalLM, exist_ok=True)
for _model in (
    MosaicClipModel,
    MosaicClipTextModel,
    MosaicClipVisionModel,
    MosaicClipTextModelWithProjection,
    MosaicClipVisionModelWithProjection,
    MosaicFuyuModel,
):
    _model.register_for_auto_class("AutoModel")
MosaicFuyuForCausalLM.register_for_auto_class("AutoModelForCausalLM")

import mosaic_vlm.processing  # noqa: E402,F401  (registers the processors; imports this package back)

__all__ = [
    "MosaicClipConfig",
    "MosaicClipModel",
    "MosaicClipOutput",
    "MosaicClipPreTrainedModel",
    "MosaicClipTextConfig",
    "MosaicClipTextModel",
    "MosaicClipTextModelWithProjection",
    "MosaicClipVisionConfig",
    "MosaicClipVisionModel",
    "MosaicClipVisionModelWithProjection",
    "MosaicFuyuConfig",
    "MosaicFuyuForCausalLM",
    "MosaicFuyuModel",
    "MosaicFuyuPreTrainedModel",
]
