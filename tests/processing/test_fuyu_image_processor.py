"""MosaicFuyuImageProcessor: pure grid/layout functions, parity with transformers, inputs and errors."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

from mosaic_vlm.processing.image_processing_mosaic_fuyu import (
    MosaicFuyuImageProcessor,
    fitted_size,
    image_token_layout,
    patch_grid,
    patchify,
)


def test_grid_layout_and_fit_are_pure_functions_of_sizes():
    assert patch_grid(960, 1280, 30) == (32, 43)  # 1280 / 30 = 42.7: the last column is padded
    assert patch_grid(30, 30, 30) == (1, 1) and patch_grid(1, 1, 30) == (1, 1)
    assert fitted_size(960, 1280, 1080, 1920) == (960, 1280)  # fits: never upscaled
    assert fitted_size(1600, 2400, 1080, 1920) == (1080, 1620)
    assert fitted_size(3000, 1000, 1080, 1920) == (1080, 360)
    layout = image_token_layout(2, 3, image_token_id=7, newline_token_id=9)
    assert layout.tolist() == [7, 7, 7, 9, 7, 7, 7, 9]
    with pytest.raises(ValueError, match="zero-size side"):
        patch_grid(0, 10, 30)


def test_patchify_orders_patches_row_major_with_channels_last():
    pixels = torch.arange(4 * 6 * 3, dtype=torch.float32).reshape(4, 6, 3)  # (H, W, C), patch 2 -> 2 x 3 grid
    patches = patchify(pixels, 2)
    assert patches.shape == (6, 2 * 2 * 3)
    assert torch.equal(patches[1], pixels[0:2, 2:4].reshape(-1))  # row 0, column 1
    assert torch.equal(patches[3], pixels[2:4, 0:2].reshape(-1))  # row 1, column 0


def test_patchify_pads_the_remainder_and_casts():
    pixels = torch.arange(5 * 7 * 2, dtype=torch.uint8).reshape(
        5, 7, 2
    )  # patch 3 -> 2 x 3 grid, 1 and 2 pixels padded
    patches = patchify(pixels, 3, torch.float32, padding_value=-1.0)
    canvas = torch.full((6, 9, 2), -1.0)
    canvas[:5, :7] = pixels
    assert patches.dtype == torch.float32 and patches.shape == (6, 3 * 3 * 2)
    assert torch.equal(patches, patchify(canvas, 3))
    assert torch.equal(
        patchify(pixels[:2, :2], 3, padding_value=9)[0].view(3, 3, 2)[2], torch.full((3, 2), 9, dtype=torch.uint8)
    )


def transformers_patches(image, patch_grid_shape, patch_size=30, **kwargs):
    """transformers' padded canvas, cropped to the unpadded patch grid and patchified."""
    canvas = np.asarray(FuyuImageProcessorPil(**kwargs)(image, return_tensors="np")["images"][0][0])
    rows, cols = patch_grid_shape
    cropped = np.moveaxis(canvas[:, : rows * patch_size, : cols * patch_size], 0, -1).astype(np.float32)
    return patchify(torch.from_numpy(np.ascontiguousarray(cropped)), patch_size)


@pytest.mark.parametrize(
    "name, size",
    [("astronaut", None), ("coffee", None), ("astronaut", (1280, 960)), ("coffee", (2400, 1600)), ("cat", (17, 20))],
)
def test_matches_transformers_fuyu_image_processor(photos, name, size):
    image = PIL.Image.fromarray(photos[name])
    if size is not None:
        image = image.resize(size, PIL.Image.BICUBIC)
    outputs = MosaicFuyuImageProcessor()(image)
    expected = transformers_patches(image, outputs["patch_grids"][0])
    assert outputs["pixel_values"][0].shape == expected.shape
    assert (outputs["pixel_values"][0] - expected).abs().max() <= 1e-6
    height, width = outputs["resized_sizes"][0]
    assert outputs["patch_grids"][0] == patch_grid(height, width, 30)
    assert outputs["image_sizes"][0] == (image.height, image.width)


