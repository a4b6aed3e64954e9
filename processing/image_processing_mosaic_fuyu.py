"""Fuyu image processor on transformers' PIL backend (no torchvision): images become patch tokens.

Each image is downscaled (never upscaled) to fit `size`, keeping its aspect ratio; padded at the bottom
and right with `padding_value` (on the 0-255 scale, before rescaling, as transformers does) only up to
the next multiple of `patch_size`; rescaled and normalised (mean = std = 0.5); and cut into
`(rows * cols, patch_size * patch_size * channels)` patches in row-major order. The patch grid and the
image-token layout are pure functions of the image size (`patch_grid`, `image_token_layout`).

Accepts the same inputs as the CLIP image processor (PIL of any common mode, numpy, torch, grayscale, RGBA,
16-bit and float images, paths, batches; see `image_processing_mosaic_clip`), up to `MAX_IMAGE_PIXELS` pixels per
image. A side that the downscale would shrink below one pixel (a 1x500 image fitted into 64x64) keeps one pixel.
"""

import math
import warnings

import numpy as np
import PIL.Image
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs

from .mosaic_processing_common import images_to_pil_list


def fit_scale(height: int, width: int, max_height: int, max_width: int) -> float:
    """The factor that downscales a height x width image to fit (max_height, max_width) with its aspect ratio kept;
    1 for an image that fits (never upscaled)."""
    if height <= max_height and width <= max_width:
        return 1.0
    return min(max_height / height, max_width / width)


def fitted_size(height: int, width: int, max_height: int, max_width: int) -> tuple[int, int]:
    """The size after downscaling by `fit_scale`, truncated as transformers' Fuyu does, but no side below one pixel."""
    scale = fit_scale(height, width, max_height, max_width)
    return max(1, int(height * scale)), max(1, int(width * scale))


def patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """(rows, cols) of patches covering a height x width image padded up to whole patches."""
    if height <= 0 or width <= 0:
        raise ValueError(f"An image of size {height}x{width} has a zero-size side; it holds no patch.")
    return math.ceil(height / patch_size), math.ceil(width / patch_size)


def image_token_layout(rows: int, cols: int, image_token_id: int, newline_token_id: int) -> torch.Tensor:
    """Token ids of one image: per patch row, `cols` image tokens and then one image-newline token."""
    row = torch.tensor([image_token_id] * cols + [newline_token_id])
    return row.repeat(rows)  # (rows * (cols + 1),)


def patch_bands(size: int, patch_size: int) -> list[tuple[tuple, slice, tuple]]:
    """How one side of `size` pixels lies across patches: for the whole patches and then the remainder, each if
    non-empty, (index into the (patch, pixel) dims of the patches seen as an image, slice of the pixels, the
    shape those pixels take there)."""
    whole, remainder = divmod(size, patch_size)
    bands = []
    if whole:
        bands.append(((slice(0, whole), slice(None)), slice(0, whole * patch_size), (whole, patch_size)))
    if remainder:
        bands.append(((whole, slice(0, remainder)), slice(whole * patch_size, size), (remainder,)))
    return bands


def patchify(
    pixels: torch.Tensor, patch_size: int, dtype: torch.dtype | None = None, padding_value: float = 0.0
) -> torch.Tensor:
    """(height, width, channels) -> (rows * cols, p * p * channels) with (rows, cols) = `patch_grid`: patches in
    row-major order, each flattened as (patch row, patch column, channel), as transformers' Fuyu does; the
    bottom and right remainder is `padding_value`. Strided copies straight from the pixels, casting to `dtype`
    on the way, from HWC so that every copied run (up to p * channels values) is contiguous."""
    height, width, channels = pixels.shape
    rows, cols = patch_grid(height, width, patch_size)
    patches = torch.empty(rows, cols, patch_size, patch_size, channels, dtype=dtype or pixels.dtype)
    image_layout = patches.permute(0, 2, 1, 3, 4)  # (rows, p, cols, p, C): the patches seen as an image
    row_bands, col_bands = patch_bands(height, patch_size), patch_bands(width, patch_size)
    for row_index, pixel_rows, row_shape in row_bands:
        for col_index, pixel_cols, col_shape in col_bands:
            image_layout[(*row_index, *col_index)].copy_(
                pixels[pixel_rows, pixel_cols].reshape(*row_shape, *col_shape, channels)
            )
    patches[rows - 1, :, height - (rows - 1) * patch_size :] = padding_value
    patches[:, cols - 1, :, width - (cols - 1) * patch_size :] = padding_value
    return patches.view(rows * cols, patch_size * patch_size * channels)


