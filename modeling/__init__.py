"""mosaic_vlm.modeling: the two model families, each model in one file beside its config."""

from .configuration_mosaic_clip import MosaicClipConfig, MosaicClipTextConfig, MosaicClipVisionConfig
from .configuration_mosaic_fuyu import MosaicFuyuConfig
from .modeling_mosaic_clip import (
    MosaicClipModel,
    MosaicClipOutput,
    MosaicClipPreTrainedModel,
    MosaicClipTextModel,
    MosaicClipTextModelWithProjection,
    MosaicClipVisionModel,
    MosaicClipVisionModelWithProjection,
)
from .modeling_mosaic_fuyu import MosaicFuyuForCausalLM, MosaicFuyuModel, MosaicFuyuPreTrainedModel

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
