"""MosaicFuyuProcessor: token layout, several images, left padding, labels, errors, generation, pipeline."""

import copy
import json
import os
import re
import subprocess
import sys

import PIL.Image
import pytest
import torch
from tiny import BLOCK_MOSAIC_VLM, FUYU_TEXTS, FUYU_TOKENS, tiny_fuyu_model
from transformers import AutoProcessor, pipeline
from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil
from transformers.models.fuyu.processing_fuyu import (
    TOKEN_BBOX_CLOSE_STRING,
    TOKEN_BBOX_OPEN_STRING,
    TOKEN_POINT_CLOSE_STRING,
    TOKEN_POINT_OPEN_STRING,
    FuyuProcessor,
    _replace_string_repr_with_token_tags,
    _segment_prompt_into_text_token_conversions,
    construct_full_unpacked_stream,
    scale_bbox_to_transformed_image,
    scale_point_to_transformed_image,
)

from mosaic_vlm.processing import (
    MosaicFuyuImageProcessor,
    MosaicFuyuProcessor,
    train_bpe_tokenizer,
    train_fuyu_tokenizer,
)


@pytest.fixture(scope="module")
def fuyu_processor():
    tokenizer = train_bpe_tokenizer(
        FUYU_TEXTS * 5, vocab_size=120, model_max_length=256, extra_special_tokens=FUYU_TOKENS
    )
    image_processor = MosaicFuyuImageProcessor(patch_size=16, size={"height": 64, "width": 64})
    return MosaicFuyuProcessor(image_processor=image_processor, tokenizer=tokenizer)


def ids(processor, *tokens):
    return [processor.tokenizer.convert_tokens_to_ids(token) for token in tokens]


def test_one_image_goes_first_then_bos_prompt_and_begin_of_answer(fuyu_processor, photos):
    image_token, newline, answer = ids(fuyu_processor, "|SPEAKER|", "|NEWLINE|", "<0x04>")
    out = fuyu_processor(images=photos["coffee"], text="what digit is this?")  # 400x600 -> 42x64 -> 3x4 patches
    tokens = out["input_ids"][0].tolist()
    assert tokens[:15] == ([image_token] * 4 + [newline]) * 3
    prompt = fuyu_processor.tokenizer("what digit is this?", add_special_tokens=False)["input_ids"]
    assert tokens[15:] == [fuyu_processor.tokenizer.bos_token_id, *prompt, answer]
    assert out["pixel_values"].shape == (1, 12, 16 * 16 * 3) and bool(out["image_patches_mask"].all())
    expected = fuyu_processor.image_processor(photos["coffee"])["pixel_values"][0]
    assert torch.equal(out["pixel_values"][0], expected)


def test_several_images_at_their_placeholders_and_left_padding(fuyu_processor, photos):
    image_token, newline = ids(fuyu_processor, "|SPEAKER|", "|NEWLINE|")
    out = fuyu_processor(
        images=[[photos["camera"], photos["coffee"]], []],
        text=["<image>describe it <image>", "is there a cat in the image?"],
    )
    first = out["input_ids"][0]
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
    out = fuyu_processor(
        images=[photos["coffee"], photos["cat"]], text=["what digit is this?"] * 2, answers=["seven", "three"]
    )
    for row, answer in enumerate(("seven", "three")):
        answer_ids = fuyu_processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
        labelled = out["labels"][row][out["labels"][row] != -100].tolist()
        assert labelled == [*answer_ids, fuyu_processor.tokenizer.eos_token_id]
        assert out["input_ids"][row, -len(labelled) :].tolist() == labelled
    model = tiny_fuyu_model(fuyu_processor)
    assert torch.isfinite(model(**out).loss)


def test_generation_is_post_processed_to_the_answer_only(fuyu_processor, photos):
    model = tiny_fuyu_model(fuyu_processor)
    inputs = fuyu_processor(images=[photos["coffee"], photos["cat"]], text=["what digit is this?", "describe it"])
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    answers = fuyu_processor.post_process_image_text_to_text(generated)
    new_tokens = generated[:, inputs["input_ids"].shape[1] :]
    assert answers == [fuyu_processor.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]
    # the batch is left-padded: each sample alone generates the same tokens
    for row, image, prompt in ((0, photos["coffee"], "what digit is this?"), (1, photos["cat"], "describe it")):
        alone = fuyu_processor(images=image, text=prompt)
        assert torch.equal(model.generate(**alone, max_new_tokens=4, do_sample=False)[0, -4:], new_tokens[row])


