"""V* search on real photos with a planted target, scored by a deterministic pixel-counting scorer."""

import itertools

import numpy as np
import PIL.Image
import pytest
import torch

from mosaic_vlm.vstar import (
    SearchConfig,
    SearchResult,
    box_iou,
    draw_search,
    exhaustive_search,
    paint_over,
    same_object,
    separate_targets,
    visual_search,
)
from mosaic_vlm.vstar.boxes import split_box
from mosaic_vlm.vstar.search import heatmap_components, heatmap_extent, heatmap_share

RED, BLUE = (255, 0, 0), (0, 0, 255)


def color_mask(image: PIL.Image.Image, color) -> torch.Tensor:
    return torch.from_numpy(np.all(np.asarray(image) == color, axis=-1)).float()


class PlantedColorScorer:
    """Confidence grows with the share of exact `color` pixels in a crop; the heatmap is that mask pooled
    to 32x32, plus `decoy_weight` times the mask of a decoy colour (to mislead the search)."""

    def __init__(self, color=RED, gain: float = 60.0, decoy=None, decoy_weight: float = 0.0, grid: int = 32):
        self.color, self.gain, self.decoy, self.decoy_weight, self.grid = color, gain, decoy, decoy_weight, grid
        self.batch_sizes = []

    def score(self, images, target):
        self.batch_sizes.append(len(images))
        return [min(1.0, float(color_mask(image, self.color).mean()) * self.gain) for image in images]

    def heatmap(self, image, target):
        mask = color_mask(image, self.color)
        if self.decoy is not None:
            mask = mask + self.decoy_weight * color_mask(image, self.decoy)
        return torch.nn.functional.adaptive_avg_pool2d(mask[None, None], (self.grid, self.grid))[0, 0]


def photo_with_squares(size, squares) -> PIL.Image.Image:
    """skimage's astronaut photo resized to `size`, with solid squares planted at (x, y, side, colour)."""
    from skimage import data

    image = PIL.Image.fromarray(data.astronaut()).resize(size, PIL.Image.BICUBIC)
    pixels = np.asarray(image).copy()
    for x, y, side, color in squares:
        pixels[y : y + side, x : x + side] = color
    return PIL.Image.fromarray(pixels)


@pytest.mark.parametrize("seed", range(4))
def test_small_target_in_a_large_photo_is_found(seed):
    rng = np.random.default_rng(seed)
    x, y = (int(v) for v in rng.integers(0, 1536 - 40, size=2))
    image = photo_with_squares((1536, 1536), [(x, y, 40, RED)])
    scorer = PlantedColorScorer()
    result = visual_search(image, "red square", scorer)
    assert result.found and result.score >= 0.5
    assert box_iou(result.box, (x, y, x + 40, y + 40)) > 0.5
    # root + at most two expansions of 4 children and their heatmaps per level, plus the final heatmap
    assert result.num_calls <= 40
    window_scan = exhaustive_search(image, "red square", PlantedColorScorer(), window=384)
    assert window_scan.found and result.num_calls * 4 <= window_scan.num_calls


def test_batched_scorer_calls():
    image = photo_with_squares((1024, 1024), [(700, 100, 30, RED)])
    scorer = PlantedColorScorer(gain=150)
    visual_search(image, "red square", scorer)
    # the root alone, then per expansion its 4 children and its heatmap's strongest region in one call
    assert scorer.batch_sizes[0] == 1 and 5 in scorer.batch_sizes
    assert sum(scorer.batch_sizes) < 40


def test_a_target_cut_by_the_split_is_found_whole_in_the_heatmap_region():
    image = photo_with_squares((1024, 1024), [(492, 492, 40, RED)])  # all four quadrants cut it
    result = visual_search(image, "red square", PlantedColorScorer())
    assert result.found and box_iou(result.box, (492, 492, 532, 532)) > 0.5
    region, score = result.path[1]  # scored with the root's children, before any of them is visited
    assert region not in split_box((0, 0, 1024, 1024)) and score >= 0.5
    assert result.num_calls <= 10


