"""mosaic_vlm.conversion: converters from and to transformers and OpenAI / open_clip layouts.

`CLIP_CONVERTERS` and `FUYU_CONVERTERS` map (source layout, target layout) to a `Converter`, each called the same
way on checkpoint files; the `clip_*` / `fuyu_*` functions convert live models through the same engine.
"""

from .clip import (
    CLIP_CONVERTERS,
    clip_from_openai,
    clip_from_transformers,
    clip_to_openai,
    clip_to_transformers,
    infer_openai_config,
    openai_clip_logits,
)
from .fuyu import FUYU_CONVERTERS, fuyu_from_transformers, fuyu_processor_from_transformers, fuyu_to_transformers
from .streaming import DEFAULT_MAX_SHARD_SIZE, Converter

__all__ = [
    "CLIP_CONVERTERS",
    "DEFAULT_MAX_SHARD_SIZE",
    "FUYU_CONVERTERS",
    "Converter",
    "clip_from_openai",
    "clip_from_transformers",
    "clip_to_openai",
    "clip_to_transformers",
    "fuyu_from_transformers",
    "fuyu_processor_from_transformers",
    "fuyu_to_transformers",
    "infer_openai_config",
    "openai_clip_logits",
]
