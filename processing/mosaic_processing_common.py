"""What both families' processing shares: images read in every accepted form, texts checked, and the
processor base for remote code.

Accepted inputs, one image or a batch (a list, a list of lists with one list per prompt, some of them possibly
empty, or a 4-D array/tensor):
- PIL images. 8-bit modes (1, L, LA, La, P, PA, RGB, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV) as they are;
  16-bit modes (I;16, I;16L, I;16B, I;16N) scaled by 65535; mode I (32-bit integers, which is how Pillow
  reads some 16-bit files) must hold values in [0, 65535] and is scaled like 16-bit; mode F (32-bit floats)
  must hold values in [0, 1], like float arrays. Deeper modes are quantised to 8 bits, as float arrays are;
- numpy arrays and torch tensors, HWC or CHW with 1, 3 or 4 channels, or 2-D grayscale: uint16 values in
  [0, 65535], other integers in [0, 255], floats (float16, bfloat16, float32, float64) in [0, 1];
- paths to image files.
No image may have more than `MAX_IMAGE_PIXELS` pixels (Pillow's own decompression-bomb limit): larger
images, and image files that Pillow flags as decompression bombs, are refused before their pixels are
read or copied. Neither may resizing make one that large (a very elongated image, shortest edge resized).
"""

import os
import warnings
from collections.abc import Iterable

import numpy as np
import PIL.Image
import torch
from transformers.processing_utils import ProcessorMixin

MAX_IMAGE_PIXELS = 89_478_485  # the most pixels an image may have: PIL.Image.MAX_IMAGE_PIXELS' default
ACCEPTED_IMAGES = (
    "a PIL.Image.Image, a numpy array or torch tensor (HWC or CHW with 1, 3 or 4 channels, or 2-D grayscale; "
    "uint8 in [0, 255], uint16 in [0, 65535] or float in [0, 1]), a path to an image file, or a list of those"
)
EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
REPLACED_MODES = {"La": "LA", "1": "L"}
PIL_READ_ERRORS = (OSError, SyntaxError, EOFError)  # what Pillow raises for a file it cannot read


def check_pixel_count(height: int, width: int, what: str = "Image") -> None:
    """Refuses an image with an empty side or more than MAX_IMAGE_PIXELS pixels."""
    if height <= 0 or width <= 0:
        raise ValueError(f"{what} of size {height}x{width} (height x width) is empty.")
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{what} of size {height}x{width} has {height * width} pixels, more than MAX_IMAGE_PIXELS = "
            f"{MAX_IMAGE_PIXELS}; downscale it first."
        )


def _channels_last(array):
    """One image array or tensor (2-D, HWC or CHW) as a (height, width) or (height, width, channels) view."""
    if array.ndim == 3:
        if array.shape[-1] not in (1, 3, 4):  # not HWC: must be CHW
            if array.shape[0] not in (1, 3, 4):
                raise ValueError(
                    f"Image of shape {tuple(array.shape)} has no channel axis of size 1, 3 or 4; "
                    f"expected {ACCEPTED_IMAGES}."
                )
            # CHW -> HWC
            array = array.permute(1, 2, 0) if isinstance(array, torch.Tensor) else np.moveaxis(array, 0, -1)
        if array.shape[-1] == 1:
            array = array[..., 0]  # (H, W, 1) -> (H, W) grayscale
    elif array.ndim != 2:
        raise ValueError(
            f"Image of shape {tuple(array.shape)} has {array.ndim} dimensions; expected {ACCEPTED_IMAGES}."
        )
    return array


def _to_numpy(image) -> np.ndarray:
    """One image array or tensor, checked for layout and size before anything is copied, as an HWC or 2-D numpy
    array. Float tensors go to float32 (numpy has no bfloat16)."""
    image = _channels_last(image)
    check_pixel_count(image.shape[0], image.shape[1])
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        return (image.float() if image.is_floating_point() else image).numpy()
    return image


def _array_to_pil(array: np.ndarray) -> PIL.Image.Image:
    """One HWC or 2-D image array as an 8-bit PIL image, after checking its dtype and value range."""
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"Image of dtype {array.dtype} is not accepted; expected {ACCEPTED_IMAGES}.")
    if array.dtype == np.uint16:
        array = array / np.float32(65535)  # 16-bit -> [0, 1]
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"Float image values must lie in [0, 1], got [{array.min()}, {array.max()}]; "
                "pass uint8 for values in [0, 255]."
            )
        array = np.round(array * 255)
    elif array.min() < 0 or array.max() > 255:
        raise ValueError(
            f"Integer image values must lie in [0, 255], got [{array.min()}, {array.max()}]; pass uint16 for "
            "values in [0, 65535]."
        )
    return PIL.Image.fromarray(array.astype(np.uint8))


