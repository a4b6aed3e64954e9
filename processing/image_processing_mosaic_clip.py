"""CLIP image processor on transformers' PIL backend (no torchvision): resize the shortest edge (bicubic),
centre crop, rescale to [0, 1], normalise with CLIP's mean and std.

Accepted inputs, one image or a batch (a list, or a 4-D array/tensor):
- PIL images of any mode (grayscale and RGBA are converted to RGB);
- numpy arrays and torch tensors, HWC or CHW with 1, 3 or 4 channels, or 2-D grayscale;
  uint8 / integer values in [0, 255], or floats in [0, 1];
- paths to image files.
"""

import os

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

ACCEPTED_IMAGES = (
    "a PIL.Image.Image, a numpy array or torch tensor (HWC or CHW with 1, 3 or 4 channels, or 2-D grayscale; "
    "uint8 in [0, 255] or float in [0, 1]), a path to an image file, or a list of those"
)


def _array_to_pil(array: np.ndarray) -> PIL.Image.Image:
    """One image array (2-D, HWC or CHW) as a PIL image, after checking its shape, dtype and value range."""
    if array.ndim == 3:
        if array.shape[-1] not in (1, 3, 4):  # not HWC: must be CHW
            if array.shape[0] not in (1, 3, 4):
                raise ValueError(
                    f"Image of shape {array.shape} has no channel axis of size 1, 3 or 4; expected {ACCEPTED_IMAGES}."
                )
            array = np.moveaxis(array, 0, -1)  # CHW -> HWC
        if array.shape[-1] == 1:
            array = array[..., 0]  # (H, W, 1) -> (H, W) grayscale
    elif array.ndim != 2:
        raise ValueError(f"Image of shape {array.shape} has {array.ndim} dimensions; expected {ACCEPTED_IMAGES}.")
    if array.size == 0:
        raise ValueError(f"Image of shape {array.shape} is empty.")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"Image of dtype {array.dtype} is not accepted; expected {ACCEPTED_IMAGES}.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"Float image values must lie in [0, 1], got [{array.min()}, {array.max()}]; "
                "pass uint8 for values in [0, 255]."
            )
        array = np.round(array * 255)
    elif array.min() < 0 or array.max() > 255:
        raise ValueError(f"Integer image values must lie in [0, 255], got [{array.min()}, {array.max()}].")
    return PIL.Image.fromarray(array.astype(np.uint8))


def images_to_pil_list(images) -> list[PIL.Image.Image]:
    """Any accepted single image or batch as a non-empty flat list of PIL images."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"The batch of images is empty; expected {ACCEPTED_IMAGES}.")
        return [pil for image in images for pil in images_to_pil_list(image)]
    if isinstance(images, PIL.Image.Image):
        return [images]
    if isinstance(images, (str, os.PathLike)):
        if not os.path.isfile(images):
            raise ValueError(f"Image file {os.fspath(images)!r} does not exist.")
        with PIL.Image.open(images) as image:
            return [image.copy()]
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            if images.shape[0] == 0:
                raise ValueError(f"The batch of images is empty; expected {ACCEPTED_IMAGES}.")
            return [_array_to_pil(image) for image in images]
        return [_array_to_pil(images)]
    raise TypeError(f"Unsupported image type {type(images).__name__}; expected {ACCEPTED_IMAGES}.")


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
