"""MosaicFuyuProcessor: token layout, several images, left padding, labels, errors, generation, pipeline."""

import json
import os
import subprocess
import sys

import PIL.Image
import pytest
import torch
from mosaic_vlm.modeling import MosaicFuyuConfig, MosaicFuyuForCausalLM
from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor, train_bpe_tokenizer
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS
from test_clip_remote import BLOCK_MOSAIC_VLM
from transformers import AutoProcessor, pipeline
from transformers.models.fuyu.processing_fuyu import scale_bbox_to_transformed_image, scale_point_to_transformed_image

FUYU_TOKENS = list(FUYU_SPECIAL_TOKENS)
TEXTS = ["what digit is this?", "seven", "three", "yes", "no", "is there a cat in the image?", "describe it",
         "find the cup at 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"]


@pytest.fixture(scope="module")
def fuyu_processor():
    tokenizer = train_bpe_tokenizer(TEXTS * 5, vocab_size=120, model_max_length=256, extra_special_tokens=FUYU_TOKENS)
    image_processor = MosaicFuyuImageProcessor(patch_size=16, size={"height": 64, "width": 64})
    return MosaicFuyuProcessor(image_processor=image_processor, tokenizer=tokenizer)


def ids(processor, *tokens):
    return [processor.tokenizer.convert_tokens_to_ids(token) for token in tokens]


def tiny_model(processor) -> MosaicFuyuForCausalLM:
    tokenizer = processor.tokenizer
    image_token, newline = ids(processor, "|SPEAKER|", "|NEWLINE|")
    config = MosaicFuyuConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, patch_size=16, image_token_id=image_token, image_newline_token_id=newline,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return MosaicFuyuForCausalLM._from_config(config, attn_implementation="sdpa").eval()


def test_one_image_goes_first_then_bos_prompt_and_begin_of_answer(fuyu_processor, photos):
    image_token, newline, answer = ids(fuyu_processor, "|SPEAKER|", "|NEWLINE|", "<0x04>")
    out = fuyu_processor(images=photos["coffee"], text="what digit is this?")  # 400x600 -> 42x64 -> 3x4 patches
    tokens = out["input_ids"][0].tolist()
    assert tokens[:15] == ([image_token] * 4 + [newline]) * 3
    prompt = fuyu_processor.tokenizer("what digit is this?", add_special_tokens=False)["input_ids"]
    assert tokens[15:] == [fuyu_processor.tokenizer.bos_token_id, *prompt, answer]
    assert out["image_patches"].shape == (1, 12, 16 * 16 * 3) and bool(out["image_patches_mask"].all())
    expected = fuyu_processor.image_processor(photos["coffee"])["image_patches"][0]
    assert torch.equal(out["image_patches"][0], expected)


def test_several_images_at_their_placeholders_and_left_padding(fuyu_processor, photos):
    image_token, newline = ids(fuyu_processor, "|SPEAKER|", "|NEWLINE|")
    out = fuyu_processor(
        images=[[photos["camera"], photos["coffee"]], []],
        text=["<image>describe it <image>", "is there a cat in the image?"],
    )
    first, second = out["input_ids"]
    mask = out["attention_mask"]
    assert mask[0].all() and not mask[1, 0] and mask[1, -1]  # the shorter row is left-padded
    assert int((first == image_token).sum()) == 16 + 12 and int((first == newline).sum()) == 4 + 3
    bos = fuyu_processor.tokenizer.bos_token_id
    assert first.tolist().index(bos) == 20  # after the leading 4x4 image block
    assert out["image_patches_mask"].sum(-1).tolist() == [28, 0]
    # every patch row ends with a newline: the token before each newline is an image token
    newline_positions = (first == newline).nonzero().flatten().tolist()
    assert all(first[position - 1] == image_token for position in newline_positions)


def test_labels_cover_the_answer_and_eos_only(fuyu_processor, photos):
    out = fuyu_processor(images=[photos["coffee"], photos["cat"]], text=["what digit is this?"] * 2, answers=["seven", "three"])
    for row, answer in enumerate(("seven", "three")):
        answer_ids = fuyu_processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
        labelled = out["labels"][row][out["labels"][row] != -100].tolist()
        assert labelled == [*answer_ids, fuyu_processor.tokenizer.eos_token_id]
        assert out["input_ids"][row, -len(labelled):].tolist() == labelled
    model = tiny_model(fuyu_processor)
    assert torch.isfinite(model(**out).loss)


def test_generation_is_post_processed_to_the_answer_only(fuyu_processor, photos):
    model = tiny_model(fuyu_processor)
    inputs = fuyu_processor(images=[photos["coffee"], photos["cat"]], text=["what digit is this?", "describe it"])
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    answers = fuyu_processor.post_process_image_text_to_text(generated)
    new_tokens = generated[:, inputs["input_ids"].shape[1]:]
    assert answers == [fuyu_processor.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]
    # the batch is left-padded: each sample alone generates the same tokens
    for row, image, prompt in ((0, photos["coffee"], "what digit is this?"), (1, photos["cat"], "describe it")):
        alone = fuyu_processor(images=image, text=prompt)
        assert torch.equal(model.generate(**alone, max_new_tokens=4, do_sample=False)[0, -4:], new_tokens[row])


def coordinate_span(processor, input_ids, kind):
    """The numbers between a row's open and close coordinate tokens."""
    opening, closing = ids(processor, *{"box": ("<0x00>", "<0x01>"), "point": ("<0x02>", "<0x03>")}[kind])
    tokens = input_ids.tolist()
    span = tokens[tokens.index(opening) + 1 : tokens.index(closing)]
    return [int(number) for number in processor.tokenizer.decode(span).replace(" ", "").split(",")]