def test_a_found_patch_that_cuts_the_target_is_tightened_onto_all_of_it():
    # a coarse 4x4 heatmap: the root's strongest region is the one 256-px cell that holds 27 of the
    # target's 40 columns, and it is confident; tightening looks at it with context and finds the rest
    image = photo_with_squares((1024, 1024), [(499, 300, 40, RED)])
    result = visual_search(image, "red square", PlantedColorScorer(grid=4))
    found_patch = next(box for box, score in result.path if score >= SearchConfig().conf_high)
    assert found_patch == (512, 256, 768, 512)
    assert result.path[-1] == (result.box, 1.0)  # its tightened box confirmed it (SearchConfig.confirm)
    assert result.found and result.box[0] <= 499 and box_iou(result.box, (499, 300, 539, 340)) > 0.7


def test_backtracks_when_the_first_branch_is_wrong():
    # the heatmap points strongly at a blue decoy in the top-left, the target is bottom-right
    image = photo_with_squares((1536, 1536), [(100, 100, 120, BLUE), (1300, 1300, 40, RED)])
    scorer = PlantedColorScorer(decoy=BLUE, decoy_weight=10.0)
    result = visual_search(image, "red square", scorer)
    assert result.found and box_iou(result.box, (1300, 1300, 1340, 1340)) > 0.5
    visited = [box for box, _ in result.path[1:]]
    assert visited[0] == (96, 96, 224, 224)  # the root heatmap's strongest region: the decoy, scored 0
    quadrants = split_box((0, 0, 1536, 1536))
    assert next(box for box in visited if box in quadrants) == (0, 0, 768, 768)  # the decoy's quadrant goes first
    assert any(box[0] >= 768 and box[1] >= 768 for box in visited)  # then the search comes back


def test_elongated_patches_split_into_strips():
    assert split_box((0, 0, 2000, 500)) == [
        (0, 0, 500, 500),
        (500, 0, 1000, 500),
        (1000, 0, 1500, 500),
        (1500, 0, 2000, 500),
    ]
    assert split_box((0, 0, 400, 1000)) == [
        (0, 0, 400, 250),
        (0, 250, 400, 500),
        (0, 500, 400, 750),
        (0, 750, 400, 1000),
    ]
    assert split_box((10, 10, 110, 60)) == [(10, 10, 35, 60), (35, 10, 60, 60), (60, 10, 85, 60), (85, 10, 110, 60)]
    assert split_box((0, 0, 300, 200)) == [
        (0, 0, 150, 100),
        (150, 0, 300, 100),
        (0, 100, 150, 200),
        (150, 100, 300, 200),
    ]

    class FlatHeatmapScorer(PlantedColorScorer):
        """No heatmap region to look inside: the search must go down the strips."""

        def heatmap(self, image, target):
            return torch.ones(4, 4)

    image = photo_with_squares((2048, 512), [(1700, 200, 30, RED)])
    result = visual_search(image, "red square", FlatHeatmapScorer(gain=100), SearchConfig(min_size=256))
    assert result.path[1][0] == (0, 0, 512, 512)  # first visited child is a full-height strip
    x0, y0, x1, y1 = result.box  # its leaf: nothing to tighten with
    assert result.found and x0 <= 1700 and y0 <= 200 and x1 >= 1730 and y1 >= 230
    result = visual_search(image, "red square", PlantedColorScorer(gain=100), SearchConfig(min_size=256))
    assert result.found and box_iou(result.box, (1700, 200, 1730, 230)) > 0.5


def test_not_found_is_a_clear_result():
    image = photo_with_squares((1024, 1024), [])
    result = visual_search(image, "red square", PlantedColorScorer())
    assert isinstance(result, SearchResult)
    assert not result.found and result.box is None and result.boxes == []
    assert len(result.path) > 1 and result.score < 0.3


