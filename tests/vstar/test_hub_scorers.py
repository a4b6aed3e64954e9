"""V*'s scorers take the models users have from the Hub: transformers' CLIPModel and SiglipModel in ClipScorer,
and an open-vocabulary detector (pipeline("zero-shot-object-detection") or anything called the same way) in
DetectorScorer. Tiny random models of each kind, built here."""

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import CAPTIONS, TINY_TOWER, tiny_clip_config, tiny_owl_detector
from transformers import CLIPProcessor, SiglipConfig, SiglipModel, SiglipProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from mosaic_vlm.conversion import clip_to_transformers
from mosaic_vlm.modeling import MosaicClipModel
from mosaic_vlm.processing import MosaicClipImageProcessor, MosaicClipProcessor, train_bpe_tokenizer
from mosaic_vlm.vstar import ClipScorer, DetectorScorer, SearchConfig, visual_search


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(
        CAPTIONS * 4 + ["a photo of the background something"] * 4, vocab_size=128, model_max_length=24
    )


def photo(seed: int, size=(80, 60)) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_clip_scorer_on_transformers_clip_equals_ours(tokenizer):
    """The same weights as our model and as transformers' CLIPModel (converted): the same scores and heatmaps."""
    torch.manual_seed(0)
    ours = MosaicClipModel(tiny_clip_config()).eval()
    theirs = clip_to_transformers(ours).eval()
    image_processor = MosaicClipImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    our_scorer = ClipScorer(ours, MosaicClipProcessor(image_processor, tokenizer))
    pil_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    their_scorer = ClipScorer(theirs, CLIPProcessor(image_processor=pil_processor, tokenizer=tokenizer))
    images = [photo(0), photo(1, (30, 90))]
    torch.testing.assert_close(
        torch.tensor(their_scorer.score(images, "cat")),
        torch.tensor(our_scorer.score(images, "cat")),
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        their_scorer.heatmap(images[0], "cat"), our_scorer.heatmap(images[0], "cat"), atol=1e-5, rtol=0
    )
    assert our_scorer.heatmap(images[0], "cat").shape == (4, 4)  # 32 px in 8 px patches


def test_clip_scorer_on_siglip_is_the_sigmoid_of_the_models_own_logit(tokenizer):
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(TINY_TOWER, vocab_size=128, max_position_embeddings=24, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(TINY_TOWER, image_size=32, patch_size=8),
    )
    model = SiglipModel(config).eval()
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    scorer = ClipScorer(model, processor, background_prompts=())  # sigmoid-trained: no backgrounds needed
    images = [photo(0), photo(1)]
    inputs = processor(text=["a photo of cat"], images=images, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        expected = torch.sigmoid(model(**inputs).logits_per_image[:, 0])
    torch.testing.assert_close(torch.tensor(scorer.score(images, "cat")), expected, atol=1e-5, rtol=0)
    heatmap = scorer.heatmap(images[0], "cat")
    assert heatmap.shape == (4, 4) and bool(((heatmap > 0) & (heatmap < 1)).all())


RED = (255, 0, 0)


class RedDetector:
    """Answers as pipeline("zero-shot-object-detection") does: the box of the exact red pixels in the image it is
    given, scored 0.95 (0.6 when they touch its edge: an object cut by the crop), plus a weak decoy box."""

    def __call__(self, image, candidate_labels):
        red = np.all(np.asarray(image) == RED, axis=-1)
        answer = [{"score": 0.1, "label": candidate_labels[0], "box": {"xmin": 0, "ymin": 0, "xmax": 4, "ymax": 4}}]
        if red.any():
            rows, cols = red.any(axis=1).nonzero()[0], red.any(axis=0).nonzero()[0]
            box = {"xmin": int(cols[0]), "ymin": int(rows[0]), "xmax": int(cols[-1]) + 1, "ymax": int(rows[-1]) + 1}
            cut = box["xmin"] == 0 or box["ymin"] == 0 or box["xmax"] == image.width or box["ymax"] == image.height
            answer.append({"score": 0.6 if cut else 0.95, "label": candidate_labels[0], "box": box})
        return answer


def with_red_square(size, square) -> PIL.Image.Image:
    pixels = np.asarray(photo(0, size)).copy()
    x0, y0, x1, y1 = square
    pixels[y0:y1, x0:x1] = RED
    return PIL.Image.fromarray(pixels)


def test_detector_scorer_scores_paints_boxes_and_locates():
    image = with_red_square((64, 64), (24, 8, 40, 24))
    scorer = DetectorScorer(RedDetector(), grid=8)
    assert scorer.score([image, photo(1, (64, 64))], "cup") == [0.95, 0.1]
    heatmap = scorer.heatmap(image, "cup")
    assert heatmap.shape == (8, 8) and heatmap[1:3, 3:5].eq(0.95).all() and heatmap[0, 0] == pytest.approx(0.1)
    assert heatmap[7, 7] == 0
    assert scorer.locate(image, "cup") == (24, 8, 40, 24)
    with pytest.raises(ValueError, match="must answer a list of"):
        DetectorScorer(lambda image, candidate_labels: [{"score": 0.5}]).score([image], "cup")


def test_a_found_box_is_the_detectors_own_box():
    target = (701, 653, 739, 688)
    image = with_red_square((1024, 1024), target)
    result = visual_search(image, "cup", DetectorScorer(RedDetector()), SearchConfig(min_size=128, conf_high=0.9))
    assert result.found and result.box == target  # exactly the detector's box, not one tightened from heatmaps


@pytest.mark.parametrize("family", ["owlvit", "owlv2"])
def test_a_tiny_detector_pipeline_drives_the_search(tokenizer, family):
    from transformers import pipeline

    torch.manual_seed(0)
    model, image_processor = tiny_owl_detector(family, tokenizer)
    detector = pipeline(
        "zero-shot-object-detection", model=model, image_processor=image_processor, tokenizer=tokenizer
    )
    image = photo(3, (512, 384))
    scorer = DetectorScorer(detector)
    # the score: the best of the pipeline's boxes that keep an area once clipped to the image (0 with none)
    detections = detector(image, candidate_labels=["cat"])
    kept = [
        d["score"]
        for d in detections
        if min(512, d["box"]["xmax"]) > max(0, d["box"]["xmin"])
        and min(384, d["box"]["ymax"]) > max(0, d["box"]["ymin"])
    ]
    assert detections and scorer.score([image], "cat") == [max(kept, default=0.0)]
    result = visual_search(image, "cat", scorer, SearchConfig(min_size=96, max_calls=40))
    assert 1 <= result.num_calls <= 40 and len(result.path) >= 1
    if result.found:
        x0, y0, x1, y1 = result.box
        assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 384
