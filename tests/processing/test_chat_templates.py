"""Chat templates: both processors carry one, saved as chat_template.jinja and loaded by AutoProcessor. The Fuyu
template lays a conversation out exactly as the processor's direct call does; vLLM's token counting matches what
the processor emits."""

import copy

import numpy as np
import pytest
import torch
from tiny import FUYU_TEXTS, FUYU_TOKENS
from transformers import AutoProcessor

import mosaic_vlm  # noqa: F401  (registers the processors with AutoProcessor)
from mosaic_vlm.processing import (
    MosaicClipImageProcessor,
    MosaicClipProcessor,
    MosaicFuyuImageProcessor,
    MosaicFuyuProcessor,
    train_bpe_tokenizer,
)

IGNORE = -100


@pytest.fixture(scope="module")
def fuyu_processor():
    tokenizer = train_bpe_tokenizer(
        FUYU_TEXTS * 5 + ["seven three yes no"] * 5,
        vocab_size=120,
        model_max_length=256,
        extra_special_tokens=FUYU_TOKENS,
    )
    return MosaicFuyuProcessor(MosaicFuyuImageProcessor(patch_size=16, size={"height": 64, "width": 64}), tokenizer)


@pytest.fixture(scope="module")
def clip_processor():
    tokenizer = train_bpe_tokenizer(FUYU_TEXTS * 5, vocab_size=120, model_max_length=32)
    image_processor = MosaicClipImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return MosaicClipProcessor(image_processor, tokenizer)


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def user(*items) -> dict:
    content = [
        {"type": "image", "image": item} if isinstance(item, np.ndarray) else {"type": "text", "text": item}
        for item in items
    ]
    return {"role": "user", "content": content}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def ids(processor, *tokens: str) -> list[int]:
    return [processor.tokenizer.convert_tokens_to_ids(token) for token in tokens]


def assert_same(templated, direct):
    assert sorted(templated) == sorted(direct)
    for key in direct:
        torch.testing.assert_close(templated[key], direct[key], rtol=0, atol=0, msg=key)


def test_a_question_with_its_image_equals_the_direct_call(fuyu_processor):
    photo = image(50, 70)
    conversation = [user(photo, "what digit is this?")]
    templated = fuyu_processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, add_generation_prompt=True
    )
    assert_same(templated, fuyu_processor(images=photo, text="what digit is this?"))


def test_a_batch_with_images_between_words_equals_the_direct_call(fuyu_processor):
    first, second, third = image(50, 70, 1), image(30, 30, 2), image(64, 20, 3)
    conversations = [[user("compare", first, "and", second)], [user(third, "describe it")]]
    templated = fuyu_processor.apply_chat_template(
        conversations, tokenize=True, return_dict=True, add_generation_prompt=True
    )
    direct = fuyu_processor(images=[[first, second], [third]], text=["compare<image>and<image>", "<image>describe it"])
    assert_same(templated, direct)


def test_an_answered_turn_equals_the_direct_call_with_answers(fuyu_processor):
    photo = image(50, 70)
    conversation = [user(photo, "what digit is this?"), assistant("seven")]
    templated = fuyu_processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    direct = fuyu_processor(images=photo, text="what digit is this?", answers="seven")
    masks = templated.pop("assistant_masks")
    assert_same(templated, direct)
    torch.testing.assert_close(masks.bool(), direct["labels"] != IGNORE)  # exactly the answer and its EOS


def test_multi_turn_layout_labels_and_assistant_mask(fuyu_processor):
    photo = image(40, 40)
    conversation = [user(photo, "what digit is this?"), assistant("seven"), user("is it seven?"), assistant("yes")]
    out = fuyu_processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    bos, eos, answer = ids(
        fuyu_processor, fuyu_processor.tokenizer.bos_token, fuyu_processor.tokenizer.eos_token, "<0x04>"
    )
    image_token, newline = ids(fuyu_processor, "|SPEAKER|", "|NEWLINE|")
    words = lambda text: fuyu_processor.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    block = ([image_token] * 3 + [newline]) * 3  # 40x40 in 16-pixel patches: 3x3
    first_answer, second_answer = words("seven") + [eos], words("yes") + [eos]
    expected = block + [bos] + words("what digit is this?") + [answer] + first_answer
    expected += words("is it seven?") + [answer] + second_answer
    assert out["input_ids"][0].tolist() == expected
    labelled = out["input_ids"][0][out["labels"][0] != IGNORE].tolist()
    assert labelled == first_answer + second_answer
    torch.testing.assert_close(out["assistant_masks"].bool(), out["labels"] != IGNORE)


