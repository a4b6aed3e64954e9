"""CLIP image processor on transformers' PIL backend (no torchvision): resize the shortest edge (bicubic),
centre crop, rescale to [0, 1], normalise with CLIP's mean and std. It accepts the images that
`mosaic_processing_common` reads, as the Fuyu image processor does."""

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from .mosaic_processing_common import MAX_IMAGE_PIXELS, images_to_pil_list


class MosaicClipImageProcessor(PilBackend):
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 224}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        return images_to_pil_list(images)

    def resize(self, image: np.ndarray, size, resample=None, **kwargs) -> np.ndarray:
        """transformers' resize, after refusing an image so elongated that resizing its shortest edge would make
        it larger than MAX_IMAGE_PIXELS."""
        if size.shortest_edge and not size.longest_edge:
            height, width = image.shape[-2:]  # channels first
            longest = round(size.shortest_edge * max(height, width) / min(height, width))
            if size.shortest_edge * longest > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"Image of size {height}x{width} would be {size.shortest_edge * longest} pixels with its shortest "
                    f"edge resized to {size.shortest_edge}, more than MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}; crop it "
                    "to a less elongated shape first."
                )
        return super().resize(image, size, resample=resample, **kwargs)