def per_channel(value, channels: int, name: str) -> list[float]:
    """A number, or one number per channel (a single one is broadcast), as `channels` floats."""
    values = [float(v) for v in np.atleast_1d(value)]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(
            f"{name} has {len(values)} values for an image with {channels} channels; give 1 or {channels}."
        )
    return values


def pixel_affine(channels: int, rescale_factor: float, image_mean, image_std) -> tuple[list[float], list[float]]:
    """Rescaling and normalisation fused, per channel: ((x * rescale_factor) - mean) / std = x * scale + shift."""
    means, stds = per_channel(image_mean, channels, "image_mean"), per_channel(image_std, channels, "image_std")
    return [rescale_factor / std for std in stds], [-mean / std for mean, std in zip(means, stds)]


BYTE_MODES = ("L", "RGB", "RGBA")


def pixel_array(image: PIL.Image.Image) -> np.ndarray:
    """(height, width, bands) pixels of an image. 8-bit modes (L, RGB, RGBA) are packed by PIL's raw encoder into
    one buffer in one call: numpy's conversion goes through `tobytes`, which packs 64 KiB blocks and then joins
    them, one more copy of the image (0.45 ms of 1.1 for 1280x960 here). Other modes go through numpy."""
    if image.mode not in BYTE_MODES:
        pixels = np.asarray(image)
        return pixels if pixels.ndim == 3 else pixels[..., None]
    image.load()
    bands = len(image.mode)
    encoder = PIL.Image._getencoder(image.mode, "raw", image.mode)
    try:
        encoder.setimage(image.im, (0, 0, image.width, image.height))
        _, error_code, data = encoder.encode(image.width * image.height * bands)
    finally:
        encoder.cleanup()
    if error_code < 0:
        raise RuntimeError(
            f"PIL's raw encoder failed with code {error_code} on a {image.mode} image of size {image.size}."
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(image.height, image.width, bands)


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
    model_input_names = ["pixel_values"]
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

    def patch_grid_of(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of patches this processor makes of a height x width image, without reading one."""
        if self.do_resize:
            height, width = fitted_size(height, width, self.size["height"], self.size["width"])
        return patch_grid(height, width, self.patch_size)

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
        """Returns per image: `pixel_values`, its patches (patches, patch_dim) float32, `patch_grids` (rows, cols),
        `image_sizes` (height, width) as given and `resized_sizes` after the downscale."""
        patches, grids, sizes, resized_sizes = [], [], [], []
        for image in images:
            height, width = image.height, image.width
            patch_grid(height, width, patch_size)  # refuses a zero-size side
            if do_resize:
                new_height, new_width = fitted_size(height, width, size.height, size.width)
                if (new_height, new_width) != (height, width):
                    image = image.resize((new_width, new_height), resample=resample)
            pixels = pixel_array(image)
            resized_height, resized_width, channels = pixels.shape
            rows, cols = patch_grid(resized_height, resized_width, patch_size)
            scale, shift = pixel_affine(
                channels,
                rescale_factor if do_rescale else 1.0,
                image_mean if do_normalize else 0.0,
                image_std if do_normalize else 1.0,
            )
            # strided copies from the uint8 pixels to float32 patches, padded with padding_value on the 0-255
            # scale as transformers pads before rescaling; then one in-place pass rescales and normalises
            with warnings.catch_warnings():  # the pixels are read-only bytes; they are only read here
                warnings.simplefilter("ignore", UserWarning)
                pixel_tensor = torch.from_numpy(pixels)
            image_patches = patchify(pixel_tensor, patch_size, torch.float32, padding_value)
            if len(set(scale)) == 1 and len(set(shift)) == 1:  # scalar ops are ~3x faster
                torch.add(shift[0], image_patches, alpha=scale[0], out=image_patches)
            else:  # (patches, p * p * C) seen as (patches, p * p, C) against per-channel scale and shift
                by_channel = image_patches.view(rows * cols, patch_size * patch_size, channels)
                torch.addcmul(torch.tensor(shift), by_channel, torch.tensor(scale), out=by_channel)
            patches.append(image_patches)
            grids.append((rows, cols))
            sizes.append((height, width))
            resized_sizes.append((resized_height, resized_width))
        data = {"pixel_values": patches, "patch_grids": grids, "image_sizes": sizes, "resized_sizes": resized_sizes}
        return BatchFeature(data, skip_tensor_conversion=list(data))
