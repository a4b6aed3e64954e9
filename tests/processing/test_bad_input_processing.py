"""Bad input to the processing room gets one clear error: the rows of the table in `bad_input.py`."""

import functools
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from bad_input import Case, check_case

from mosaic_vlm.processing import (
    MAX_IMAGE_PIXELS,
    MosaicClipImageProcessor,
    MosaicClipProcessor,
    MosaicFuyuImageProcessor,
    MosaicFuyuProcessor,
    train_bpe_tokenizer,
)
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS

# ---------------------------------------------------------------------------------------------- builders

TEXTS = ["what digit is this?", "seven", "three", "a photo of a cat", "describe it"]


@functools.cache
def clip_image_processor() -> MosaicClipImageProcessor:
    return MosaicClipImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@functools.cache
def fuyu_image_processor() -> MosaicFuyuImageProcessor:
    return MosaicFuyuImageProcessor(patch_size=16, size={"height": 64, "width": 64})


@functools.cache
def clip_processor() -> MosaicClipProcessor:
    tokenizer = train_bpe_tokenizer(TEXTS * 4, vocab_size=100, model_max_length=24)
    return MosaicClipProcessor(image_processor=clip_image_processor(), tokenizer=tokenizer)


@functools.cache
def fuyu_processor(pad_token: bool = True, bos_token: bool = True) -> MosaicFuyuProcessor:
    tokenizer = train_bpe_tokenizer(
        TEXTS * 4, vocab_size=100, model_max_length=256, extra_special_tokens=list(FUYU_SPECIAL_TOKENS)
    )
    if not pad_token:
        tokenizer.pad_token = None
    if not bos_token:
        tokenizer.bos_token = None
    return MosaicFuyuProcessor(image_processor=fuyu_image_processor(), tokenizer=tokenizer)


def pixels(processor_name: str, image) -> torch.Tensor:
    """What an image processor makes of one image: CLIP's pixel values, or Fuyu's patches."""
    if processor_name == "clip":
        return clip_image_processor()(image, return_tensors="pt")["pixel_values"]
    return fuyu_image_processor()(image)["pixel_values"][0]


def gradient() -> np.ndarray:
    """A 20x30 uint8 image whose values cover 0-255."""
    return np.linspace(0, 255, 20 * 30).round().astype(np.uint8).reshape(20, 30)


GRADIENT_16_BIT = gradient().astype(np.uint16) * 257  # 255 -> 65535: the same image in 16 bits


def same_as_gradient(processor_name: str, rgb: bool = False) -> Callable[[torch.Tensor], bool]:
    """True of pixels within one 8-bit step of what the 8-bit gradient gives."""
    reference = PIL.Image.fromarray(gradient())
    expected = pixels(processor_name, reference.convert("RGB") if rgb else reference)
    step = 1 / 255 / 0.26 + 1e-6  # one 8-bit step over the smallest std (CLIP's)
    return lambda actual: actual.shape == expected.shape and bool((actual - expected).abs().max() <= step)


