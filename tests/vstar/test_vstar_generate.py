"""vstar_generate and FuyuScorer end to end with a tiny Fuyu-style model trained here with Trainer on the
V*Bench-like rows (a short run: these tests check the mechanics, the benchmark measures the quality)."""

import math

import pytest
import torch
from transformers import TrainingArguments

from mosaic_vlm.data.vstar_scenes import benchmark_questions, training_rows
from mosaic_vlm.recipes import vstar as train_vstar
from mosaic_vlm.vstar import (
    TARGETS_PROMPT,
    FuyuScorer,
    SearchConfig,
    enlarge_box,
    focus_question,
    parse_targets,
    vstar_generate,
)

GENERATE = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    args = train_vstar.VStarArguments(hidden_size=32, num_hidden_layers=2, train_rows=1920, eval_rows=32)
    training_args = TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("vstar")),
        max_steps=60,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = train_vstar.build_trainer(args, training_args)
    trainer.train()
    return trainer.model.eval(), trainer.processing_class


def generate_text(model, processor, images, text):
    inputs = processor(images=[images], text=[text])
    return processor.post_process_image_text_to_text(model.generate(**inputs, **GENERATE))[0]


def test_the_prompts():
    memory = [("red digit", (0.1234, 0.5, 0.25, 0.75)), ("blue digit", (0.0, 0.1, 0.2, 0.3))]
    assert focus_question("Is it left?", memory) == (
        "<image>Is it left? Additional visual information to focus on: red digit at [0.12, 0.50, 0.25, 0.75] <image>; "
        "blue digit at [0.00, 0.10, 0.20, 0.30] <image>"
    )
    focus_rows = [row for row in training_rows(12, 0, (48, 48)) if row["kind"].startswith("focus")]
    assert focus_rows and all(row["question"].count("<image>") == len(row["images"]) for row in focus_rows)
    assert parse_targets("red digit, blue digit") == ["red digit", "blue digit"]
    assert parse_targets(" None. ") == [] and parse_targets("digit and digit") == ["digit"]
    assert enlarge_box((100, 100, 200, 150), 1.2, 1000, 1000) == (90, 95, 210, 155)
    assert enlarge_box((0, 0, 100, 100), 1.2, 105, 105) == (0, 0, 105, 105)  # clipped to the image


def test_fuyu_scorer_batches_and_returns_probabilities(trained):
    model, processor = trained
    scorer = FuyuScorer(model, processor, batch_size=3)
    image = benchmark_questions(1)[0].scene.render()
    crops = [image.crop((x, 0, x + 200, 200)) for x in range(0, 1000, 200)]
    scores = scorer.score(crops, "digit")
    assert len(scores) == 5 and all(0.0 <= s <= 1.0 for s in scores) and scorer.evaluations == 5
    one_by_one = [scorer.score([crop], "digit")[0] for crop in crops]
    assert scores == pytest.approx(one_by_one, abs=1e-5)  # left-padded batches score like single crops
    heatmap = scorer.heatmap(image, "digit")
    assert heatmap.shape == (4, 4) and scorer.evaluations == 5 + 5 + 16
    x_step, y_step = image.width / 4, image.height / 4
    corner = image.crop((0, 0, round(x_step), round(y_step)))
    assert heatmap[0, 0].item() == pytest.approx(scorer.score([corner], "digit")[0], abs=1e-5)
    fine = FuyuScorer(model, processor, max_cell=200)  # no cell wider than 200 px: more cells on large images
    rows, cols = math.ceil(image.height / 200), math.ceil(image.width / 200)
    heatmap = fine.heatmap(image, "digit")
    assert heatmap.shape == (rows, cols) and rows > 4 and fine.evaluations == rows * cols
    corner = image.crop((0, 0, round(image.width / cols), round(image.height / rows)))
    assert heatmap[0, 0].item() == pytest.approx(fine.score([corner], "digit")[0], abs=1e-5)
    assert fine.heatmap(corner, "digit").shape == (4, 4)  # small images keep the grid
    with pytest.raises(ValueError, match="max_cell >= 1"):
        FuyuScorer(model, processor, max_cell=0)