def test_a_completion_rendered_on_its_own_is_the_answer_and_eos(fuyu_processor):
    """What a prompt-completion collator (trl) sends for the completion: no BOS, no begin-of-answer token."""
    completion = fuyu_processor.apply_chat_template([assistant("seven")], tokenize=False)
    out = fuyu_processor(text=completion)
    words = fuyu_processor.tokenizer("seven", add_special_tokens=False)["input_ids"]
    assert out["input_ids"][0].tolist() == words + [fuyu_processor.tokenizer.eos_token_id]
    assert out["labels"][0].tolist() == out["input_ids"][0].tolist()


def test_right_padding_when_asked(fuyu_processor):
    photo = image(40, 40)
    out = fuyu_processor(images=[photo, photo], text=["what digit is this?", "seven"], padding_side="right")
    left = fuyu_processor(images=[photo, photo], text=["what digit is this?", "seven"])
    for row in range(2):
        kept = left["input_ids"][row][left["attention_mask"][row].bool()]
        assert out["input_ids"][row][: len(kept)].tolist() == kept.tolist()
        assert out["attention_mask"][row][: len(kept)].all() and not out["attention_mask"][row][len(kept) :].any()
    with pytest.raises(ValueError, match="Unknown padding_side 'middle'"):
        fuyu_processor(images=photo, text="seven", padding_side="middle")


def test_typed_special_tokens_stay_refused_in_messages(fuyu_processor):
    with pytest.raises(ValueError, match="contains '<0x04>'"):
        fuyu_processor.apply_chat_template([user(image(20, 20), "a <0x04> b")], tokenize=True, return_dict=True)
    with pytest.raises(ValueError, match="not closed or not opened"):
        fuyu_processor(images=image(20, 20), text="a <answer> b")


def test_templates_are_saved_and_loaded_by_auto_processor(fuyu_processor, clip_processor, tmp_path):
    photo = image(50, 70)
    for name, processor, conversation in (
        ("fuyu", fuyu_processor, [user(photo, "what digit is this?"), assistant("seven")]),
        ("clip", clip_processor, [user(photo, "a photo of the digit seven")]),
    ):
        folder = tmp_path / name
        processor.save_pretrained(folder)
        assert (folder / "chat_template.jinja").read_text() == processor.chat_template
        loaded = AutoProcessor.from_pretrained(folder)
        assert type(loaded) is type(processor) and loaded.chat_template == processor.chat_template
        kwargs = dict(tokenize=True, return_dict=True, return_tensors="pt")
        assert_same(
            loaded.apply_chat_template(conversation, **kwargs), processor.apply_chat_template(conversation, **kwargs)
        )


def test_clip_template_gives_the_text_tower_its_text(clip_processor):
    photo = image(50, 70)
    conversation = [user(photo, "a photo of the digit seven")]
    assert clip_processor.apply_chat_template(conversation) == "a photo of the digit seven"
    templated = clip_processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
    assert_same(templated, clip_processor(images=photo, text="a photo of the digit seven", return_tensors="pt"))


@pytest.mark.parametrize(
    "patch_size, size", [(16, {"height": 64, "width": 64}), (30, {"height": 1080, "width": 1920})]
)
def test_vllm_token_counts_equal_what_the_processor_emits(fuyu_processor, patch_size, size):
    tokenizer = copy.deepcopy(fuyu_processor.tokenizer)
    tokenizer.model_max_length = 8192  # fuyu-8b's image size makes prompts of up to 2,346 image tokens here
    processor = MosaicFuyuProcessor(MosaicFuyuImageProcessor(patch_size=patch_size, size=size), tokenizer)
    sizes = [(1, 1), (15, 16), (16, 17), (100, 100), (300, 100), (500, 30), (213, 167), (1080, 1920), (2000, 900)]
    counted = processor._get_num_multimodal_tokens(image_sizes=sizes)
    for (height, width), tokens, patches in zip(sizes, counted.num_image_tokens, counted.num_image_patches):
        out = processor(images=image(height, width), text="what digit is this?", return_mm_token_type_ids=True)
        assert out["mm_token_type_ids"].sum().item() == tokens, (height, width)
        assert out["image_patches_mask"].sum().item() == patches, (height, width)