def test_max_calls_budget_is_respected():
    image = photo_with_squares((1536, 1536), [(1300, 1300, 40, RED)])
    for budget in (1, 5, 12):
        result = visual_search(image, "red square", PlantedColorScorer(), SearchConfig(max_calls=budget))
        assert result.num_calls <= budget
    with pytest.raises(ValueError, match="max_calls must be at least 1"):
        visual_search(image, "red square", PlantedColorScorer(), SearchConfig(max_calls=0))


def test_low_confidence_best_patch_is_returned_above_conf_low():
    image = photo_with_squares((1024, 1024), [(600, 600, 40, RED)])
    # a crop of red alone scores 0.6: below conf_high, above conf_low
    result = visual_search(image, "red square", PlantedColorScorer(gain=0.6), SearchConfig(conf_high=0.9))
    assert result.found and 0.3 <= result.score < 0.9
    assert box_iou(result.box, (600, 600, 640, 640)) > 0.5


def test_several_instances_found_at_the_root():
    image = photo_with_squares((1024, 1024), [(100, 120, 160, RED), (700, 600, 160, RED)])
    result = visual_search(image, "red square", PlantedColorScorer())
    assert result.found and len(result.boxes) == 2 and len(result.path) == 1
    truths = [(100, 120, 260, 280), (700, 600, 860, 760)]
    for truth in truths:
        assert max(box_iou(box, truth) for box in result.boxes) > 0.5


def test_excluded_boxes_are_painted_over_and_the_search_finds_another_instance():
    image = photo_with_squares((1024, 1024), [(100, 120, 40, RED), (800, 700, 30, RED)])
    painted = paint_over(image, [(100, 120, 140, 160)])
    assert (
        not color_mask(painted.crop((100, 120, 140, 160)), RED).any() and color_mask(image, RED).sum() == 40**2 + 30**2
    )
    ring = np.asarray(image.crop((90, 110, 150, 170))).reshape(-1, 3).copy()
    inside = np.zeros((60, 60), bool)
    inside[10:50, 10:50] = True
    expected = torch.from_numpy(ring[~inside.reshape(-1)]).median(dim=0).values.tolist()
    assert painted.getpixel((120, 140)) == tuple(expected)  # the median colour of the ring around the box
    assert np.array_equal(np.asarray(painted)[:, 200:], np.asarray(image)[:, 200:])  # nothing else changes
    result = visual_search(image, "red square", PlantedColorScorer(), exclude=[(100, 120, 140, 160)])
    assert result.found and box_iou(result.box, (800, 700, 830, 730)) > 0.5
    with pytest.raises(ValueError, match="not inside"):
        paint_over(image, [(1000, 0, 1100, 10)])


def test_same_object_means_much_overlap_and_similar_size():
    assert same_object((0, 0, 40, 40), (10, 5, 50, 45))  # two boxes on one 40-px tile
    assert same_object((0, 0, 40, 40), (0, 0, 60, 60))  # a looser box around it
    assert not same_object((0, 0, 40, 40), (30, 30, 70, 70))  # a corner in common
    assert not same_object((100, 100, 120, 120), (0, 0, 400, 400))  # a collar on a dog
    assert not same_object((0, 0, 10, 10), (10, 0, 20, 10))  # touching


class ColourBlindScorer(PlantedColorScorer):
    """A crop's confidence grows with its share of red or blue pixels whatever colour is asked for (as a
    tiny scorer that knows a digit when it sees one but not its colour): 0.9 of it when the crop's
    majority colour is the one asked for, 0.7 otherwise, so that both pass `conf_high` but the right one
    is preferred. The heatmap is the mask of both colours."""

    def score(self, images, target):
        self.batch_sizes.append(len(images))
        scores = []
        for image in images:
            red, blue = color_mask(image, RED).mean(), color_mask(image, BLUE).mean()
            asked_for_is_majority = (red >= blue) == target.startswith("red")
            scores.append(min(1.0, float(red + blue) * self.gain) * (0.9 if asked_for_is_majority else 0.7))
        return scores

    def heatmap(self, image, target):
        mask = color_mask(image, RED) + color_mask(image, BLUE)
        return torch.nn.functional.adaptive_avg_pool2d(mask[None, None], (self.grid, self.grid))[0, 0]