def test_a_call_without_images_is_the_tokenizers_encoding(fuyu_processor):
    """As transformers' FuyuProcessor: no image block and no begin-of-answer token; rows are still left-padded."""
    prompts = ["what digit is this?", "seven"]
    out = fuyu_processor(text=prompts)
    for row, prompt in enumerate(prompts):
        expected = fuyu_processor.tokenizer(prompt)["input_ids"]
        assert out["input_ids"][row][out["attention_mask"][row].bool()].tolist() == expected
    assert set(out) == {"input_ids", "attention_mask"} and not out["attention_mask"][1, 0]
    # the processor's decode is the tokenizer's: special tokens kept unless asked otherwise
    assert fuyu_processor.batch_decode(out["input_ids"]) == fuyu_processor.tokenizer.batch_decode(out["input_ids"])


def test_text_kwargs_pad_and_image_kwargs_reach_the_image_processor(fuyu_processor, photos):
    longest = fuyu_processor(images=[photos["coffee"], photos["cat"]], text=["what digit is this?", "seven"])
    padded = fuyu_processor(
        images=[photos["coffee"], photos["cat"]],
        text=["what digit is this?", "seven"],
        padding="max_length",
        max_length=40,
    )
    assert padded["input_ids"].shape == (2, 40)
    assert torch.equal(padded["input_ids"][:, -longest["input_ids"].shape[1] :], longest["input_ids"])
    assert int(padded["attention_mask"].sum()) == int(longest["attention_mask"].sum())  # left padding only
    # a size given with the call fits the image (400x600 -> 21x32: 2x2 patches) and scales the box with it
    box = (100, 250, 301, 599)
    out = fuyu_processor(
        images=photos["coffee"],
        text=f"find the cup <box>{', '.join(map(str, box))}</box>",
        size={"height": 32, "width": 32},
    )
    assert out["pixel_values"].shape == (1, 4, 16 * 16 * 3)
    assert coordinate_span(fuyu_processor, out["input_ids"][0], "box") == [
        int(v) for v in scale_bbox_to_transformed_image(*box, 21 / 400)
    ]


def coordinate_span(processor, input_ids, kind):
    """The numbers between a row's open and close coordinate tokens (space-separated text with this tokenizer,
    which has no token for most numbers)."""
    opening, closing = ids(processor, *{"box": ("<0x00>", "<0x01>"), "point": ("<0x02>", "<0x03>")}[kind])
    tokens = input_ids.tolist()
    span = tokens[tokens.index(opening) + 1 : tokens.index(closing)]
    return [int(number) for number in re.findall(r"[0-9]+", processor.tokenizer.decode(span))]


def test_boxes_and_points_are_rescaled_as_fuyu_does_and_map_back(fuyu_processor, photos):
    # coffee is 400x600; the processor fits it into 64x64 -> 42x64, a scale of 42 / 400
    box, point = (100, 250, 301, 599), (333, 77)
    out = fuyu_processor(
        images=photos["coffee"],
        text=f"find the cup <box>{', '.join(map(str, box))}</box> at <point>{point[0]}, {point[1]}</point>",
    )
    scale = 42 / 400
    assert coordinate_span(fuyu_processor, out["input_ids"][0], "box") == [
        int(v) for v in scale_bbox_to_transformed_image(*box, scale)
    ]
    assert coordinate_span(fuyu_processor, out["input_ids"][0], "point") == [
        int(v) for v in scale_point_to_transformed_image(*point, scale)
    ]

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
    assert raw.startswith(
        f"<box>{', '.join(map(str, coordinate_span(fuyu_processor, out['input_ids'][0], 'box')))}</box>"
    )


FUYU_8B_TEXTS = [
    "Generate a coco-style caption.",
    "When presented with a box, perform OCR to extract text contained within it.",
    "If provided with text, generate the corresponding bounding box.",
    "What is the highlighted text?",
    "find the cup at the left",
]


@pytest.fixture(scope="module")
def fuyu_8b_style():
    """Our processor with a stand-in for fuyu-8b's tokenizer (byte fallback, one token per number), and
    transformers' Fuyu image processor with the same size and patch size."""
    tokenizer = train_fuyu_tokenizer(FUYU_8B_TEXTS * 4, vocab_size=300)
    size, patch = {"height": 180, "width": 300}, 30
    processor = MosaicFuyuProcessor(MosaicFuyuImageProcessor(patch_size=patch, size=size), tokenizer)
    return processor, FuyuImageProcessorPil(size=size, patch_size={"height": patch, "width": patch})


