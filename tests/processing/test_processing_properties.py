"""Property-based tests (hypothesis) of both image processors and both processors.

Images of drawn sizes, PIL modes, dtypes, layouts and value ranges, and texts drawn with special tokens,
placeholders, coordinate tags, newlines and lone surrogates mixed in: nothing but ValueError or TypeError is
ever raised, every valid image is processed, and what comes out keeps its invariants (CLIP's pixel range,
Fuyu's patch grid, padding and pixel range, the image-token/newline layout of a prompt).
"""

import functools
from dataclasses import dataclass

import hypothesis.strategies as st
import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from mosaic_vlm.processing import (
    MosaicClipImageProcessor,
    MosaicClipProcessor,
    MosaicFuyuImageProcessor,
    MosaicFuyuProcessor,
    train_bpe_tokenizer,
)
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS
from mosaic_vlm.processing.image_processing_mosaic_fuyu import fitted_size, image_token_layout, patch_grid

# modest and reproducible: the whole file runs in well under a minute on two cores
PROPERTY = settings(max_examples=120, deadline=None, database=None, derandomize=True)
PATCH, FIT = 16, 64  # the Fuyu processors' patch size and the size images are fitted into (FIT x FIT)
CROP = 32  # the CLIP processors' shortest edge and crop

EIGHT_BIT_MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]
DTYPES = ["uint8", "uint16", "int64", "bool", "float16", "float32", "float64", "bfloat16"]
LAYOUTS = {"HW": (), "HWC1": (1,), "HWC3": (3,), "HWC4": (4,), "CHW1": (1,), "CHW3": (3,)}


@dataclass
class Drawn:
    """A drawn image and whether the processors must take it (False: they must refuse it clearly)."""

    image: object
    valid: bool
    what: str


@st.composite
def images(draw) -> Drawn:
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    if draw(st.integers(0, 4)) == 0:  # now and then a thin strip
        height, width = draw(st.sampled_from([(1, draw(st.integers(41, 600))), (draw(st.integers(41, 600)), 1)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    in_range = draw(st.integers(0, 3)) > 0

    def with_one_value_out_of_range(values: np.ndarray, outside: list[float]) -> np.ndarray:
        if not in_range:
            values.flat[rng.integers(values.size)] = draw(st.sampled_from(outside))
        return values

    kind = draw(st.sampled_from(["pil", "numpy", "torch"]))
    what = f"{kind} {height}x{width} {'in' if in_range else 'out of'} range"
    if kind == "pil":
        mode = draw(st.sampled_from([*EIGHT_BIT_MODES, "I;16", "I;16B", "I", "F"]))
        what += f" mode {mode}"
        if mode in EIGHT_BIT_MODES:
            rgba = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8))
            return Drawn(rgba.convert(mode), True, what)
        if mode in ("I;16", "I;16B"):
            values = rng.integers(0, 65536, (height, width)).astype(">u2" if mode == "I;16B" else "<u2")
            return Drawn(PIL.Image.frombytes(mode, (width, height), values.tobytes()), True, what)
        if mode == "I":
            values = with_one_value_out_of_range(rng.integers(0, 65536, (height, width), dtype=np.int32), [-1, 65536])
            return Drawn(PIL.Image.fromarray(values), in_range, what)
        values = with_one_value_out_of_range(rng.random((height, width), dtype=np.float32), [-0.5, 255, np.nan])
        return Drawn(PIL.Image.fromarray(values), in_range, what)
    dtype, layout = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(list(LAYOUTS)))
    what += f" {dtype} {layout}"
    shape = (*LAYOUTS[layout], height, width) if layout.startswith("CHW") else (height, width, *LAYOUTS[layout])
    if dtype in ("uint8", "bool"):
        values, valid = rng.integers(0, 256, shape), dtype == "uint8"
    elif dtype == "uint16":
        values, valid = rng.integers(0, 65536, shape), True
    elif dtype == "int64":
        values, valid = with_one_value_out_of_range(rng.integers(0, 256, shape), [-3, 256, 70_000]), in_range
    else:
        values, valid = with_one_value_out_of_range(rng.random(shape), [-0.25, 1.5, np.nan, np.inf]), in_range
    if dtype == "bfloat16":
        return Drawn(torch.from_numpy(values).to(torch.bfloat16), valid, what)
    array = values.astype(dtype) if dtype != "bool" else values > 127
    return Drawn(torch.from_numpy(array) if kind == "torch" else array, valid, what)