def test_vstar_generate_names_targets_searches_and_answers_from_the_crops(trained):
    model, processor = trained
    question = benchmark_questions(3)[2]  # a left/right question: two targets
    image = question.scene.render()
    output = vstar_generate(
        model, processor, image, question.question, search_config=SearchConfig(min_size=128, max_calls=40), **GENERATE
    )
    reply = generate_text(model, processor, [image], TARGETS_PROMPT.format(question.question))
    assert output.targets == parse_targets(reply)
    assert set(output.searches) == set(output.targets)
    for result in output.searches.values():
        assert 1 <= result.num_calls <= 40 and result.path[0][0] == (0, 0, *image.size)
    found = [(target, result) for target, result in output.searches.items() if result.found]
    assert [entry[0] for entry in output.memory] == [target for target, _ in found]
    for (_, box, normalised), (_, result) in zip(output.memory, found):
        assert box == enlarge_box(result.box, 1.2, *image.size)
        assert normalised == (box[0] / image.width, box[1] / image.height, box[2] / image.width, box[3] / image.height)
    if output.memory:  # the answer comes from the whole image, the crops and the question
        prompt = focus_question(question.question, [(target, box) for target, _, box in output.memory])
        crops = [image.crop(box) for _, box, _ in output.memory]
        assert output.answer == generate_text(model, processor, [image, *crops], prompt)
    else:
        assert output.answer == generate_text(model, processor, [image], question.question)


def test_given_targets_skip_the_naming_and_nothing_to_search_answers_directly(trained):
    model, processor = trained
    question = benchmark_questions(1)[0]
    image = question.scene.render()
    direct = vstar_generate(model, processor, image, question.question, targets=[], **GENERATE)
    assert direct.searches == {} and direct.memory == []
    assert direct.answer == generate_text(model, processor, [image], question.question)

    class NeverThere:
        def score(self, images, target):
            return [0.0] * len(images)

        def heatmap(self, image, target):
            return torch.ones(2, 2)

    missing = vstar_generate(
        model,
        processor,
        image,
        question.question,
        targets=["digit"],
        scorer=NeverThere(),
        search_config=SearchConfig(min_size=256),
        **GENERATE,
    )
    assert not missing.searches["digit"].found and missing.memory == []
    assert missing.answer == direct.answer  # nothing found: answered from the whole image


def test_bad_image_is_refused(trained):
    model, processor = trained
    with pytest.raises(TypeError, match="vstar_generate takes a PIL.Image.Image"):
        vstar_generate(model, processor, "photo.png", "What digit is on the tile?", targets=[])


def test_the_benchmark_takes_trained_models_as_folders_or_loaded(trained, tmp_path):
    from mosaic_vlm.benchmarks import vstar as bench_vstar

    model, processor = trained
    model.save_pretrained(tmp_path / "answer")
    processor.save_pretrained(tmp_path / "answer")
    from_folder = bench_vstar.run_vstar_benchmark(tmp_path / "answer", trained, questions=1, exhaustive=0, quick=True)
    loaded = bench_vstar.run_vstar_benchmark(trained, trained, questions=1, exhaustive=0, quick=True)
    for figure in ("questions", "direct_accuracy", "vstar_accuracy", "targets_named", "evaluations_per_search"):
        assert from_folder[figure] == loaded[figure], figure
    assert from_folder["questions"] == 1


def test_a_string_names_one_target_and_empty_names_are_refused(trained):
    model, processor = trained
    question = benchmark_questions(1, seed=5)[0]
    image = question.scene.render()
    output = vstar_generate(
        model,
        processor,
        image,
        question.question,
        targets="digit",
        search_config=SearchConfig(min_size=512, max_calls=6),
        **GENERATE,
    )
    assert output.targets == ["digit"] and list(output.searches) == ["digit"]
    with pytest.raises(ValueError, match="targets must be non-empty strings"):
        vstar_generate(model, processor, image, question.question, targets=["digit", " "], **GENERATE)
