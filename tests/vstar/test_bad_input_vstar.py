"""Bad input to the vstar room gets one clear error: the rows of the table in `bad_input.py`."""

import PIL.Image
import pytest
import torch
from bad_input import Case, check_case

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
    from tiny import tiny_clip_config

    from mosaic_vlm.modeling import MosaicClipModel
    from mosaic_vlm.vstar import ClipScorer

    return ClipScorer(MosaicClipModel(tiny_clip_config()), None, **kwargs)  # softmax-trained: needs backgrounds


CASES = [
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


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path):
    check_case(case, tmp_path)
