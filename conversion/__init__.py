"""mosaic_vlm.conversion: converters from and to transformers and OpenAI / open_clip layouts."""

import mosaic_vlm.modeling  # noqa: F401  (registers every class with the Auto API)