def test_boxes_and_points_are_rescaled_as_fuyu_does_and_map_back(fuyu_processor, photos):
    # coffee is 400x600; the processor fits it into 64x64 -> 42x64, a scale of 42 / 400
    box, point = (100, 250, 301, 599), (333, 77)
    out = fuyu_processor(images=photos["coffee"], text=f"find the cup <box>{', '.join(map(str, box))}</box> "
                                                       f"at <point>{point[0]}, {point[1]}</point>")
    scale = 42 / 400
    assert coordinate_span(fuyu_processor, out["input_ids"][0], "box") == [int(v) for v in scale_bbox_to_transformed_image(*box, scale)]
    assert coordinate_span(fuyu_processor, out["input_ids"][0], "point") == [int(v) for v in scale_point_to_transformed_image(*point, scale)]

    # a generated answer holding that box and point maps back to original pixels, within Fuyu's rounding
    row = out["input_ids"][0].tolist()
    box_and_point = row[row.index(ids(fuyu_processor, "<0x00>")[0]) : row.index(ids(fuyu_processor, "<0x04>")[0])]
    generated = torch.tensor(row + box_and_point)  # the prompt, then "<box>...</box> at <point>...</point>"
    answer = fuyu_processor.post_process_image_text_to_text(generated[None], image_sizes=[(400, 600)])[0]
    box_text = answer[answer.index("<box>") + 5 : answer.index("</box>")]
    point_text = answer[answer.index("<point>") + 7 : answer.index("</point>")]
    tolerance = 2 / scale + 2  # one processed-pixel step, halved coordinates, truncation
    assert all(abs(a - b) <= tolerance for a, b in zip(map(int, box_text.split(", ")), box))
    assert all(abs(a - b) <= tolerance for a, b in zip(map(int, point_text.split(", ")), point))
    assert answer.startswith("<box>") and "at" in answer
    # without image sizes the processed coordinates come back as generated
    raw = fuyu_processor.post_process_image_text_to_text(generated[None])[0]
    assert raw.startswith(f"<box>{', '.join(map(str, coordinate_span(fuyu_processor, out['input_ids'][0], 'box')))}</box>")


@pytest.mark.parametrize(
    "text, message",
    [
        ("<box>10, 20, 500, 40</box>", "lies outside the 400x600"),
        ("<box>10, 700, 50, 710</box>", "lies outside the 400x600"),
        ("<box>50, 20, 10, 40</box>", "lies outside"),  # corners swapped
        ("<point>601, 10</point>", "lies outside the 400x600"),
        ("<box>1, 2, 3</box>", r"write it as <box>y1, x1, y2, x2</box>"),
        ("<point>a, b</point>", r"write it as <point>x, y</point>"),
    ],
)
def test_bad_boxes_and_points_raise_one_clear_error(fuyu_processor, photos, text, message):
    with pytest.raises(ValueError, match=message):
        fuyu_processor(images=photos["coffee"], text=text)


def test_a_box_needs_an_image(fuyu_processor):
    with pytest.raises(ValueError, match="has a <box> but no image"):
        fuyu_processor(text="find <box>1, 2, 3, 4</box>")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"images": [[1, 2]], "text": ["<image> only one placeholder"]}, "has 1 <image> placeholders but 2 images"),
        ({"images": None, "text": ["<image> no image"]}, "has 1 <image> placeholders but 0 images"),
        ({"images": [PIL.Image.new("RGB", (5, 5))] * 3, "text": ["a", "b"]}, "Got 3 images for 2 prompts"),
        ({"text": ["what digit is this?"] * 2, "answers": ["seven"]}, "Got 1 answers for 2 prompts"),
        ({"text": [" ".join(["describe it"] * 200)]}, "more than the tokenizer's model_max_length=256"),
        ({"text": []}, "The batch of prompts is empty"),
    ],
)
def test_bad_inputs_raise_one_clear_error(fuyu_processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fuyu_processor(**kwargs)


def test_save_load_pipeline_and_remote_code(fuyu_processor, photos, tmp_path):
    model = tiny_model(fuyu_processor)
    model.save_pretrained(tmp_path)
    fuyu_processor.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModelForCausalLM", "AutoModelForImageTextToText"} <= set(auto_map)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, MosaicFuyuProcessor) and reloaded.image_processor.patch_size == 16
    image = PIL.Image.fromarray(photos["coffee"])
    expected = model.generate(**fuyu_processor(images=image, text="what digit is this?"), max_new_tokens=3, do_sample=False)
    answer = fuyu_processor.post_process_image_text_to_text(expected)[0]

    generator = pipeline("image-text-to-text", model=str(tmp_path))
    result = generator(images=image, text="<image>what digit is this?", max_new_tokens=3, do_sample=False)
    assert result[0]["generated_text"].strip().endswith(answer)

    image.save(tmp_path / "coffee.png")
    script = BLOCK_MOSAIC_VLM + f"""
import PIL.Image, torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
folder = {str(tmp_path)!r}
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(images=PIL.Image.open(folder + "/coffee.png"), text="what digit is this?")
for auto_class in (AutoModelForCausalLM, AutoModelForImageTextToText):
    model = auto_class.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules")
    print(model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, -3:].tolist())
"""
    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:2] == [str(expected[0, -3:].tolist())] * 2
