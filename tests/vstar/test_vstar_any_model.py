"""vstar_generate drives any transformers image-text-to-text model whose processor has a chat template: tiny
random LLaVA, LLaVA-NeXT and Idefics3 models built here (Qwen2-VL's processor cannot be built without
torchvision in transformers 5.23; transformers' own Fuyu processor does not run without it either, and a
one-image family gets the crops pasted beside the image, tested here on LLaVA)."""

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import PLAIN_CHAT_TEMPLATE, TINY_TOWER, tiny_llava, vlm_tokenizer
from transformers import (
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from mosaic_vlm.vstar import DetectorScorer, SearchConfig, vstar_generate
from mosaic_vlm.vstar import generate as vstar_generate_module


def llava():
    return tiny_llava()


def llava_next():
    tokenizer = vlm_tokenizer("<image>")
    pinpoints = [[32, 32], [32, 64], [64, 32]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=PLAIN_CHAT_TEMPLATE.replace("{{ image_token }}", "<image>"),
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**TINY_TOWER, image_size=32, patch_size=8),
        text_config=LlamaConfig(**TINY_TOWER, vocab_size=len(tokenizer), num_key_value_heads=4),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return LlavaNextForConditionalGeneration(config), processor, "<image>", None  # tokens vary with the shape


def idefics3():
    tokenizer = vlm_tokenizer("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=4,
        chat_template=PLAIN_CHAT_TEMPLATE.replace("{{ image_token }}", "<image>"),
    )
    config = Idefics3Config(
        vision_config=dict(TINY_TOWER, image_size=32, patch_size=8),
        text_config=dict(TINY_TOWER, vocab_size=len(tokenizer), num_key_value_heads=4, model_type="llama"),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return Idefics3ForConditionalGeneration(config), processor, "<image>", 4  # image_seq_len


class QuarterDetector:
    """Finds the target in the top-left quarter of whatever it is shown, confidently."""

    def __call__(self, image, candidate_labels):
        box = {"xmin": 1, "ymin": 1, "xmax": image.width // 2, "ymax": image.height // 2}
        return [{"score": 0.9, "label": candidate_labels[0], "box": box}]


def record_conversations(processor, monkeypatch) -> list:
    """Every conversation handed to the processor's chat template, in order."""
    seen, apply = [], processor.apply_chat_template

    def recording(conversation, *args, **kwargs):
        seen.append(conversation)
        return apply(conversation, *args, **kwargs)

    monkeypatch.setattr(processor, "apply_chat_template", recording)
    return seen


def photo() -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", [llava, llava_next, idefics3], ids=lambda family: family.__name__)
def test_the_whole_loop_runs_and_the_model_sees_image_and_labelled_crops(family, monkeypatch):
    torch.manual_seed(0)
    model, processor, image_token, tokens_per_image = family()
    model.eval()
    conversations = record_conversations(processor, monkeypatch)
    image = photo()
    output = vstar_generate(
        model,
        processor,
        image,
        "what colour is the cup?",
        scorer=DetectorScorer(QuarterDetector()),
        search_config=SearchConfig(min_size=100),
        max_new_tokens=4,
        do_sample=False,
    )
    naming, answering = conversations  # the targets' naming, then the answer
    assert [item["type"] for item in naming[0]["content"]] == ["image", "text"]
    assert (
        naming[0]["content"][0]["image"] is not None
        and "Which objects must be seen" in naming[0]["content"][1]["text"]
    )
    assert output.targets and len(output.memory) == len(output.targets)
    content = answering[0]["content"]
    # the whole image first, then the question with each target named at its box, its crop right after
    assert [item["type"] for item in content] == ["image", "text"] + ["image", "text"] * (len(output.memory) - 1) + [
        "image"
    ]
    assert content[0]["image"].size == image.size
    crops = [item["image"] for item in content[2::2]]
    for (target, box, normalised), crop, label in zip(output.memory, crops, content[1::2]):
        assert crop.size == (box[2] - box[0], box[3] - box[1])
        assert f"{target} at [{', '.join(f'{v:.2f}' for v in normalised)}]" in label["text"]
    rendered = processor.apply_chat_template(answering, add_generation_prompt=True)
    assert rendered.count(image_token) == 1 + len(output.memory)
    if tokens_per_image is not None:
        inputs = processor.apply_chat_template(answering, add_generation_prompt=True, tokenize=True, return_dict=True)
        image_token_id = processor.tokenizer.convert_tokens_to_ids(image_token)
        assert list(inputs["input_ids"][0]).count(image_token_id) == tokens_per_image * (1 + len(output.memory))
    assert isinstance(output.answer, str)


def test_a_one_image_family_gets_the_crops_beside_the_image(monkeypatch):
    torch.manual_seed(0)
    model, processor, image_token, _ = llava()
    monkeypatch.setattr(vstar_generate_module, "ONE_IMAGE_MODEL_TYPES", (model.config.model_type,))
    conversations = record_conversations(processor, monkeypatch)
    image = photo()
    output = vstar_generate(
        model.eval(),
        processor,
        image,
        "what colour is the cup?",
        targets=["cup"],
        scorer=DetectorScorer(QuarterDetector()),
        search_config=SearchConfig(min_size=100),
        max_new_tokens=2,
        do_sample=False,
    )
    content = conversations[-1][0]["content"]
    assert [item["type"] for item in content] == ["image", "text"]  # one canvas
    canvas, (_, box, _) = content[0]["image"], output.memory[0]
    crop_width = image.width // 2
    assert canvas.size == (
        image.width + crop_width,
        max(image.height, round((box[3] - box[1]) * crop_width / (box[2] - box[0]))),
    )
    assert np.array_equal(np.asarray(canvas)[: image.height, : image.width], np.asarray(image))
    assert "cup at [" in content[1]["text"] and "the crops are on the right" in content[1]["text"]
