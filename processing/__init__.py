"""mosaic_vlm.processing: image processors, processors, Fuyu's special tokens and tokenizer training."""

from .image_processing_mosaic_clip import MosaicClipImageProcessor
from .image_processing_mosaic_fuyu import MosaicFuyuImageProcessor
from .mosaic_processing_common import MAX_IMAGE_PIXELS
from .processing_mosaic_clip import MosaicClipProcessor
from .processing_mosaic_fuyu import MosaicFuyuProcessor
from .tokenizer_training import train_bpe_tokenizer, train_fuyu_tokenizer

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MosaicClipImageProcessor",
    "MosaicClipProcessor",
    "MosaicFuyuImageProcessor",
    "MosaicFuyuProcessor",
    "train_bpe_tokenizer",
    "train_fuyu_tokenizer",
]
