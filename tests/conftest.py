"""Shared fixtures: tiny random configs, a tokenizer trained on the spot, real images from wheels."""

import os

import numpy as np
import pytest
import torch

from mosaic_vlm.data.digits import DIGIT_NAMES
from mosaic_vlm.modeling import MosaicClipConfig
from mosaic_vlm.processing import MosaicClipImageProcessor, MosaicClipProcessor, train_bpe_tokenizer

pytest_plugins = ["hub_server"]  # the loopback Hub fixture `hub`

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker: the workers share the cores
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # and in the processes tests start, so their floats match bit for bit


def pytest_sessionstart(session):
    """Unpack transformers' test mixins once, before the workers start (they import them)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        from transformers_sdist import load

        load("test_modeling_common")


CAPTIONS = [f"a photo of the digit {name}" for name in DIGIT_NAMES] + [
    "a photo of a cat",
    "a photo of a dog",
    "an astronaut in space",
    "a cup of coffee",
]


def tiny_clip_config(**overrides) -> MosaicClipConfig:
    """Hidden 32, 2 layers, 4 heads; 32x32 images in 8x8 patches; the trained tokenizer's special ids."""
    text_config = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=24,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=48,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    text_config.update(overrides.pop("text_config", {}))
    vision_config.update(overrides.pop("vision_config", {}))
    return MosaicClipConfig(text_config=text_config, vision_config=vision_config, projection_dim=16, **overrides)


def convert_argv(family: str, source_layout: str, target_layout: str, source, output, *flags: str) -> list[str]:
    """`mosaic-vlm convert` arguments: the `family` checkpoint at `source`, from one layout to another, into
    `output`, with any further `flags`."""
    layouts = ["--from", source_layout, "--to", target_layout]
    return ["convert", "--model", family, *layouts, *flags, str(source), "--output", str(output)]


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe_tokenizer(CAPTIONS * 4, vocab_size=128, model_max_length=24)


@pytest.fixture(scope="session")
def clip_processor(tokenizer):
    image_processor = MosaicClipImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return MosaicClipProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def photos():
    """Real photographs that ship inside scikit-image: RGB, grayscale and of different sizes."""
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "camera": data.camera(), "cat": data.chelsea()}


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