FRAGMENTS = [
    "what digit",
    " is this?",
    "\n",
    "  ",
    "<image>",
    "<box>1, 2, 3, 4</box>",
    "<point>5, 6</point>",
    "<box>",
    "</point>",
    "\ud800",
    "é",
    "🙂",
    "<s>",
    "</s>",
    *FUYU_SPECIAL_TOKENS,
]
messy_texts = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(st.characters(exclude_categories=()), max_size=6)), max_size=6
).map("".join)
texts = st.one_of(st.sampled_from(["what digit is this?", "", " a photo\n", "<image> is this a cat?"]), messy_texts)


@functools.cache
def clip_processor() -> MosaicClipProcessor:
    tokenizer = train_bpe_tokenizer(
        ["what digit is this?", "a photo of a cat"] * 4, vocab_size=80, model_max_length=16
    )
    image_processor = MosaicClipImageProcessor(size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP})
    return MosaicClipProcessor(image_processor=image_processor, tokenizer=tokenizer)


@functools.cache
def fuyu_processor() -> MosaicFuyuProcessor:
    tokenizer = train_bpe_tokenizer(
        ["what digit is this?", "a photo of a cat"] * 4,
        vocab_size=80,
        model_max_length=512,
        extra_special_tokens=list(FUYU_SPECIAL_TOKENS),
    )
    image_processor = MosaicFuyuImageProcessor(patch_size=PATCH, size={"height": FIT, "width": FIT})
    return MosaicFuyuProcessor(image_processor=image_processor, tokenizer=tokenizer)


def processed_or_refused(function, drawn: Drawn):
    """`function(drawn.image)`, or None where it raised ValueError/TypeError, which it must for an invalid image
    (any other exception fails the test)."""
    try:
        result = function(drawn.image)
    except (ValueError, TypeError):
        assert not drawn.valid, f"a valid image was refused: {drawn.what}"
        return None
    assert drawn.valid, f"an invalid image was taken: {drawn.what}"
    return result


@PROPERTY
@given(drawn=images())
def test_clip_image_processor_keeps_the_pixel_range(drawn):
    outputs = processed_or_refused(lambda image: clip_processor().image_processor(image, return_tensors="pt"), drawn)
    if outputs is None:
        return
    pixel_values = outputs["pixel_values"]
    assert pixel_values.shape == (1, 3, CROP, CROP) and torch.isfinite(pixel_values).all()
    mean, std = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None], torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    values = pixel_values[0] * std + mean  # back to [0, 1]
    assert values.min() >= -1e-5 and values.max() <= 1 + 1e-5


@PROPERTY
@given(drawn=images())
def test_fuyu_image_processor_keeps_grid_padding_and_pixel_range(drawn):
    outputs = processed_or_refused(fuyu_processor().image_processor, drawn)
    if outputs is None:
        return
    (height, width), (resized_height, resized_width) = outputs["image_sizes"][0], outputs["resized_sizes"][0]
    assert (resized_height, resized_width) == fitted_size(height, width, FIT, FIT)
    assert 1 <= resized_height <= FIT and 1 <= resized_width <= FIT
    rows, cols = outputs["patch_grids"][0]
    assert (rows, cols) == patch_grid(resized_height, resized_width, PATCH)
    patches = outputs["pixel_values"][0]
    assert patches.shape == (rows * cols, PATCH * PATCH * 3) and patches.dtype == torch.float32
    assert torch.isfinite(patches).all() and patches.min() >= -1 - 1e-6 and patches.max() <= 1 + 1e-6
    # the patches seen as one image again: (rows, p, cols, p, 3) -> (rows * p, cols * p, 3)
    canvas = patches.view(rows, cols, PATCH, PATCH, 3).permute(0, 2, 1, 3, 4).reshape(rows * PATCH, cols * PATCH, 3)
    padding = (1.0 / 255 - 0.5) / 0.5  # padding_value 1 on the 0-255 scale, rescaled and normalised
    assert torch.all(canvas[resized_height:] == padding) and torch.all(canvas[:, resized_width:] == padding)