def transform_coordinates_and_tokenize(prompt: str, scale_factor: float, tokenizer) -> list[int]:
    """transformers 4.x's `_transform_coordinates_and_tokenize` (fuyu-8b's prompt format), rebuilt from the helpers
    that 5.23 still ships: text between tags tokenized as it stands, each coordinate one bare number token."""
    vocab = tokenizer.get_vocab()
    ids = []
    for text, is_coordinates in _segment_prompt_into_text_token_conversions(
        _replace_string_repr_with_token_tags(prompt)
    ):
        if not is_coordinates:
            ids += tokenizer(text, add_special_tokens=False).input_ids
            continue
        numbers = [float(number.strip()) for number in text.split(",")]
        if len(numbers) == 2:
            tags = TOKEN_POINT_OPEN_STRING, TOKEN_POINT_CLOSE_STRING
            scaled = scale_point_to_transformed_image(*numbers, scale_factor)
        else:
            tags = TOKEN_BBOX_OPEN_STRING, TOKEN_BBOX_CLOSE_STRING
            scaled = scale_bbox_to_transformed_image(*numbers, scale_factor)
        ids += [vocab[tags[0]], *(vocab[str(number)] for number in scaled), vocab[tags[1]]]
    return ids


def fuyu_8b_input_ids(image_processor, tokenizer, image, prompt: str) -> list[int]:
    """transformers 4.x FuyuProcessor's input_ids for one image and one prompt: the image block of transformers'
    image processor, then BOS, the prompt and begin-of-answer, joined by `construct_full_unpacked_stream`."""
    processed = image_processor(image, return_tensors="np")
    canvas = torch.from_numpy(processed["images"][0][0])  # (3, 180, 300): padded to the full size
    image_ids = image_processor.preprocess_with_tokenizer_info(
        image_input=canvas[None, None],  # (batch 1, subsequence 1, 3, 180, 300)
        image_present=torch.ones(1, 1, 1),
        image_unpadded_h=torch.tensor(processed["image_unpadded_heights"]),
        image_unpadded_w=torch.tensor(processed["image_unpadded_widths"]),
        image_placeholder_id=tokenizer.convert_tokens_to_ids("|SPEAKER|"),
        image_newline_id=tokenizer.convert_tokens_to_ids("|NEWLINE|"),
        variable_sized=True,
    )["image_input_ids"]
    scale_factor = float(processed["image_scale_factors"][0][0])
    prompt_ids = [
        tokenizer.bos_token_id,
        *transform_coordinates_and_tokenize(prompt, scale_factor, tokenizer),
        tokenizer.convert_tokens_to_ids("<0x04>"),
    ]
    stream = construct_full_unpacked_stream(
        num_real_text_tokens=[[len(prompt_ids)]],
        input_stream=torch.tensor([[prompt_ids]]),
        image_tokens=image_ids,
        batch_size=1,
    )
    return stream[0].tolist()


def fuyu_8b_image(photos, name: str) -> PIL.Image.Image:
    """A photo, or the cat at 312x400 (height x width): fitted into 180x300 its height becomes int(312 * 180 / 312)
    = 179, so the height's resize factor (coordinates in) differs from the fit factor (coordinates out)."""
    if name == "cat-312x400":
        return PIL.Image.fromarray(photos["cat"]).resize((400, 312), PIL.Image.BICUBIC)
    return PIL.Image.fromarray(photos[name])


FUYU_8B_IMAGES = ["coffee", "cat", "camera", "cat-312x400"]  # 400x600 RGB, 300x451 RGB, 512x512 grayscale, 312x400


@pytest.mark.parametrize("name", FUYU_8B_IMAGES)
@pytest.mark.parametrize(
    "prompt",
    [
        "Generate a coco-style caption.\n",
        "What is the highlighted text?",
        "  find the cup  at the left\n\n",
        "",
        "When presented with a box, perform OCR to extract text contained within it.\n<box>100, 150, 300, 400</box>",
        "<box>0, 0, 300, 400</box> and <point>120, 80</point> find the cup",
        "find the cup at <point>399.5, 0.4</point>\n",
    ],
)
def test_prompts_match_fuyu_8b_token_for_token(fuyu_8b_style, photos, name, prompt):
    processor, image_processor = fuyu_8b_style
    image = fuyu_8b_image(photos, name)
    expected = fuyu_8b_input_ids(image_processor, processor.tokenizer, image, prompt)
    assert processor(images=image, text=prompt)["input_ids"][0].tolist() == expected
    assert processor(images=image, text="<image>" + prompt)["input_ids"][0].tolist() == expected
    if prompt.endswith("\n"):  # the trailing newline is kept, as fuyu-8b's byte token
        assert expected[-2] == processor.tokenizer.convert_tokens_to_ids("<0x0A>")