def png_header(path: Path, height: int, width: int) -> str:
    """A PNG file that claims height x width 1-bit pixels but holds none: opening it reads only the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return str(path)


def lazily_opened(path: str) -> PIL.Image.Image:
    with warnings.catch_warnings():  # Pillow warns about the size as it opens the file
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
        return PIL.Image.open(path)


def text_file(path: Path) -> str:
    path.write_text("not an image")
    return str(path)


def each_row_has_its_image(outputs) -> bool:
    image_token = fuyu_processor().tokenizer.convert_tokens_to_ids("|SPEAKER|")
    return (
        outputs["image_patches_mask"].sum(-1).tolist() == [4, 4]  # 20x30 in 16-pixel patches: 2x2 each
        and (outputs["input_ids"] == image_token).sum(-1).tolist() == [4, 4]
    )


def left_padded_with_eos(outputs) -> bool:
    eos = fuyu_processor(pad_token=False).tokenizer.eos_token_id
    mask, input_ids = outputs["attention_mask"], outputs["input_ids"]
    return bool(mask[0].all()) and mask[1, 0] == 0 and input_ids[1, 0] == eos


# ---------------------------------------------------------------------------------------------- processing

CASES: list[Case] = []
for name in ("clip", "fuyu"):  # the same inputs to both image processors
    image = functools.partial(pixels, name)
    CASES += [
        Case(f"{name}-image-0x0", lambda _, f=image: f(PIL.Image.new("RGB", (0, 0))), ValueError, "0x0 .* is empty"),
        Case(f"{name}-array-0-rows", lambda _, f=image: f(np.zeros((0, 8, 3), np.uint8)), ValueError, "is empty"),
        Case(
            f"{name}-image-1x500",
            lambda _, f=image: f(PIL.Image.new("RGB", (500, 1), (10, 200, 30))),
            check=lambda out: out.numel() > 0 and bool(torch.isfinite(out).all()),
        ),
        Case(
            f"{name}-I;16-scaled-by-65535",
            lambda _, f=image: f(PIL.Image.fromarray(GRADIENT_16_BIT)),
            check=same_as_gradient(name),
        ),
        Case(
            f"{name}-I;16B-scaled-by-65535",
            lambda _, f=image: f(PIL.Image.frombytes("I;16B", (30, 20), GRADIENT_16_BIT.astype(">u2").tobytes())),
            check=same_as_gradient(name),
        ),
        Case(
            f"{name}-I-read-as-16-bit",
            lambda _, f=image: f(PIL.Image.fromarray(GRADIENT_16_BIT.astype(np.int32))),
            check=same_as_gradient(name),
        ),
        Case(
            f"{name}-I-beyond-16-bit",
            lambda _, f=image: f(PIL.Image.fromarray(np.full((8, 8), 70_000, np.int32))),
            ValueError,
            r"mode I images are read as 16-bit and must hold values in \[0, 65535\], got \[70000, 70000\]",
        ),
        Case(
            f"{name}-F-in-0-1",
            lambda _, f=image: f(PIL.Image.fromarray(gradient().astype(np.float32) / 255)),
            check=same_as_gradient(name),
        ),
        Case(
            f"{name}-F-in-0-255",
            lambda _, f=image: f(PIL.Image.fromarray(gradient().astype(np.float32))),
            ValueError,
            r"Float image values must lie in \[0, 1\], got \[0.0, 255.0\]",
        ),
        Case(f"{name}-uint16-array", lambda _, f=image: f(GRADIENT_16_BIT), check=same_as_gradient(name)),
        Case(
            f"{name}-bf16-tensor",  # bf16 holds 8 significant bits: within one 8-bit step
            lambda _, f=image: f(torch.from_numpy(gradient() / 255).to(torch.bfloat16)),
            check=same_as_gradient(name),
        ),
        Case(
            f"{name}-fp16-tensor-CHW",
            lambda _, f=image: f(torch.from_numpy(gradient() / 255).half().expand(3, -1, -1)),
            check=same_as_gradient(name, rgb=True),
        ),
        Case(
            f"{name}-bf16-tensor-above-1",
            lambda _, f=image: f(torch.full((8, 8, 3), 2.0, dtype=torch.bfloat16)),
            ValueError,
            r"Float image values must lie in \[0, 1\], got \[2.0, 2.0\]",
        ),
        Case(
            f"{name}-array-above-pixel-limit",
            lambda _, f=image: f(np.broadcast_to(np.uint8(0), (10_000, 10_000, 3))),  # no memory behind it
            ValueError,
            f"10000x10000 has 100000000 pixels, more than MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}; downscale it",
        ),
        Case(
            f"{name}-lazy-image-above-pixel-limit",  # refused before its pixels are read
            lambda tmp, f=image: f(lazily_opened(png_header(tmp / "big.png", 10_000, 10_000))),
            ValueError,
            "10000x10000 has 100000000 pixels, more than MAX_IMAGE_PIXELS",
        ),
        Case(
            f"{name}-png-path-pillow-warns",  # Pillow's DecompressionBombWarning
            lambda tmp, f=image: f(png_header(tmp / "big.png", 10_000, 10_000)),
            ValueError,
            "Image file '.*big.png' of size 10000x10000 has 100000000 pixels, more than MAX_IMAGE_PIXELS",
        ),
        Case(
            f"{name}-png-path-pillow-refuses",  # Pillow's DecompressionBombError
            lambda tmp, f=image: f(png_header(tmp / "bomb.png", 20_000, 20_000)),
            ValueError,
            "Image file '.*bomb.png' has more than MAX_IMAGE_PIXELS",
        ),
        Case(
            f"{name}-path-not-an-image",
            lambda tmp, f=image: f(text_file(tmp / "notes.png")),
            ValueError,
            "Image file '.*notes.png' cannot be read as an image",
        ),
        Case(f"{name}-path-missing", lambda tmp, f=image: f(tmp / "none.png"), ValueError, "none.png' does not exist"),
        Case(
            f"{name}-complex-array",
            lambda _, f=image: f(np.zeros((8, 8, 3), np.complex64)),
            ValueError,
            "Image of dtype complex64 is not accepted",
        ),
        Case(f"{name}-bytes", lambda _, f=image: f(b"\x89PNG"), TypeError, "Unsupported image type bytes"),
    ]

CASES += [
    Case(
        "clip-too-elongated-to-resize",
        lambda _: pixels("clip", np.broadcast_to(np.uint8(0), (1, 3_000_000, 3))),
        ValueError,
        "would be 3072000000 pixels with its shortest edge resized to 32, more than MAX_IMAGE_PIXELS",
    ),
    Case(
        "fuyu-image-1x500-keeps-one-row",
        lambda _: fuyu_image_processor()(PIL.Image.new("RGB", (500, 1))),
        check=lambda out: out["resized_sizes"][0] == (1, 64) and out["patch_grids"][0] == (1, 4),
    ),
    # the CLIP processor
    Case(
        "clip-text-eos-typed",  # the model pools at the first EOS: the rest would be ignored
        lambda _: clip_processor()(text=["a photo of a cat", "a cat</s> and more"]),
        ValueError,
        "Text 1 contains '</s>', a special token",
    ),
    Case("clip-text-bos-typed", lambda _: clip_processor()(text="<s>a cat"), ValueError, "Text 0 contains '<s>'"),
    Case("clip-text-pad-typed", lambda _: clip_processor()(text="a <pad> cat"), ValueError, "Text 0 contains '<pad>'"),
    Case(
        "clip-text-lone-surrogate",
        lambda _: clip_processor()(text=["fine", "bad \ud800 text"]),
        ValueError,
        r"Text 1 is not valid Unicode: '\\ud800' at position 4",
    ),
    Case("clip-text-not-a-string", lambda _: clip_processor()(text=["fine", 7]), TypeError, "Text 1 is a int"),
    Case("clip-text-a-number", lambda _: clip_processor()(text=7), TypeError, "Got a int for the texts"),
    Case("clip-image-0x0", lambda _: clip_processor()(images=PIL.Image.new("RGB", (0, 0))), ValueError, "is empty"),
    Case(
        "clip-bf16-batch",
        lambda _: clip_processor()(images=torch.rand(2, 3, 40, 40).to(torch.bfloat16), text=["a", "b"]),
        check=lambda out: out["pixel_values"].shape == (2, 3, 32, 32) and out["input_ids"].shape[0] == 2,
    ),
    # the Fuyu processor
    Case(
        "fuyu-4d-numpy-batch-one-image-per-prompt",
        lambda _: fuyu_processor()(images=np.stack([np.stack([gradient()] * 3, -1)] * 2), text=["describe it"] * 2),
        check=each_row_has_its_image,
    ),
    Case(
        "fuyu-4d-torch-batch-one-image-per-prompt",
        lambda _: fuyu_processor()(images=torch.rand(2, 3, 20, 30), text=["describe it", "seven"]),
        check=each_row_has_its_image,
    ),
    Case(
        "fuyu-one-image-two-prompts",
        lambda _: fuyu_processor()(images=PIL.Image.new("RGB", (30, 20)), text=["describe it", "seven"]),
        ValueError,
        r"Got 1 image\(s\) for 2 prompts: pass one image per prompt, one per <image> placeholder in order, or a list",
    ),
    Case(
        "fuyu-images-mixing-lists-and-images",
        lambda _: fuyu_processor()(
            images=[[PIL.Image.new("RGB", (30, 20))], PIL.Image.new("RGB", (30, 20))], text=["a", "b"]
        ),
        ValueError,
        "The images mix single images and image lists",
    ),
    Case(
        "fuyu-image-1x500",
        lambda _: fuyu_processor()(images=PIL.Image.new("RGB", (500, 1)), text="describe it"),
        check=lambda out: out["pixel_values"].shape == (1, 4, 16 * 16 * 3),
    ),
    Case(
        "fuyu-image-0x0",
        lambda _: fuyu_processor()(images=PIL.Image.new("RGB", (0, 0)), text="describe it"),
        ValueError,
        "0x0 .* is empty",
    ),
    Case(
        "fuyu-prompt-lone-surrogate",
        lambda _: fuyu_processor()(text=["fine", "bad \ud800"]),
        ValueError,
        "Prompt 1 is not valid Unicode",
    ),
    Case(
        "fuyu-answer-lone-surrogate",
        lambda _: fuyu_processor()(text="describe it", answers="bad \udfff"),
        ValueError,
        "Answer 0 is not valid Unicode",
    ),
    Case("fuyu-prompt-not-a-string", lambda _: fuyu_processor()(text=[None]), TypeError, "Prompt 0 is a NoneType"),
    Case(
        "fuyu-box-not-closed",
        lambda _: fuyu_processor()(images=PIL.Image.new("RGB", (30, 20)), text="find <box>1, 2, 3, 4"),
        ValueError,
        "Prompt 0 has a <box> that is not closed or not opened",
    ),
    Case(
        "fuyu-answer-special-token-typed",
        lambda _: fuyu_processor()(text="describe it", answers="seven</s>"),
        ValueError,
        "Answer 0 contains '</s>'",
    ),
    Case(
        "fuyu-tokenizer-without-pad-token",  # left-padded with EOS, masked out
        lambda _: fuyu_processor(pad_token=False)(text=["describe it please", "seven"]),
        check=left_padded_with_eos,
    ),
    Case(
        "fuyu-tokenizer-without-bos-token",
        lambda _: fuyu_processor(bos_token=False)(text="describe it"),
        ValueError,
        "The tokenizer has no BOS token",
    ),
]
CASES += [
    Case(
        f"fuyu-prompt-{token}-typed",
        lambda _, token=token: fuyu_processor()(text=["describe it", f"what is {token} here"]),
        ValueError,
        f"Prompt 1 contains '{re.escape(token)}', a special token that the processor places itself",
    )
    for token in (*FUYU_SPECIAL_TOKENS, "<s>", "</s>")
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path):
    check_case(case, tmp_path)
