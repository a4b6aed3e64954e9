"""V*Bench in its release layout (penghao-wu/vstar's README: a folder per category, each image beside its
annotation JSON), read by `load_vstar_bench` and answered by option likelihood as the paper does."""

import json

import PIL.Image
import pytest
import torch
from tiny import tiny_llava, tiny_vstar_fuyu, write_vstar_bench

from mosaic_vlm.vstar import (
    annotated_searches,
    evaluate_vstar_bench,
    load_vstar_bench,
    option_losses,
    searched_targets,
)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return write_vstar_bench(tmp_path_factory.mktemp("vstar_bench"))


@pytest.fixture(scope="module")
def fuyu():
    return tiny_vstar_fuyu()


def test_the_release_layout_is_read_exactly(bench_dir):
    questions = load_vstar_bench(bench_dir)
    assert [(q.category, q.image_path.name) for q in questions] == [
        ("direct_attributes", "sa_1.jpg"),
        ("direct_attributes", "sa_2.jpg"),
        ("relative_position", "sa_3.jpg"),
    ]
    first, _, third = questions
    assert first.question == "What is the color of the cup?" and first.options == ("red", "blue", "green", "yellow")
    assert first.targets == ("cup",) and first.boxes == ((40, 30, 60, 46),)  # x, y, w, h -> x0, y0, x1, y1
    assert third.targets == ("cup", "cat") and third.boxes == ((10, 10, 22, 22), (60, 40, 75, 55))


def test_a_folder_that_is_not_the_release_is_one_clear_error(bench_dir, tmp_path):
    with pytest.raises(ValueError, match="has no direct_attributes, relative_position folder"):
        load_vstar_bench(tmp_path)
    broken = tmp_path / "broken"
    for category in ("direct_attributes", "relative_position"):
        (broken / category).mkdir(parents=True)
    PIL.Image.new("RGB", (8, 8)).save(broken / "direct_attributes" / "a.jpg")
    with pytest.raises(ValueError, match="has no annotation file a.json"):
        load_vstar_bench(broken)
    (broken / "direct_attributes" / "a.json").write_text(json.dumps({"question": "?", "options": ["x", "y"]}))
    with pytest.raises(ValueError, match="is not a V\\*Bench annotation"):
        load_vstar_bench(broken)


def test_option_likelihood_equals_the_models_own_loss_on_each_answer(fuyu, bench_dir):
    model, processor = fuyu
    question = load_vstar_bench(bench_dir)[0]
    image = PIL.Image.open(question.image_path).convert("RGB")
    losses = option_losses(model, processor, [image], question.question, question.options)
    with torch.no_grad():
        expected = [
            model(**processor(images=image, text=question.question, answers=option)).loss.item()
            for option in question.options
        ]  # the mean over the answer's tokens and its EOS, as `answers=` labels them
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_a_template_without_generation_tags_scores_each_option_after_the_generation_prompt(bench_dir):
    """transformers' LLaVA with a template that marks no answer: each option's own tokens follow the prompt and
    its generation prompt (as the paper's code scores options), and the loss is the model's own on them."""
    model, processor, _, _ = tiny_llava()
    question = load_vstar_bench(bench_dir)[0]
    image = PIL.Image.open(question.image_path).convert("RGB")
    losses = option_losses(model, processor, [image], question.question, question.options)
    turn = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question.question}]}
    ]
    prompt = processor.apply_chat_template(
        turn, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    expected = []
    with torch.no_grad():
        for option in question.options:
            answer = torch.tensor([processor.tokenizer(option, add_special_tokens=False)["input_ids"]])
            input_ids = torch.cat([prompt["input_ids"], answer], dim=1)
            labels = torch.full_like(input_ids, -100)
            labels[:, -answer.shape[1] :] = answer
            outputs = model(input_ids=input_ids, pixel_values=prompt["pixel_values"], labels=labels)
            expected.append(outputs.loss.item())
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), atol=1e-5, rtol=1e-5)
    assert len(set(losses)) > 1  # the options differ


def test_the_papers_table_with_and_without_crops(fuyu, bench_dir):
    model, processor = fuyu
    questions = load_vstar_bench(bench_dir)
    plain = evaluate_vstar_bench(model, processor, questions, progress=False)
    assert set(plain) == {"direct_attributes", "relative_position", "overall", "questions", "chosen"}
    assert plain["questions"] == 3 and plain["overall"] == sum(choice == 0 for choice in plain["chosen"]) / 3
    with_crops = evaluate_vstar_bench(
        model, processor, questions, searches=annotated_searches(questions), progress=False
    )
    assert with_crops["questions"] == 3 and all(
        0 <= choice < len(q.options) for choice, q in zip(with_crops["chosen"], questions)
    )


def test_searching_the_annotated_targets_counts_its_calls(bench_dir):
    class EverywhereScorer:
        def score(self, images, target):
            return [0.9] * len(images)

        def heatmap(self, image, target):
            return torch.ones(2, 2)

    questions = load_vstar_bench(bench_dir)
    found, calls = searched_targets(questions, EverywhereScorer(), progress=False)
    assert [len(found[q.image_path]) for q in questions] == [1, 1, 2] and all(count >= 1 for count in calls)