def test_fuyu_8b_boxes_and_points_map_back_as_transformers_does(fuyu_8b_style, photos):
    processor, image_processor = fuyu_8b_style
    tokenizer = processor.tokenizer
    reference = FuyuProcessor(image_processor=image_processor, tokenizer=copy.deepcopy(tokenizer))
    box_open, box_close, point_open, point_close = ids(processor, "<0x00>", "<0x01>", "<0x02>", "<0x03>")
    words = tokenizer("find the cup", add_special_tokens=False).input_ids
    # fuyu-8b's answer: text, a box y1 x1 y2 x2 and a point x y, one number token per coordinate
    answer = [
        *words,
        box_open,
        *ids(processor, "22", "34", "68", "135"),
        box_close,
        *words,
        point_open,
        *ids(processor, "27", "99"),
        point_close,
    ]
    prompt = processor(images=photos["coffee"], text="find the cup")["input_ids"][0].tolist()
    for name in FUYU_8B_IMAGES:
        height, width = fuyu_8b_image(photos, name).height, fuyu_8b_image(photos, name).width
        ours = processor.post_process_image_text_to_text(
            torch.tensor([prompt + answer]), image_sizes=[(height, width)]
        )[0]
        theirs = reference.post_process_box_coordinates(
            [torch.tensor(answer)], target_sizes=torch.tensor([[height, width]])
        )[0]
        theirs = tokenizer.decode(theirs, skip_special_tokens=True)
        for tag in ("box", "point"):
            pattern = rf"<{tag}>([0-9, ]+)</{tag}>"
            assert len(re.findall(pattern, ours)) == 1 and re.findall(pattern, ours) == re.findall(pattern, theirs), (
                name,
                ours,
                theirs,
            )
        assert ours.startswith("find the cup <box>") and ours.count("find the cup") == 2
    # without image sizes: the coordinates as generated; coordinates written as text (commas too) are read as well
    assert processor.post_process_image_text_to_text(torch.tensor([prompt + answer]))[0] == (
        "find the cup <box>22, 34, 68, 135</box> find the cup <point>27, 99</point>"
    )
    as_text = [box_open, *tokenizer("22, 34, 68, 135", add_special_tokens=False).input_ids, box_close]
    assert (
        processor.post_process_image_text_to_text(torch.tensor([prompt + as_text]))[0] == "<box>22, 34, 68, 135</box>"
    )


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
        (
            {"images": [[PIL.Image.new("RGB", (5, 5))] * 2], "text": ["<image> only one placeholder"]},
            "has 1 <image> placeholders but 2 images",
        ),
        ({"images": None, "text": ["<image> no image"]}, "has 1 <image> placeholders but 0 images"),
        ({"images": [PIL.Image.new("RGB", (5, 5))] * 3, "text": ["a", "b"]}, r"Got 3 image\(s\) for 2 prompts"),
        ({"text": ["what digit is this?"] * 2, "answers": ["seven"]}, "Got 1 answers for 2 prompts"),
        ({"text": [" ".join(["describe it"] * 200)]}, "more than the tokenizer's model_max_length=256"),
        ({"text": []}, "The batch of prompts is empty"),
        ({"text": ["what digit is this?"], "answers": ["seven"]}, "`answers` need `images`"),
        (
            {"images": [PIL.Image.new("RGB", (5, 5))] * 2, "text": ["what digit is this?", "seven"], "padding": False},
            "different numbers of tokens .* and padding is off",
        ),
        (
            {
                "images": PIL.Image.new("RGB", (5, 5)),
                "text": "what digit is this?",
                "padding": "max_length",
                "max_length": 4,
            },
            "more than max_length=4",
        ),
        (
            {
                "images": PIL.Image.new("RGB", (5, 5)),
                "text": "seven",
                "padding": True,
                "text_kwargs": {"padding": True},
            },
            "Keyword argument padding was passed two times",
        ),
    ],
)
def test_bad_inputs_raise_one_clear_error(fuyu_processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fuyu_processor(**kwargs)


@pytest.mark.slow
def test_save_load_pipeline_and_remote_code(fuyu_processor, photos, tmp_path):
    model = tiny_fuyu_model(fuyu_processor)
    model.save_pretrained(tmp_path)
    fuyu_processor.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModelForCausalLM", "AutoModelForImageTextToText"} <= set(auto_map)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, MosaicFuyuProcessor) and reloaded.image_processor.patch_size == 16
    image = PIL.Image.fromarray(photos["coffee"])
    expected = model.generate(
        **fuyu_processor(images=image, text="what digit is this?"), max_new_tokens=3, do_sample=False
    )
    answer = fuyu_processor.post_process_image_text_to_text(expected)[0]

    generator = pipeline("image-text-to-text", model=str(tmp_path))
    result = generator(images=image, text="<image>what digit is this?", max_new_tokens=3, do_sample=False)
    assert result[0]["generated_text"].strip().endswith(answer)

    image.save(tmp_path / "coffee.png")
    script = (
        BLOCK_MOSAIC_VLM
        + f"""
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
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
        cwd=tmp_path,
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:2] == [str(expected[0, -3:].tolist())] * 2
