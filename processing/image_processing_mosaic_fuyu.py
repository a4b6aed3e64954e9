"""Fuyu image processor on transformers' PIL backend (no torchvision): images become patch tokens.

Each image is downscaled (never upscaled) to fit `size`, keeping its aspect ratio; padded at the bottom
and right with `padding_value` (on the 0-255 scale, before rescaling, as transformers does) only up to
the next multiple of `patch_size`; rescaled and normalised (mean = std = 0.5); and cut into
`(rows * cols, patch_size * patch_size * channels)` patches in row-major order. The patch grid and the
image-token layout are pure functions of the image size (`patch_grid`, `image_token_layout`).

Accepts the same inputs as the CLIP image processor (PIL, numpy, torch, grayscale, RGBA, paths, batches).
"""

import math

import numpy as np
import PIL.Image
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs

from .image_processing_mosaic_clip import images_to_pil_list


def fitted_size(height: int, width: int, max_height: int, max_width: int) -> tuple[int, int]:
    """The size after downscaling to fit (max_height, max_width) with the aspect ratio kept; never larger."""
    if height <= max_height and width <= max_width:
        return height, width
    scale = min(max_height / height, max_width / width)
    return int(height * scale), int(width * scale)


def patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """(rows, cols) of patches covering a height x width image padded up to whole patches."""
    if height <= 0 or width <= 0:
        raise ValueError(f"An image of size {height}x{width} has a zero-size side; it holds no patch.")
    return math.ceil(height / patch_size), math.ceil(width / patch_size)


def image_token_layout(rows: int, cols: int, image_token_id: int, newline_token_id: int) -> torch.Tensor:
    """Token ids of one image: per patch row, `cols` image tokens and then one image-newline token."""
    row = torch.tensor([image_token_id] * cols + [newline_token_id])
    return row.repeat(rows)  # (rows * (cols + 1),)


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(rows * p, cols * p, channels) -> (rows * cols, p * p * channels): patches in row-major order, each
    flattened as (patch row, patch column, channel), as transformers' Fuyu does. One copy, from HWC so
    that every copied run (p * channels values) is contiguous."""
    height, width, channels = pixels.shape
    rows, cols = height // patch_size, width // patch_size
    # (rows, p, cols, p, C) -> (rows, cols, p, p, C)
    patches = pixels.reshape(rows, patch_size, cols, patch_size, channels).permute(0, 2, 1, 3, 4)
    return patches.reshape(rows * cols, patch_size * patch_size * channels)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB as transformers converts: transparency composited onto white; RGB images are passed through."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


class MosaicFuyuImagesKwargs(ImagesKwargs, total=False):
    patch_size: int
    padding_value: float


class MosaicFuyuImageProcessor(PilBackend):
    model_input_names = ["image_patches"]
    valid_kwargs = MosaicFuyuImagesKwargs
    do_resize = True
    size = {"height": 1080, "width": 1920}
    resample = PILImageResampling.BILINEAR
    patch_size = 30
    padding_value = 1.0
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = 0.5
    image_std = 0.5
    do_convert_rgb = True

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        return images_to_pil_list(images)

    def process_image(self, image: PIL.Image.Image, do_convert_rgb: bool | None = None, **kwargs) -> PIL.Image.Image:
        """Images stay PIL until they are resized: one conversion to pixels, after the resize."""
        return to_rgb(image) if do_convert_rgb else image

    def _preprocess(
        self,
        images: list[PIL.Image.Image],
        do_resize: bool,
        size,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        patch_size: int,
        padding_value: float,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        """Returns per image: `image_patches` (patches, patch_dim) float32, `patch_grids` (rows, cols),
        `image_sizes` (height, width) as given and `resized_sizes` after the downscale."""
        patches, grids, sizes, resized_sizes = [], [], [], []
        for image in images:
            height, width = image.height, image.width
            patch_grid(height, width, patch_size)  # refuses a zero-size side
            if do_resize:
                new_height, new_width = fitted_size(height, width, size.height, size.width)
                if (new_height, new_width) != (height, width):
                    image = image.resize((new_width, new_height), resample=resample)
            pixels = np.asarray(image)  # (H, W, C) uint8, or (H, W) without RGB conversion
            if pixels.ndim == 2:
                pixels = pixels[..., None]
            resized_height, resized_width, channels = pixels.shape
            rows, cols = patch_grid(resized_height, resized_width, patch_size)
            scale = torch.full((channels,), rescale_factor if do_rescale else 1.0)
            shift = torch.zeros(channels)
            if do_normalize:  # rescale and normalise fused: x * scale + shift, per channel
                mean = torch.tensor(image_mean, dtype=torch.float32).expand(channels)
                std = torch.tensor(image_std, dtype=torch.float32).expand(channels)
                scale, shift = scale / std, -mean / std
            # patchify in uint8 (a quarter of the bytes to move), then one pass to float32 does rescale and
            # normalisation; the padding pixels are written afterwards with padding_value (0-255 scale) taken
            # through the same rescale and normalisation, as transformers pads before rescaling
            canvas = torch.zeros(rows * patch_size, cols * patch_size, channels, dtype=torch.uint8)
            canvas.numpy()[:resized_height, :resized_width] = pixels
            patch_bytes = patchify(canvas, patch_size).view(rows * cols, patch_size * patch_size, channels)
            image_patches = patch_bytes.to(torch.float32)  # (patches, p * p, C)
            if bool((scale == scale[0]).all() and (shift == shift[0]).all()):  # scalar ops are ~3x faster
                image_patches.mul_(scale[0].item()).add_(shift[0].item())
            else:
                image_patches.mul_(scale).add_(shift)
            # (patches, p*p, C) -> (rows, cols, p, p, C): the padding is the tail of the last patch row and column
            grid = image_patches.view(rows, cols, patch_size, patch_size, channels)
            padding = padding_value * scale + shift
            grid[rows - 1, :, resized_height - (rows - 1) * patch_size :] = padding
            grid[:, cols - 1, :, resized_width - (cols - 1) * patch_size :] = padding
            patches.append(image_patches.view(rows * cols, -1))
            grids.append((rows, cols))
            sizes.append((height, width))
            resized_sizes.append((resized_height, resized_width))
        data = {"image_patches": patches, "patch_grids": grids, "image_sizes": sizes, "resized_sizes": resized_sizes}
        return BatchFeature(data, skip_tensor_conversion=list(data))
