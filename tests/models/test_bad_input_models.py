"""Bad input to the models room gets one clear error: the rows of the table in `bad_input.py`."""

import functools

import pytest
import torch
from bad_input import Case, check_case

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


CASES = [
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
    check_case(case, tmp_path)
