"""The shortcuts that make V*'s training rows cheap give the same rows: scenes fitted from a cached reduction
of their photo, crops without a full render, batches that pad little, prompts of few tokens."""

import collections
import random

import numpy as np

from mosaic_vlm.data.vstar_scenes import _fitted, _presence_rows, random_question, training_rows
from mosaic_vlm.recipes.vstar import build_processor


def test_a_fitted_scene_is_the_fitted_render_pixel_for_pixel():
    rng = random.Random(0)
    for index in range(21):  # every photo, one or two tiles
        scene = random_question(rng, ("digit", "spatial", "colour")[index % 3]).scene
        render = scene.render()
        for max_size in ((48, 48), (40, 64)):
            expected = _fitted(render, (0, 0, *render.size), max_size)  # what the rows used to hold
            assert np.array_equal(np.asarray(scene.fitted(max_size)), np.asarray(expected)), (scene.photo, max_size)
        tile = scene.tiles[0].box
        around = (max(0, tile[0] - 50), max(0, tile[1] - 7), tile[2] + 3, tile[3] + 60)
        assert np.array_equal(np.asarray(scene.crop(around)), np.asarray(render.crop(around)))


def test_rows_come_in_runs_of_one_batch_with_as_many_images():
    rows = training_rows(320, seed=0, max_size=(48, 48), task="answer", batch_size=32)
    runs = [{len(row["images"]) for row in rows[start : start + 32]} for start in range(0, 320, 32)]
    assert all(len(images) == 1 for images in runs)
    assert {count for (count,) in runs} == {1, 2, 3}
    # one at a time, the same generator makes the same kinds of rows
    kinds = collections.Counter(row["kind"] for row in training_rows(320, seed=0, max_size=(48, 48), task="answer"))
    assert set(kinds) == {row["kind"] for row in rows}


def test_a_batch_holds_rows_of_many_scenes():
    # the search rows of one scene (8 crops) are made together; the runs spread them over several batches
    rows = training_rows(64, seed=0, max_size=(48, 48), task="search", batch_size=8)  # 8 scenes, all rows
    first_scene = _presence_rows(random.Random(0), (48, 48), 8)

    def key(row):
        return row["question"], row["images"][0].tobytes()

    positions = {key(row): index for index, row in enumerate(rows)}
    batches = {positions[key(row)] // 8 for row in first_scene}
    assert len(batches) > 2, batches


def test_the_rows_tokenizer_spends_one_token_per_word_of_the_prompts():
    tokenizer = build_processor(48, 12).tokenizer
    for text in ("Additional visual information to focus on:", "Is there a red digit in the image?", "seven", "no"):
        assert len(tokenizer.tokenize(text)) == len(text.split()), tokenizer.tokenize(text)