@PROPERTY
@given(drawn=images(), prompt=texts)
def test_fuyu_processor_lays_out_image_tokens_and_newlines(drawn, prompt):
    processor = fuyu_processor()
    try:
        outputs = processor(images=drawn.image, text=prompt)
    except (ValueError, TypeError):
        return
    assert drawn.valid, f"an invalid image was taken: {drawn.what}"
    tokenizer = processor.tokenizer
    image_token, newline, answer = tokenizer.convert_tokens_to_ids(["|SPEAKER|", "|NEWLINE|", "<0x04>"])
    input_ids = outputs["input_ids"][0]
    rows, cols = processor.image_processor(drawn.image)["patch_grids"][0]
    # the image tokens and newlines, in order, are the image's layout: cols image tokens then a newline, per row
    image_ids = input_ids[(input_ids == image_token) | (input_ids == newline)]
    assert torch.equal(image_ids, image_token_layout(rows, cols, image_token, newline))
    in_one_block = input_ids[input_ids.tolist().index(image_token) :][: rows * (cols + 1)]
    assert torch.equal(in_one_block, image_ids)  # one contiguous block
    assert outputs["image_patches_mask"].sum() == rows * cols == (input_ids == image_token).sum()
    assert (input_ids == tokenizer.bos_token_id).sum() == 1 and input_ids[-1] == answer
    assert (input_ids == answer).sum() == 1 and outputs["attention_mask"].all()
    if "<image>" not in prompt:  # one image without a placeholder goes first, then BOS
        assert input_ids[rows * (cols + 1)] == tokenizer.bos_token_id


@PROPERTY
@given(first=images(), second=images(), prompts=st.lists(texts, min_size=2, max_size=2))
def test_fuyu_processor_batches_give_each_prompt_its_image(first, second, prompts):
    processor = fuyu_processor()
    try:
        outputs = processor(images=[first.image, second.image], text=prompts)
    except (ValueError, TypeError):
        return
    assert first.valid and second.valid
    image_token = processor.tokenizer.convert_tokens_to_ids("|SPEAKER|")
    for row, drawn in enumerate((first, second)):
        rows, cols = processor.image_processor(drawn.image)["patch_grids"][0]
        assert (
            (outputs["input_ids"][row] == image_token).sum() == rows * cols == outputs["image_patches_mask"][row].sum()
        )
        real = outputs["attention_mask"][row].bool()
        assert not real.any() or real[real.nonzero()[0, 0] :].all()  # left padding: the mask is 0...0 1...1


@PROPERTY
@given(text_batch=st.lists(texts, min_size=1, max_size=3))
def test_clip_processor_refuses_or_ends_each_text_with_one_eos(text_batch):
    processor = clip_processor()
    try:
        outputs = processor(text=text_batch)
    except (ValueError, TypeError):
        return
    tokenizer = processor.tokenizer
    input_ids = outputs["input_ids"]
    assert input_ids.shape[0] == len(text_batch) and input_ids.shape[1] <= tokenizer.model_max_length
    assert ((input_ids == tokenizer.eos_token_id).sum(-1) <= 1).all()  # no typed EOS for the model to pool at
    for text in text_batch:
        text.encode("utf-8")  # lone surrogates were refused


@pytest.mark.parametrize("mode", [*EIGHT_BIT_MODES, "I;16", "I;16B", "I", "F"])
def test_every_pil_mode_is_taken_by_both_image_processors(mode):
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 7, 4), dtype=np.uint8)).convert(mode)
    if mode == "F":  # floats must be in [0, 1]
        image = PIL.Image.fromarray(np.asarray(image) / np.float32(255))
    assert clip_processor().image_processor(image, return_tensors="pt")["pixel_values"].shape == (1, 3, CROP, CROP)
    assert fuyu_processor().image_processor(image)["pixel_values"][0].shape == (1, PATCH * PATCH * 3)