def test_per_channel_normalisation_and_padding_value_match_transformers(photos):
    settings = {"image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25], "padding_value": 7.0}
    image = PIL.Image.fromarray(photos["coffee"]).resize((301, 157), PIL.Image.BICUBIC)
    outputs = MosaicFuyuImageProcessor(**settings)(image)
    expected = transformers_patches(image, outputs["patch_grids"][0], **settings)
    assert (outputs["pixel_values"][0] - expected).abs().max() <= 1e-6


def test_inputs_of_every_kind_and_batches(photos):
    processor = MosaicFuyuImageProcessor(patch_size=16, size={"height": 128, "width": 128})
    array = photos["coffee"]
    reference = processor(PIL.Image.fromarray(array))["pixel_values"][0]
    for image in (
        array,
        array.transpose(2, 0, 1),
        torch.from_numpy(array),
        PIL.Image.fromarray(array).convert("RGBA"),
    ):
        assert torch.equal(processor(image)["pixel_values"][0], reference)
    batch = processor([photos["coffee"], photos["camera"]])
    assert len(batch["pixel_values"]) == 2 and batch["patch_grids"][1] == (8, 8)
    assert batch["pixel_values"][1].shape == (64, 16 * 16 * 3)  # grayscale converted to RGB


def test_without_rgb_conversion_every_mode_keeps_its_pixels_and_bands(photos, tmp_path):
    processor = MosaicFuyuImageProcessor(patch_size=16, do_convert_rgb=False, image_mean=0.25, image_std=0.5)
    rgb = PIL.Image.fromarray(photos["coffee"]).resize((64, 48))
    rgb.save(tmp_path / "coffee.png")
    lazily_loaded = PIL.Image.open(tmp_path / "coffee.png")  # pixels are read only when processed
    for image in (rgb.convert("L"), rgb.convert("RGBA"), lazily_loaded):
        pixels = np.asarray(image).astype(np.float32).reshape(48, 64, -1)
        expected = patchify(torch.from_numpy((pixels / 255 - 0.25) / 0.5), 16)
        patches = processor(image)["pixel_values"][0]
        assert patches.shape == (12, 16 * 16 * len(image.getbands())), image.mode
        assert (patches - expected).abs().max() <= 1e-5, image.mode
    # 16-bit, 32-bit integer and float modes are read by their range (65535 for I;16 and I, [0, 1] for F) as 8-bit
    gray = np.asarray(rgb.convert("L"))
    expected = patchify(torch.from_numpy((gray[..., None].astype(np.float32) / 255 - 0.25) / 0.5), 16)
    sixteen_bit = gray.astype(np.uint16) * 257  # 255 -> 65535
    for image in (
        PIL.Image.fromarray(sixteen_bit),
        PIL.Image.fromarray(sixteen_bit).convert("I"),
        PIL.Image.fromarray(gray.astype(np.float32) / 255),
    ):
        assert (processor(image)["pixel_values"][0] - expected).abs().max() <= 1e-5, image.mode


def test_bad_images_raise_one_clear_error():
    processor = MosaicFuyuImageProcessor()
    with pytest.raises(ValueError, match="is empty"):
        processor(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="The batch of images is empty"):
        processor([])
    with pytest.raises(TypeError, match="Unsupported image type"):
        processor(b"not an image")
    with pytest.raises(ValueError, match="image_mean has 2 values for an image with 3 channels"):
        MosaicFuyuImageProcessor(image_mean=[0.5, 0.5])(np.zeros((40, 40, 3), np.uint8))


def test_save_and_load_with_auto_image_processor(tmp_path, photos):
    from transformers import AutoImageProcessor

    from mosaic_vlm.modeling import MosaicFuyuConfig

    processor = MosaicFuyuImageProcessor(patch_size=16, size={"height": 256, "width": 256}, padding_value=3.0)
    processor.save_pretrained(tmp_path)
    MosaicFuyuConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_token_id=10,
        image_newline_token_id=11,
    ).save_pretrained(tmp_path)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, MosaicFuyuImageProcessor)
    assert (reloaded.patch_size, reloaded.padding_value) == (16, 3.0)
    for a, b in zip(processor(photos["coffee"])["pixel_values"], reloaded(photos["coffee"])["pixel_values"]):
        assert torch.equal(a, b)