def test_different_targets_get_different_objects():
    red_box, blue_box = (200, 300, 260, 360), (1200, 1100, 1240, 1140)
    image = photo_with_squares((1536, 1536), [(200, 300, 60, RED), (1200, 1100, 40, BLUE)])
    scorer = ColourBlindScorer()
    searches = {target: visual_search(image, target, scorer) for target in ("blue square", "red square")}
    assert all(box_iou(result.box, red_box) > 0.5 for result in searches.values())  # both stop on the larger red one
    separated = separate_targets(image, searches, scorer)
    assert (
        box_iou(separated["red square"].box, red_box) > 0.5 and box_iou(separated["blue square"].box, blue_box) > 0.5
    )
    red = separated["red square"]  # kept its own box: its search's result, plus the assignment's calls
    assert (red.score, red.boxes, red.path) == (
        searches["red square"].score,
        searches["red square"].boxes,
        searches["red square"].path,
    )
    assert red.num_calls == searches["red square"].num_calls + 2
    blue = separated["blue square"]
    assert (
        blue.path[: len(searches["blue square"].path)] == searches["blue square"].path
    )  # the first search, then the second
    assert blue.num_calls > searches["blue square"].num_calls + 2
    # two searches that each stopped on the other's square are swapped back by their joint confidence
    swapped = {"red square": separated["blue square"], "blue square": separated["red square"]}
    unswapped = separate_targets(image, swapped, scorer)
    assert unswapped["red square"].box == separated["red square"].box and unswapped["blue square"].box == blue.box
    assert unswapped["red square"].num_calls == swapped["red square"].num_calls + 2
    assert unswapped["red square"].score == pytest.approx(0.9)
    lonely = {"red square": separated["red square"], "green square": SearchResult(False, None, 0.1)}
    assert separate_targets(image, lonely, scorer) == lonely  # one found target: nothing to separate


def test_heatmap_components_boxes_follow_the_cells_and_their_weights():
    heatmap = torch.zeros(4, 4)
    heatmap[1:3, 1:3] = 1.0  # an even 2x2 block: exactly its cells
    heatmap[3, 3] = 0.75  # a separate, weaker region
    assert heatmap_components(heatmap, (0, 0, 400, 400)) == [(1.0, (100, 100, 300, 300)), (0.75, (300, 300, 400, 400))]
    heatmap[1:3, 2] = 0.6  # the right column only partly covered: the right edge comes in, the rest stays
    (peak, (x0, y0, x1, y1)), _ = heatmap_components(heatmap, (0, 0, 400, 400))
    assert (peak, x0, y0, y1) == (1.0, 100, 100, 300) and 250 < x1 < 300


def test_heatmap_extent_spans_every_strong_cell_connected_or_not():
    heatmap = torch.zeros(4, 4)
    heatmap[1:3, 0] = 1.0  # a hollow target: two strong columns with a weak one between them
    heatmap[1:3, 1] = 0.1
    heatmap[1:3, 2] = 0.9
    assert heatmap_components(heatmap, (0, 0, 400, 400))[0] == (1.0, (0, 100, 100, 300))
    x0, y0, x1, y1 = heatmap_extent(heatmap, (0, 0, 400, 400))
    assert (x0, y0, y1) == (0, 100, 300) and 250 < x1 <= 300
    assert heatmap_extent(torch.zeros(3, 3), (0, 0, 400, 400)) is None


def test_heatmap_share_is_exact_by_area():
    heatmap = torch.zeros(4, 4)
    heatmap[0, 0] = 1.0
    heatmap[3, 3] = 3.0
    outer = (0, 0, 400, 400)
    assert heatmap_share(heatmap, outer, (0, 0, 200, 200)) == pytest.approx(0.25)
    assert heatmap_share(heatmap, outer, (200, 200, 400, 400)) == pytest.approx(0.75)
    assert heatmap_share(heatmap, outer, (0, 0, 50, 100)) == pytest.approx(0.125)  # half of cell (0, 0)
    assert heatmap_share(torch.zeros(3, 3), outer, (0, 0, 10, 10)) == 0.0


