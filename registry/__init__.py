"""mosaic_vlm: vision-language models that read an image as a mosaic of patch words.

Importing any part of mosaic_vlm runs this module first: it registers every config, model, image processor
and processor with transformers' Auto API and marks them to be saved as remote code. Registration lives here,
in the package root, so that `modeling` and `processing` never import each other.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .modeling import (
    MosaicClipConfig,
    MosaicClipModel,
    MosaicClipTextConfig,
    MosaicClipTextModel,
    MosaicClipTextModelWithProjection,
    MosaicClipVisionConfig,
    MosaicClipVisionModel,
    MosaicClipVisionModelWithProjection,
    MosaicFuyuConfig,
    MosaicFuyuForCausalLM,
    MosaicFuyuModel,
)
from .processing import MosaicClipImageProcessor, MosaicClipProcessor, MosaicFuyuImageProcessor, MosaicFuyuProcessor

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

for _config, _image_processor, _processor in (
    (MosaicClipConfig, MosaicClipImageProcessor, MosaicClipProcessor),
    (MosaicFuyuConfig, MosaicFuyuImageProcessor, MosaicFuyuProcessor),
):
    AutoImageProcessor.register(_config, image_processor_classes={"pil": _image_processor}, exist_ok=True)
    AutoProcessor.register(_config, _processor, exist_ok=True)
    _image_processor.register_for_auto_class("AutoImageProcessor")
    _processor.register_for_auto_class("AutoProcessor")

__version__ = "0.1.0"
