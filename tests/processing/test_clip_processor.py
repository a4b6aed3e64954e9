"""MosaicClipImageProcessor / MosaicClipProcessor: parity with transformers, input kinds, bad input."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mosaic_vlm.processing import MosaicClipImageProcessor, MosaicClipProcessor

SETTINGS = [{}, {"size": {"shortest_edge": 64}, "crop_size": {"height": 48, "width": 48}}]


@pytest.mark.parametrize("settings", SETTINGS, ids=["default-224", "small"])
@pytest.mark.parametrize("name", ["astronaut", "coffee", "cat", "camera"])
def test_matches_transformers_clip_image_processor(photos, name, settings):
    ours, theirs = MosaicClipImageProcessor(**settings), CLIPImageProcessorPil(**settings)
    array = photos[name]
    # transformers cannot take a 2-D grayscale array (ours can, see below): compare grayscale as PIL only
    for image in (PIL.Image.fromarray(array), array) if array.ndim == 3 else (PIL.Image.fromarray(array),):
        expected = theirs(image, return_tensors="pt")["pixel_values"]
        actual = ours(image, return_tensors="pt")["pixel_values"]
        assert actual.shape == expected.shape
        assert (actual - expected).abs().max() <= 1e-5


def test_every_input_kind_gives_the_same_pixels(photos, tmp_path):
    processor = MosaicClipImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    array = photos["coffee"]  # (400, 600, 3) uint8

    def pixels(images):
        return processor(images, return_tensors="pt")["pixel_values"]

    reference = pixels(PIL.Image.fromarray(array))
    path = tmp_path / "coffee.png"
    PIL.Image.fromarray(array).save(path)
    same = {
        "numpy HWC": array,
        "numpy CHW": array.transpose(2, 0, 1),
        "torch HWC uint8": torch.from_numpy(array),
        "torch CHW uint8": torch.from_numpy(array).permute(2, 0, 1),
        "path": path,
        "list": [array],
        "RGBA": PIL.Image.fromarray(array).convert("RGBA"),
    }
    for kind, image in same.items():
        assert torch.equal(pixels(image), reference), kind
    # floats in [0, 1] are quantised to 8 bits for PIL resampling: at most 1/255 off before normalising
    floats = array.astype(np.float32) / 255
    bound = 1 / 255 / min(processor.image_std) + 1e-6
    assert (pixels(floats) - reference).abs().max() <= bound
    assert (pixels(torch.from_numpy(floats).permute(2, 0, 1)) - reference).abs().max() <= bound
    batch = pixels(np.stack([array, array]))
    assert batch.shape == (2, 3, 32, 32) and torch.equal(batch[1:], reference)
    gray = photos["camera"]
    gray_reference = pixels(PIL.Image.fromarray(gray))
    for image in (gray, gray[..., None], gray[None], PIL.Image.fromarray(gray).convert("RGB")):
        assert torch.equal(pixels(image), gray_reference)


@pytest.mark.parametrize(
    "images, error, message",
    [
        ({"not": "an image"}, TypeError, "Unsupported image type dict"),
        (7, TypeError, "Unsupported image type int"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, "no channel axis of size 1, 3 or 4"),
        (np.zeros((5, 8, 8), np.uint8), ValueError, "no channel axis of size 1, 3 or 4"),
        (np.zeros((1, 2, 8, 8, 3), np.uint8), ValueError, "has 5 dimensions"),
        ([], ValueError, "The batch of images is empty"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "The batch of images is empty"),
        (np.full((8, 8, 3), 1.5, np.float32), ValueError, r"Float image values must lie in \[0, 1\]"),
        (np.full((8, 8, 3), -3, np.int64), ValueError, r"Integer image values must lie in \[0, 255\]"),
        ("/no/such/image.png", ValueError, "does not exist"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "is empty"),
    ],
)
def test_bad_images_raise_one_clear_error(images, error, message):
    with pytest.raises(error, match=message):
        MosaicClipImageProcessor()(images)


def test_processor_texts_images_and_round_trip(clip_processor, photos, tmp_path):
    from tiny import tiny_clip_config

    from mosaic_vlm.modeling import MosaicClipModel

    both = clip_processor(images=[photos["cat"], photos["coffee"]], text=["a photo of a cat", "a cup of coffee"])
    assert set(both) == {"input_ids", "attention_mask", "pixel_values"}
    assert both["pixel_values"].shape == (2, 3, 32, 32) and both["input_ids"].dtype == torch.long
    assert set(clip_processor(text="a photo of a dog")) == {"input_ids", "attention_mask"}
    assert set(clip_processor(images=photos["cat"])) == {"pixel_values"}
    # a text longer than the position table is truncated to model_max_length and still works in the model
    long_text = clip_processor(text=" ".join(["a photo of the digit seven"] * 20))
    assert long_text["input_ids"].shape[1] == clip_processor.tokenizer.model_max_length
    model = MosaicClipModel(tiny_clip_config()).eval()
    eos = model.config.text_config.eos_token_id
    if long_text["input_ids"][0, -1] != eos:
        with pytest.raises(ValueError, match="must contain the EOS token"):
            model.get_text_features(long_text["input_ids"])
    with torch.no_grad():
        model(**both)
    with pytest.raises(ValueError, match="needs `images`, `text`, or both"):
        clip_processor()
    with pytest.raises(ValueError, match="The batch of texts is empty"):
        clip_processor(text=[])

    clip_processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, MosaicClipProcessor)
    again = reloaded(images=[photos["cat"], photos["coffee"]], text=["a photo of a cat", "a cup of coffee"])
    for name, tensor in both.items():
        assert torch.equal(again[name], tensor), name