def test_bad_scorers_and_inputs_raise_clear_errors():
    image = photo_with_squares((512, 512), [])

    class WrongLength(PlantedColorScorer):
        def score(self, images, target):
            return [0.1]

    class NegativeHeatmap(PlantedColorScorer):
        def heatmap(self, image, target):
            return -torch.ones(4, 4)

    with pytest.raises(ValueError, match="one confidence in \\[0, 1\\] per image"):
        visual_search(image, "x", WrongLength(), SearchConfig(min_size=100))
    with pytest.raises(ValueError, match="non-negative"):
        visual_search(image, "x", NegativeHeatmap(), SearchConfig(min_size=100))
    with pytest.raises(TypeError, match="PIL.Image.Image"):
        visual_search(np.zeros((10, 10, 3)), "x", PlantedColorScorer())
    with pytest.raises(ValueError, match="conf_low <= conf_high"):
        visual_search(image, "x", PlantedColorScorer(), SearchConfig(conf_low=0.6, conf_high=0.5))


def colour_pixels(picture: PIL.Image.Image, colour) -> int:
    return int(np.all(np.asarray(picture) == colour, axis=-1).sum())


def test_draw_search_shows_the_search_the_truth_and_the_crops(tmp_path):
    from mosaic_vlm.vstar.draw import CONFIDENT, TRUTH, UNSURE

    image = photo_with_squares((1024, 1024), [(700, 100, 30, RED)])
    config = SearchConfig(min_size=64, conf_high=0.65)
    result = visual_search(image, "red square", PlantedColorScorer(gain=150), config)
    assert result.found and result.score >= 0.65
    plain = draw_search(image, result)  # as `mosaic-vlm vstar` draws it: caption and legend around the image
    assert plain.width == image.width and plain.height > image.height
    assert (
        colour_pixels(plain, CONFIDENT) > 0 and colour_pixels(plain, UNSURE) == 0 and colour_pixels(plain, TRUTH) == 0
    )
    crop = PIL.Image.new("RGB", (36, 36), (255, 0, 255))
    picture = draw_search(
        image,
        result,
        question="Where is it?",
        target="red square",
        answer="here",
        truth=(700, 100, 730, 130),
        crops=[("red square", crop)],
        config=config,
    )
    assert picture.width > image.width and colour_pixels(picture, TRUTH) > 0
    assert colour_pixels(picture.crop((image.width, 0, picture.width, picture.height)), (255, 0, 255)) >= 36 * 36
    assert picture.height > plain.height  # the question's line
    picture.save(tmp_path / "trace.png")
    assert PIL.Image.open(tmp_path / "trace.png").size == picture.size


def test_draw_search_marks_an_unsure_search_red():
    from mosaic_vlm.vstar.draw import CONFIDENT, UNSURE

    image = photo_with_squares((512, 512), [])
    unsure = SearchResult(True, (100, 100, 164, 164), 0.4, [(100, 100, 164, 164)], [((0, 0, 512, 512), 0.1)], 5)
    picture = draw_search(image, unsure, config=SearchConfig(conf_high=0.65, conf_low=0.3))
    assert colour_pixels(picture, UNSURE) > 0 and colour_pixels(picture, CONFIDENT) == 0
    missed = SearchResult(False, None, 0.1, [], [((0, 0, 512, 512), 0.1)], 5)
    assert colour_pixels(draw_search(image, missed), CONFIDENT) == 0


