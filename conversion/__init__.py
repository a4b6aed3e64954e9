"""mosaic_vlm.conversion: converters from and to transformers and OpenAI / open_clip layouts."""

from .clip import (
    clip_from_openai,
    clip_from_transformers,
    clip_to_openai,
    clip_to_transformers,
    infer_openai_config,
    load_openai_state_dict,
    openai_clip_logits,
)
from .fuyu import fuyu_from_transformers, fuyu_processor_from_transformers, fuyu_to_transformers

__all__ = [
    "clip_from_openai",
    "clip_from_transformers",
    "clip_to_openai",
    "clip_to_transformers",
    "fuyu_from_transformers",
    "fuyu_processor_from_transformers",
    "fuyu_to_transformers",
    "infer_openai_config",
    "load_openai_state_dict",
    "openai_clip_logits",
]
