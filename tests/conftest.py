"""Shared fixtures: tiny random configs, a tokenizer trained on the spot, real images from wheels."""

import os

import numpy as np
import pytest
import torch
from tiny import CAPTIONS

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