def test_draw_search_numbers_a_few_key_patches_with_labels_apart():
    from mosaic_vlm.vstar.draw import KEY_PATCHES, _labels

    # a long search that keeps returning to the same corner: many patches, their labels compete for one place
    path = [((0, 0, 1024, 1024), 0.1)] + [((0, 0, 512 - 8 * i, 512 - 8 * i), 0.1 + i / 100) for i in range(30)]
    result = SearchResult(True, (40, 40, 72, 72), 0.9, [(40, 40, 72, 72)], path, 120)
    labels = _labels(result, [(34, 34, 78, 78)], (1024, 1024), lambda text: (60, 20))
    assert 2 <= len(labels) <= KEY_PATCHES
    numbers = [number for number, _, _ in labels]
    assert numbers == sorted(numbers) and numbers[0] == 1 and numbers[-1] == 30  # where it started and ended
    spots = [spot for _, _, spot in labels] + [(34, 34, 78, 78)]
    for a, b in itertools.combinations(spots, 2):
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)  # no two overlap
    assert all(0 <= x0 and 0 <= y0 and x1 <= 1024 and y1 <= 1024 for x0, y0, x1, y1 in spots)


def test_clip_scorer_scores_and_heatmaps(clip_processor):
    from tiny import tiny_clip_config

    from mosaic_vlm.modeling import MosaicClipModel
    from mosaic_vlm.vstar import ClipScorer

    torch.manual_seed(0)
    model = MosaicClipModel(tiny_clip_config()).eval()
    scorer = ClipScorer(model, clip_processor, background_prompts=("a photo", "a cup of coffee"))
    image = photo_with_squares((600, 400), [(10, 10, 30, RED)])
    crops = [image, image.crop((0, 0, 200, 200)), image.crop((300, 100, 600, 400))]
    scores = scorer.score(crops, "cat")
    assert len(scores) == 3 and all(0 < s < 1 for s in scores)
    # the confidence is the target prompt's share of the softmax over target + background prompts
    side = model.config.vision_config.image_size
    texts = clip_processor(text=["a photo of cat", "a photo", "a cup of coffee"])
    with torch.no_grad():
        for crop, score in zip(crops, scores):
            pixels = clip_processor.image_processor(crop.resize((side, side), PIL.Image.BICUBIC), return_tensors="pt")
            logits = model(**texts, pixel_values=pixels["pixel_values"]).logits_per_image[0]
            assert logits.softmax(-1)[0].item() == pytest.approx(score, abs=0.02)
    heatmap = scorer.heatmap(image, "cat")
    assert heatmap.shape == (4, 4) and bool((heatmap > 0).all() and (heatmap < 1).all())
    result = visual_search(image, "cat", scorer, SearchConfig(min_size=100, max_calls=30))
    assert result.num_calls <= 30 and len(result.path) >= 1


class RimScorer(PlantedColorScorer):
    """Confidently wrong about crops that show a little of a blue decoy (a cup's rim at a crop's edge), right
    about a crop tight on it; the heatmap shows red and blue where they are."""

    def score(self, images, target):
        scores = super().score(images, target)
        for index, image in enumerate(images):
            blue = float(color_mask(image, BLUE).mean())
            if scores[index] < 0.5 and 0.05 < blue < 0.3:
                scores[index] = 0.9
        return scores

    def heatmap(self, image, target):
        mask = color_mask(image, RED) + color_mask(image, BLUE)
        return torch.nn.functional.adaptive_avg_pool2d(mask[None, None], (self.grid, self.grid))[0, 0]


def test_a_confident_patch_must_be_confirmed_by_its_tightened_box():
    image = photo_with_squares((1536, 1536), [(150, 150, 120, BLUE), (1300, 1300, 40, RED)])
    trusting = visual_search(image, "red square", RimScorer(), SearchConfig(confirm=False))
    assert trusting.found and box_iou(trusting.box, (150, 150, 270, 270)) > 0.5  # it stopped on the decoy
    calibrated = visual_search(image, "red square", RimScorer())
    assert calibrated.found and box_iou(calibrated.box, (1300, 1300, 1340, 1340)) > 0.5
    rejected = [box for box, score in calibrated.path if box_iou(box, (150, 150, 270, 270)) > 0.5]
    assert rejected and all(score < 0.5 for box, score in calibrated.path if box in rejected[-1:])
