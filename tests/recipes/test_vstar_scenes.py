"""The V*Bench-like set and the training rows of V*'s two models (mosaic_vlm.data.vstar_scenes)."""

import collections

import pytest

from mosaic_vlm.data.digits import DIGIT_NAMES
from mosaic_vlm.data.vstar_scenes import benchmark_questions, shows, training_rows


def test_questions_are_about_small_tiles_in_large_photos():
    questions = benchmark_questions(30, seed=3)
    assert collections.Counter(item.kind for item in questions) == {"digit": 10, "colour": 10, "spatial": 10}
    for item in questions:
        width, height = item.scene.size
        assert min(width, height) >= 1024
        for box in item.target_boxes:
            assert box[2] - box[0] <= 0.031 * min(width, height)
        if item.kind == "digit":
            assert item.answer == DIGIT_NAMES[item.scene.tiles[0].digit]
        if item.kind == "spatial":
            first, second = item.scene.tiles
            assert item.answer == ("left" if first.box[0] < second.box[0] else "right")
            assert item.targets == (f"{first.colour} digit", f"{second.colour} digit")
    assert benchmark_questions(30, seed=3) == questions  # seeded, so benchmark runs compare


def test_a_crop_shows_a_tile_only_when_the_tile_is_large_enough_in_it():
    tile = (500, 500, 531, 531)
    assert not shows((0, 0, 1024, 1365), tile)  # the whole photo: the tile is too small to see
    assert shows((480, 480, 608, 608), tile)  # a 128-px crop around it
    assert not shows((520, 480, 648, 608), tile)  # holds less than half of it
    assert shows((505, 505, 521, 521), tile)  # a 16-px cell covered by it


def test_training_rows_of_the_answering_model():
    rows = training_rows(700, seed=0, max_size=(48, 48), task="answer")
    kinds = collections.Counter(row["kind"] for row in rows)
    questions = sum(kinds[f"focus {kind}"] for kind in ("digit", "colour", "spatial"))  # one per question
    assert 0.15 * questions < kinds["targets"] < 0.35 * questions
    assert (
        0.15 * questions < sum(kinds[f"direct {kind}"] for kind in ("digit", "colour", "spatial")) < 0.35 * questions
    )
    # digit and left/right questions weighted 3x
    assert kinds["focus spatial"] > 2 * kinds["focus colour"] and kinds["focus digit"] > 2 * kinds["focus colour"]
    for row in rows:
        assert all(max(image.size) <= 48 for image in row["images"])
        if row["kind"].startswith("focus"):
            # the whole image, then one crop per target, each with its own placeholder
            assert row["question"].count("<image>") == len(row["images"]) and len(row["images"]) in (2, 3)


def test_training_rows_of_the_digit_stage():
    rows = training_rows(40, seed=0, max_size=(48, 48), task="digits")
    assert {row["kind"] for row in rows} == {"focus digit"}
    for row in rows:
        assert row["answer"] in DIGIT_NAMES and len(row["images"]) == 2 == row["question"].count("<image>")


def test_training_rows_of_the_search_model():
    rows = training_rows(400, seed=0, max_size=(48, 48), task="search")
    assert {row["answer"] for row in rows} == {"yes", "no"}
    assert all(row["question"].startswith("Is there a ") and len(row["images"]) == 1 for row in rows)
    yes_by_grid = collections.Counter(row["kind"] for row in rows if row["answer"] == "yes")
    assert yes_by_grid["presence 1x1"] == yes_by_grid["presence 2x2"] == 0  # too coarse to see a 3% tile
    assert yes_by_grid["presence 16x16"] > 0


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="Unknown task 'detect'; expected one of"):
        training_rows(4, seed=0, max_size=(48, 48), task="detect")
