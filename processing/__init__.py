"""mosaic_vlm.processing: image processors, processors and tokenizer training. Importing it registers
every mosaic_vlm class with transformers' Auto API."""

from transformers import AutoImageProcessor, AutoProcessor

import mosaic_vlm.modeling as _modeling  # registers the configs and models

from .image_processing_mosaic_clip import MosaicClipImageProcessor
from .image_processing_mosaic_fuyu import MosaicFuyuImageProcessor
from .processing_mosaic_clip import MosaicClipProcessor
from .processing_mosaic_fuyu import MosaicFuyuProcessor
from .tokenizer_training import train_bpe_tokenizer

AutoImageProcessor.register(
    _modeling.MosaicClipConfig, image_processor_classes={"pil": MosaicClipImageProcessor}, exist_ok=True
)
AutoProcessor.register(_modeling.MosaicClipConfig, MosaicClipProcessor, exist_ok=True)
AutoImageProcessor.register(
    _modeling.MosaicFuyuConfig, image_processor_classes={"pil": MosaicFuyuImageProcessor}, exist_ok=True
)
AutoProcessor.register(_modeling.MosaicFuyuConfig, MosaicFuyuProcessor, exist_ok=True)
MosaicClipImageProcessor.register_for_auto_class("AutoImageProcessor")
MosaicFuyuImageProcessor.register_for_auto_class("AutoImageProcessor")
MosaicClipProcessor.register_for_auto_class("AutoProcessor")
MosaicFuyuProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "MosaicClipImageProcessor",
    "MosaicClipProcessor",
    "MosaicFuyuImageProcessor",
    "MosaicFuyuProcessor",
    "train_bpe_tokenizer",
]