def _pil_to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """A PIL image in an 8-bit mode: 16-bit, I and F images scaled by their range (see the module docstring)."""
    check_pixel_count(image.height, image.width)
    if image.mode in EIGHT_BIT_MODES:
        # Pillow converts La to LA only; 1 (booleans) becomes 0 / 255 so that it reads right unconverted too
        return image.convert(REPLACED_MODES[image.mode]) if image.mode in REPLACED_MODES else image
    if image.mode in SIXTEEN_BIT_MODES:
        return _array_to_pil(np.asarray(image).astype(np.uint16))  # I;16B etc. -> native byte order
    if image.mode == "I":
        pixels = np.asarray(image)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise ValueError(
                f"PIL mode I images are read as 16-bit and must hold values in [0, 65535], got "
                f"[{pixels.min()}, {pixels.max()}]."
            )
        return _array_to_pil(pixels.astype(np.uint16))
    if image.mode == "F":
        return _array_to_pil(np.asarray(image))
    raise ValueError(
        f"PIL images of mode {image.mode} are not accepted; accepted modes: {', '.join(EIGHT_BIT_MODES)}, "
        f"{', '.join(SIXTEEN_BIT_MODES)}, I and F."
    )


def open_image(source, where: str) -> PIL.Image.Image:
    """The image in a file (a path or a binary file object), opened lazily: its header is read and its size
    checked, its pixels not yet read. Pillow's decompression-bomb refusal becomes our too-large error; files that
    Pillow cannot read raise one of PIL_READ_ERRORS. `where` names the image in errors."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above its limit (ours) and refuses above twice its limit
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(source)
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(f"{where} has more than MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} pixels ({error}).") from None
    try:
        check_pixel_count(image.height, image.width, where)
    except ValueError:
        image.close()
        raise
    return image


def read_image_file(path) -> PIL.Image.Image:
    where = f"Image file {os.fspath(path)!r}"
    if not os.path.isfile(path):
        raise ValueError(f"{where} does not exist.")
    try:
        with open_image(path, where) as image:
            return image.copy()  # reads the pixels
    except PIL_READ_ERRORS as error:
        raise ValueError(f"{where} cannot be read as an image: {error}") from None


def _flat_pil_list(images) -> list[PIL.Image.Image]:
    """Any accepted single image or batch, nested lists flattened, as a flat list of PIL images in 8-bit modes."""
    if isinstance(images, (list, tuple)):
        return [pil for image in images for pil in _flat_pil_list(image)]
    if isinstance(images, PIL.Image.Image):
        return [_pil_to_8bit(images)]
    if isinstance(images, (str, os.PathLike)):
        return [_pil_to_8bit(read_image_file(images))]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            return [_array_to_pil(_to_numpy(image)) for image in images]
        return [_array_to_pil(_to_numpy(images))]
    raise TypeError(f"Unsupported image type {type(images).__name__}; expected {ACCEPTED_IMAGES}.")


def images_to_pil_list(images) -> list[PIL.Image.Image]:
    """Any accepted single image or batch as a non-empty flat list of PIL images in 8-bit modes. A batch may be
    nested (one list per prompt, as transformers' processors take it), and some of its lists may be empty (a
    prompt without an image), but not all of them."""
    pil_images = _flat_pil_list(images)
    if not pil_images:
        raise ValueError(f"The batch of images is empty; expected {ACCEPTED_IMAGES}.")
    return pil_images


def check_texts(texts, what: str, special_tokens: Iterable[str]) -> list[str]:
    """`texts` (one string or a list of them) as a list, each checked to be a string of valid Unicode (no lone
    surrogate such as "\\ud800") without any of `special_tokens` typed into it. `what` names a text in errors."""
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, (list, tuple)):
        raise TypeError(f"Got a {type(texts).__name__} for the {what.lower()}s; pass a string or a list of strings.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what} {index} is a {type(text).__name__}; pass a string or a list of strings.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{what} {index} is not valid Unicode: {text[error.start : error.end]!r} at position {error.start} "
                f"({error.reason}); pass text that encodes as UTF-8."
            ) from None
        typed = [token for token in special_tokens if token and token in text]
        if typed:
            raise ValueError(
                f"{what} {index} contains {typed[0]!r}, a special token that the processor places itself (typed in, "
                "it would be read as the real token); remove it from the text."
            )
    return list(texts)


class MosaicProcessorMixin(ProcessorMixin):
    """ProcessorMixin for processors registered for remote code (both families' processors)."""

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """ProcessorMixin.save_pretrained. For a class registered for remote code, transformers' `custom_object_save`
        sets `auto_map` on the processor itself to write it into processor_config.json; it is taken off again, as a
        processor never holds it otherwise (`from_pretrained` drops it), so saving leaves the processor unchanged."""
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            self.__dict__.pop("auto_map", None)


def wants_mm_token_type_ids(call_kwargs: dict) -> bool:
    """Whether a processor call asks for `mm_token_type_ids`: flat, or among its text kwargs (transformers 5.25
    reads the flag at the processor's level, 5.23 among the text kwargs)."""
    return bool(
        call_kwargs.get("return_mm_token_type_ids")
        or call_kwargs.get("text_kwargs", {}).get("return_mm_token_type_ids")
    )
