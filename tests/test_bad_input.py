"""Every mistake gets one clear error (issue 17): one table, a row per case.

A row is a `Case`: an id, a call that makes the mistake (it gets a fresh folder for any file it needs), and
either the error it must raise (its exact type and a regex found in its message) or, where the input is now
handled, a check that the result is right. The builders the calls share are cached; add rows (and builders)
for other parts of the project in a section of their own.
"""

import functools
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from mosaic_vlm.processing import (
    MAX_IMAGE_PIXELS,
    MosaicClipImageProcessor,
    MosaicClipProcessor,
    MosaicFuyuImageProcessor,
    MosaicFuyuProcessor,
    train_bpe_tokenizer,
)
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Path], object]
    error: type[Exception] | None = None  # the exact type raised; None when the input must work
    message: str = ""  # a regex found in the error's message
    check: Callable[[object], bool] | None = None  # true of what `call` returned, when it must work


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
        r"Got 1 image\(s\) for 2 prompts: pass one image per prompt, or a list of image lists",
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


# ---------------------------------------------------------------------------------------------- V* search


class ConstantScorer:
    """A scorer that answers `value` for every crop and a flat heatmap."""

    def __init__(self, value=0.5):
        self.value = value

    def score(self, images, target):
        return [self.value] * len(images) if self.value is not None else None

    def heatmap(self, image, target):
        return torch.ones(4, 4)


def search(config=None, scorer=None, target="red square", **kwargs):
    from mosaic_vlm.vstar import visual_search

    image = PIL.Image.new("RGB", (256, 256), (40, 90, 160))
    return visual_search(image, target, scorer or ConstantScorer(), config, **kwargs)


def search_config(**kwargs):
    from mosaic_vlm.vstar import SearchConfig

    return SearchConfig(**kwargs)


def scan(**kwargs):
    from mosaic_vlm.vstar import exhaustive_search

    return exhaustive_search(PIL.Image.new("RGB", (64, 64)), "x", ConstantScorer(), **kwargs)


def clip_scorer(**kwargs):
    from mosaic_vlm.vstar import ClipScorer

    return ClipScorer(None, None, **kwargs)


CASES += [
    Case(
        "vstar-min-size-0",
        lambda _: search_config(min_size=0),
        ValueError,
        "min_size must be a whole number of pixels >= 1",
    ),
    Case("vstar-min-size-float", lambda _: search_config(min_size=2.5), ValueError, "min_size must be a whole number"),
    Case("vstar-max-calls-0", lambda _: search_config(max_calls=0), ValueError, "max_calls must be at least 1"),
    Case(
        "vstar-conf-order", lambda _: search_config(conf_low=0.7, conf_high=0.6), ValueError, "conf_low <= conf_high"
    ),
    Case("vstar-config-dict", lambda _: search({"min_size": 64}), TypeError, "config must be a SearchConfig"),
    Case("vstar-target-empty", lambda _: search(target=" "), ValueError, "target must be a non-empty string"),
    Case("vstar-target-list", lambda _: search(target=["a", "b"]), ValueError, "target must be a non-empty string"),
    Case(
        "vstar-exclude-string", lambda _: search(exclude="0,0,10,10"), TypeError, "exclude must be a sequence of boxes"
    ),
    Case(
        "vstar-exclude-3-numbers",
        lambda _: search(exclude=[(0, 0, 10)]),
        ValueError,
        r"must be a box \(x0, y0, x1, y1\)",
    ),
    Case(
        "vstar-exclude-outside",
        lambda _: search(exclude=[(0, 0, 300, 10)]),
        ValueError,
        "is not inside the 256x256 image",
    ),
    Case("vstar-exclude-inverted", lambda _: search(exclude=[(50, 0, 10, 10)]), ValueError, "is not inside"),
    Case(
        "vstar-scorer-none",
        lambda _: search(scorer=ConstantScorer(None)),
        ValueError,
        r"must return one confidence in \[0, 1\]",
    ),
    Case(
        "vstar-scorer-nan",
        lambda _: search(scorer=ConstantScorer(float("nan"))),
        ValueError,
        r"one confidence in \[0, 1\]",
    ),
    Case(
        "vstar-scorer-text", lambda _: search(scorer=ConstantScorer("high")), ValueError, r"one confidence in \[0, 1\]"
    ),
    Case("vstar-scan-window-0", lambda _: scan(window=0), ValueError, "window >= 1 and batch_size >= 1"),
    Case("vstar-scan-batch-0", lambda _: scan(window=16, batch_size=0), ValueError, "window >= 1 and batch_size >= 1"),
    Case(
        "vstar-clip-scorer-no-background",
        lambda _: clip_scorer(background_prompts=()),
        ValueError,
        "at least one background prompt",
    ),
    Case(
        "vstar-clip-scorer-prompt-without-field", lambda _: clip_scorer(prompt="a photo"), ValueError, "must hold '{}'"
    ),
    Case(
        "vstar-one-confident-search", lambda _: search(scorer=ConstantScorer(0.9)), check=lambda result: result.found
    ),
]


# ---------------------------------------------------------------------------------------------- models and configs


@functools.cache
def fuyu_model():
    from mosaic_vlm.modeling import MosaicFuyuConfig, MosaicFuyuForCausalLM

    config = MosaicFuyuConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        image_token_id=1, image_newline_token_id=2, patch_size=8, bos_token_id=3, eos_token_id=4, pad_token_id=0,
    )  # fmt: skip
    return MosaicFuyuForCausalLM(config).eval()


@functools.cache
def clip_model():
    from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel

    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    config = MosaicClipConfig(
        text_config={
            **tower,
            "vocab_size": 100,
            "eos_token_id": 99,
            "bos_token_id": 98,
            "max_position_embeddings": 16,
        },
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    return MosaicClipModel(config).eval()


IMAGE_IDS = torch.tensor([[1, 1, 2, 3, 10, 11]])  # a 2-patch image block, BOS, two words
PATCHES = torch.randn(1, 2, 192)
TEXTS_IDS = torch.tensor([[98, 5, 6, 99], [98, 7, 99, 0]])


def fuyu(**inputs):
    with torch.no_grad():
        return fuyu_model()(**inputs)


def clip(**inputs):
    with torch.no_grad():
        return clip_model()(**{"input_ids": TEXTS_IDS, "pixel_values": torch.randn(2, 3, 32, 32), **inputs})


def logged_warning(call, logger_name: str):
    """The warnings `call` logs on `logger_name` (transformers' own loggers do not propagate)."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        call()
    finally:
        logger.removeHandler(handler)
    return " ".join(record.getMessage() for record in records)


def config(name: str, **kwargs):
    import mosaic_vlm.modeling as modeling

    return getattr(modeling, name)(**kwargs)


CASES += [
    Case(
        "fuyu-id-outside-vocabulary",
        lambda _: fuyu(input_ids=torch.tensor([[5, 999]])),
        ValueError,
        "token id 999, outside the vocabulary of 300",
    ),
    Case(
        "fuyu-mask-too-short",
        lambda _: fuyu(input_ids=IMAGE_IDS, pixel_values=PATCHES, attention_mask=torch.ones(1, 4)),
        ValueError,
        r"attention_mask must have shape .* = \(1, 6\), got \(1, 4\)",
    ),
    Case(
        "fuyu-mask-too-long",
        lambda _: fuyu(input_ids=IMAGE_IDS, pixel_values=PATCHES, attention_mask=torch.ones(1, 9)),
        ValueError,
        r"= \(1, 6\), got \(1, 9\)",
    ),
    Case(
        "fuyu-uint8-pixels",
        lambda _: fuyu(input_ids=IMAGE_IDS, pixel_values=torch.zeros(1, 2, 192, dtype=torch.uint8)),
        TypeError,
        "pixel_values must be floating point",
    ),
    Case(
        "fuyu-patches-mask-of-twos",
        lambda _: fuyu(input_ids=IMAGE_IDS, pixel_values=PATCHES, image_patches_mask=torch.full((1, 2), 2)),
        ValueError,
        "image_patches_mask must hold booleans",
    ),
    Case(
        "fuyu-patches-mask-wrong-shape",
        lambda _: fuyu(
            input_ids=IMAGE_IDS, pixel_values=PATCHES, image_patches_mask=torch.ones(1, 3, dtype=torch.bool)
        ),
        ValueError,
        r"image_patches_mask must have shape \(batch, patches\)",
    ),
    Case(
        "fuyu-patches-mask-of-ints",
        lambda _: fuyu(
            input_ids=IMAGE_IDS, pixel_values=PATCHES, image_patches_mask=torch.ones(1, 2, dtype=torch.long)
        ),
        check=lambda output: torch.equal(output.logits, fuyu(input_ids=IMAGE_IDS, pixel_values=PATCHES).logits),
    ),
    Case(
        "fuyu-patches-without-image-tokens",
        lambda _: fuyu(input_ids=torch.tensor([[3, 10, 11]]), pixel_values=PATCHES),
        ValueError,
        "one patch per image token",
    ),
    Case(
        "fuyu-image-tokens-without-patches",
        lambda _: logged_warning(lambda: fuyu(input_ids=IMAGE_IDS), "mosaic_vlm.modeling.modeling_mosaic_fuyu"),
        check=lambda logged: "no pixel_values were given: they are read as text tokens" in logged,
    ),
    Case(
        "clip-mask-wrong-length",
        lambda _: clip(attention_mask=torch.ones(2, 3)),
        ValueError,
        r"attention_mask must have the shape of input_ids \(2, 4\)",
    ),
    Case(
        "clip-uint8-pixels",
        lambda _: clip(pixel_values=torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
        TypeError,
        "pixel_values must be floating point",
    ),
    Case(
        "clip-text-without-eos",
        lambda _: clip(input_ids=torch.tensor([[98, 5, 6, 7]])),
        ValueError,
        "Every text must contain the EOS token",
    ),
    Case(
        "config-unknown-key",
        lambda _: logged_warning(
            lambda: config("MosaicClipVisionConfig", patchsize=16), "mosaic_vlm.modeling.config_checks"
        ),
        check=lambda logged: "unknown key 'patchsize' (= 16)" in logged and "patch_size" in logged,
    ),
    Case(
        "config-special-id-outside-vocabulary",
        lambda _: config("MosaicFuyuConfig", vocab_size=100),
        check=lambda built: built.image_token_id == 71011,
    ),
    Case(
        "config-bad-heads",
        lambda _: config("MosaicFuyuConfig", hidden_size=30, num_attention_heads=4),
        ValueError,
        "must be a multiple of num_attention_heads",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path):
    if case.error is None:
        result = case.call(tmp_path)
        assert case.check(result), result
        return
    with pytest.raises(case.error, match=case.message) as caught:
        case.call(tmp_path)
    assert type(caught.value) is case.error  # not a subclass raised deep inside
