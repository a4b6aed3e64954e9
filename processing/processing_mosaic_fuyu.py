"""Processor of the Fuyu-style family: a tokenizer plus `MosaicFuyuImageProcessor`.

Layout of one prompt, as adept/fuyu-8b reads it: the image blocks that come before any text, BOS, the prompt
(with an image block wherever an `<image>` placeholder stands), and the begin-of-answer token. One image and
no placeholder puts the image first, as Fuyu does. An image block is, per patch row, one image token per patch
and an image-newline token. The prompt's text is tokenized as written, whitespace included (a trailing "\n" is
a token of its own, `<0x0A>` in fuyu-8b's tokenizer). Token ids are built directly as tensors; batches are
left-padded (with the pad token, or EOS for a tokenizer without one: padding is masked out).

Images: one image per prompt (a list, or a 4-D array/tensor of shape (N, H, W, C) or (N, C, H, W) with one
image per prompt), one per `<image>` placeholder in the order they stand across the prompts, all images for a
single prompt, or a list of image lists (one list per prompt).

Model inputs: `input_ids`, `attention_mask`, `pixel_values` (the patches: batch, max patches, patch dim) and
`image_patches_mask` (batch, max patches), plus `labels` when `answers` are given (-100 everywhere but
the answer and its EOS).

A call without `images` (None) tokenizes the prompts as the tokenizer does on its own, as transformers'
`FuyuProcessor` does (no image block, no begin-of-answer token; `answers` are refused there); a prompt given an
empty image list gets the layout above without an image.

Boxes `<box>y1, x1, y2, x2</box>` and points `<point>x, y</point>` in a prompt are in pixels of the
prompt's first image. They are written as fuyu-8b reads and writes them (transformers 4.x `FuyuProcessor`):
each coordinate halved, scaled by the resize factor of the image's height and rounded, then one bare number
token per coordinate (no commas) between <0x00> and <0x01> (box: y1 x1 y2 x2) or <0x02> and <0x03> (point: x y).
A tokenizer without such a token for every number gets the numbers as space-separated text instead.
`post_process_image_text_to_text(..., image_sizes=...)` maps generated ones back to pixels as transformers'
`post_process_box_coordinates` does (2 * int(value / scale), scale the fit factor of the image).
`decode` and `batch_decode` are the tokenizer's (special tokens kept unless `skip_special_tokens=True`);
`post_process_image_text_to_text` gives the answers only.

Texts (prompts and answers) must be strings of valid Unicode; a special token typed into one (`|SPEAKER|`,
`<0x00>`, `<s>`, ...: the processor places them itself) and a `<box>` or `<point>` tag without its closing
tag are refused with a ValueError.
"""

import re
from typing import NamedTuple

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData, ProcessingKwargs, Unpack
from transformers.tokenization_utils_base import TextInput

from .fuyu_special_tokens import (
    BEGIN_OF_ANSWER_TOKEN,
    BOX_CLOSE_TOKEN,
    BOX_OPEN_TOKEN,
    FUYU_SPECIAL_TOKENS,
    IMAGE_NEWLINE_TOKEN,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN,
    POINT_CLOSE_TOKEN,
    POINT_OPEN_TOKEN,
)
from .image_processing_mosaic_fuyu import fit_scale, image_token_layout
from .mosaic_processing_common import MosaicProcessorMixin, check_texts, images_to_pil_list, wants_mm_token_type_ids

IGNORE_INDEX = -100
COORDINATE_TAG = re.compile(r"<(box|point)>(.*?)</\1>", re.DOTALL)
LONE_TAG = re.compile(r"</?(?:box|point)>")  # a tag left over once the whole <box>...</box> tags are taken out
COORDINATE_TOKENS = {"box": (BOX_OPEN_TOKEN, BOX_CLOSE_TOKEN), "point": (POINT_OPEN_TOKEN, POINT_CLOSE_TOKEN)}
COORDINATE_COUNT = {"box": 4, "point": 2}
COORDINATE_FORMATS = "boxes as <box>y1, x1, y2, x2</box> and points as <point>x, y</point>"
BARE_NUMBER = re.compile(r"[0-9]+")
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)  # an assistant turn in chat-rendered text
LONE_ANSWER_TAG = re.compile(r"</?answer>")

# Renders user and assistant turns into the text `__call__` reads: an `<image>` placeholder per image, the user's
# text, and each answer as <answer>...</answer> (the processor places BOS, the begin-of-answer token and EOS
# itself, so the rendered text holds no special token). A system message is prompt text before the first turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] in ('user', 'system') -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}<image>"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- generation -%}<answer>"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "</answer>{%- endgeneration -%}"
    "{%- else -%}{{ raise_exception('Unknown role ' ~ message['role'] ~ '; accepted: system, user, assistant.') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class Turn(NamedTuple):
    """A user turn and the answer after it, with where they stand in the prompt text (for offset mappings)."""

    user: str
    user_start: int
    answer: str | None  # None: the answer is to be generated
    answer_span: tuple[int, int] | None = None  # the answer text's characters; None when it is not in the prompt
    close_span: tuple[int, int] | None = None  # its closing </answer> tag, which stands for the EOS


def split_turns(prompt: str, index: int) -> list[Turn]:
    """A prompt as turns: the text before each <answer>...</answer> and that answer; text after the last answer
    (or a prompt without answers) is a last turn whose answer is to be generated. A conversation that ends with an
    answer has no such last turn."""
    turns, position = [], 0
    for match in [*ANSWER_TAG.finditer(prompt), None]:
        user = prompt[position : match.start() if match else len(prompt)]
        if tag := LONE_ANSWER_TAG.search(user):
            raise ValueError(f"Prompt {index} has a {tag.group()} that is not closed or not opened.")
        if match is None:
            if user or not turns:
                turns.append(Turn(user, position, None))
            break
        if IMAGE_PLACEHOLDER in match.group(1):
            raise ValueError(f"Prompt {index} has an {IMAGE_PLACEHOLDER} inside an answer; images go in user turns.")
        turns.append(Turn(user, position, match.group(1), match.span(1), (match.end(1), match.end())))
        position = match.end()
    return turns


def parse_coordinates(kind: str, text: str) -> list[float]:
    """The numbers of one `<box>` (y1, x1, y2, x2) or `<point>` (x, y) tag."""
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        values = []
    if len(values) != COORDINATE_COUNT[kind]:
        expected = "<box>y1, x1, y2, x2</box>" if kind == "box" else "<point>x, y</point>"
        raise ValueError(f"Cannot read <{kind}>{text}</{kind}>; write it as {expected} in pixels.")
    return values


def check_inside(kind: str, values: list[float], height: int, width: int) -> None:
    """Refuses a box or point that leaves the height x width image, or a box with its corners swapped."""
    ys, xs = (values[0::2], values[1::2]) if kind == "box" else ([values[1]], [values[0]])
    ordered = kind == "point" or (values[0] <= values[2] and values[1] <= values[3])
    if not (ordered and all(0 <= y <= height for y in ys) and all(0 <= x <= width for x in xs)):
        raise ValueError(
            f"The {kind} {values} lies outside the {height}x{width} (height x width) image; write "
            f"{COORDINATE_FORMATS} with 0 <= x <= width, 0 <= y <= height."
        )


def to_processed_coordinates(values: list[float], scale: float) -> list[int]:
    """Fuyu's mapping into the processed image (`scale_bbox_to_transformed_image`): round(value / 2 * scale)."""
    return [round(value / 2 * scale) for value in values]


def to_original_coordinates(values: list[int], scale: float) -> list[int]:
    """Fuyu's mapping back (`post_process_box_coordinates`): 2 * int(value / scale)."""
    return [2 * int(value / scale) for value in values]


def batch_patches(patches: list[tuple[int, torch.Tensor]], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, patches of one image) pairs, in order, -> `pixel_values` (batch, most patches in a row, patch_dim)
    with each row's images one after the other and zeros after them, and the mask of the real patches. One
    image for one row is returned as a view, without a copy."""
    if batch_size == 1 and len(patches) == 1:
        only = patches[0][1]
        return only.unsqueeze(0), torch.ones(1, len(only), dtype=torch.bool)
    counts = [0] * batch_size
    for row, image_patches in patches:
        counts[row] += len(image_patches)
    batch = torch.empty(batch_size, max(counts), patches[0][1].shape[-1])
    mask = torch.zeros(batch_size, max(counts), dtype=torch.bool)
    filled = [0] * batch_size
    for row, image_patches in patches:
        start, stop = filled[row], filled[row] + len(image_patches)
        batch[row, start:stop] = image_patches
        filled[row] = stop
    for row, stop in enumerate(filled):
        batch[row, stop:] = 0.0
        mask[row, :stop] = True
    return batch, mask


class MosaicFuyuProcessorKwargs(ProcessingKwargs, total=False):
    # defaults as `_defaults` on the kwargs class: every 5.x release reads them there (5.23 and later also take
    # class variables on the processor, which 5.20-5.22 ignore)
    _defaults = {"text_kwargs": {"padding": "longest", "return_tensors": "pt"}}


class MosaicFuyuProcessor(MosaicProcessorMixin):
    valid_processor_kwargs = MosaicFuyuProcessorKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_token: str = IMAGE_TOKEN,
        image_newline_token: str = IMAGE_NEWLINE_TOKEN,
        begin_of_answer_token: str = BEGIN_OF_ANSWER_TOKEN,
        chat_template: str | None = None,
        **kwargs,
    ):
        self.image_token = image_token
        self.image_newline_token = image_newline_token
        self.begin_of_answer_token = begin_of_answer_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no token {token!r}; add it as a special token.")
        return token_id

    def _special_id(self, name: str, needed_for: str) -> int:
        """The id of the tokenizer's `name` token ("bos" or "eos")."""
        token_id = getattr(self.tokenizer, f"{name}_token_id")
        if token_id is None:
            raise ValueError(
                f"The tokenizer has no {name.upper()} token, which {needed_for}; set tokenizer.{name}_token."
            )
        return token_id

    def _typed_special_tokens(self) -> list[str]:
        """Tokens the processor places itself, refused in prompt and answer text."""
        placed = {self.image_token, self.image_newline_token, self.begin_of_answer_token}
        return sorted({*FUYU_SPECIAL_TOKENS, *placed, *self.tokenizer.all_special_tokens})

    def _images_per_prompt(self, images, prompts: list[str]) -> list[list]:
        """The images of each prompt, each as a flat list of PIL images (see the module docstring)."""
        if images is None:
            return [[] for _ in prompts]
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            images = list(images)  # (N, H, W, C) or (N, C, H, W): N images
        elif not isinstance(images, (list, tuple)):
            images = [images]
        nested = [isinstance(entry, (list, tuple)) for entry in images]
        if images and all(nested):
            if len(images) != len(prompts):
                raise ValueError(f"Got image lists for {len(images)} prompts but {len(prompts)} prompts.")
            return [images_to_pil_list(entry) if entry else [] for entry in images]
        if any(nested):
            raise ValueError("The images mix single images and image lists; pass one or the other.")
        if len(prompts) == 1:
            return [images_to_pil_list(images) if images else []]
        placeholders = [prompt.count(IMAGE_PLACEHOLDER) for prompt in prompts]
        if any(placeholders) and sum(placeholders) == len(images):  # in order, as many as each prompt's placeholders
            starts = [sum(placeholders[:index]) for index in range(len(prompts))]
            return [images_to_pil_list(images[start : start + count]) for start, count in zip(starts, placeholders)]
        if len(images) == len(prompts):
            return [images_to_pil_list(image) for image in images]
        raise ValueError(
            f"Got {len(images)} image(s) for {len(prompts)} prompts: pass one image per prompt, one per "
            f"{IMAGE_PLACEHOLDER} placeholder in order, or a list of image lists (one list per prompt)."
        )

    def _fit_scale(self, image_size: tuple[int, int]) -> float:
        """The resize factor on the way back, as transformers' `post_process_box_coordinates` takes it."""
        if not self.image_processor.do_resize:
            return 1.0
        size = self.image_processor.size
        return fit_scale(*image_size, size["height"], size["width"])

    def _coordinate_ids(self, numbers: list[int]) -> list[int]:
        """fuyu-8b's coordinates: one bare number token per number ("388", without commas or a word-start marker).
        A tokenizer without such a token for every number gets them as space-separated text."""
        ids = self.tokenizer.convert_tokens_to_ids([str(number) for number in numbers])
        if all(token_id is not None and token_id != self.tokenizer.unk_token_id for token_id in ids):
            return ids
        return self.tokenizer(" ".join(map(str, numbers)), add_special_tokens=False)["input_ids"]

    def _coordinate_values(self, ids: list[int]) -> list[int]:
        """The numbers written by `_coordinate_ids` (or as any text, commas allowed) between two coordinate tokens."""
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        if all(isinstance(token, str) and BARE_NUMBER.fullmatch(token) for token in tokens):
            return [int(token) for token in tokens]  # one token per number: "12" "34" decodes as "1234"
        return [int(number) for number in re.findall(r"[0-9]+", self.tokenizer.decode(ids))]

    def _text_ids(
        self, text: str, start: int, index: int, first_image: tuple[tuple[int, int], float] | None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of a piece of prompt `index` that starts at character `start`, whitespace kept, and each token's
        (start, end) characters in the prompt; its boxes and points are checked against the (height, width) of the
        prompt's first image, rescaled by that image's resize factor (processed / original height, as transformers'
        Fuyu image processor reports it in `image_scale_factors`) and wrapped in their open/close tokens (which
        stand for the whole tag's characters); `first_image` holds both. Each piece of text between tags is
        tokenized on its own, as fuyu-8b's processor does."""
        ids, offsets, position = [], [], 0
        for match in [*COORDINATE_TAG.finditer(text), None]:
            plain = text[position : match.start() if match else len(text)]
            if lone_tag := LONE_TAG.search(plain):
                raise ValueError(
                    f"Prompt {index} has a {lone_tag.group()} that is not closed or not opened; "
                    f"write {COORDINATE_FORMATS}."
                )
            if plain:
                encoded = self.tokenizer(plain, add_special_tokens=False, return_offsets_mapping=True)
                ids += encoded["input_ids"]
                offsets += [(start + position + a, start + position + b) for a, b in encoded["offset_mapping"]]
            if match is None:
                break
            kind, values = match.group(1), parse_coordinates(match.group(1), match.group(2))
            if first_image is None:
                raise ValueError(f"Prompt {index} has a <{kind}> but no image it could refer to.")
            image_size, scale = first_image
            check_inside(kind, values, *image_size)
            open_token, close_token = COORDINATE_TOKENS[kind]
            numbers = self._coordinate_ids(to_processed_coordinates(values, scale))
            ids += [self._token_id(open_token), *numbers, self._token_id(close_token)]
            offsets += [(start + match.start(), start + match.end())] * (len(numbers) + 2)
            position = match.end()
        return ids, offsets

    def _layout(self, turns: list[Turn], prompt_images: list, index: int) -> list[tuple]:
        """Prompt `index` as the items of its layout, in order: ("text", piece, its first character), ("image",)
        where a placeholder stands, ("answer", turn) after each user turn; ("continuation", turn) first for a text
        that begins with an answer."""
        placeholders = sum(turn.user.count(IMAGE_PLACEHOLDER) for turn in turns)
        items = []
        if placeholders == 0 and len(prompt_images) == 1:
            items.append(("image",))  # one image without a placeholder goes first, as in Fuyu
        elif placeholders != len(prompt_images):
            raise ValueError(
                f"Prompt {index} has {placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(prompt_images)} images; "
                "give one image per placeholder."
            )
        if not prompt_images and not turns[0].user and turns[0].answer is not None:
            # a text that begins with an answer continues a prompt tokenized on its own (a prompt-completion
            # collator's completion): the answer and its EOS only, no BOS or begin-of-answer token
            items.append(("continuation", turns[0]))
            turns = turns[1:]
        for turn in turns:
            position = turn.user_start
            pieces = turn.user.split(IMAGE_PLACEHOLDER)
            for number, piece in enumerate(pieces):
                if piece:
                    items.append(("text", piece, position))
                position += len(piece) + len(IMAGE_PLACEHOLDER)
                if number < len(pieces) - 1:
                    items.append(("image",))
            items.append(("answer", turn))
        return items

    def _text_only_ids(
        self, prompt: str, index: int, add_special_tokens: bool
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Prompt `index` of a call without images, tokenized as the tokenizer does on its own (as transformers'
        FuyuProcessor does): no image block, no begin-of-answer token; with each token's characters. A box or
        point in it refers to no image."""
        if tag := LONE_TAG.search(prompt):
            raise ValueError(f"Prompt {index} has a {tag.group()} but no image it could refer to.")
        encoded = self.tokenizer(prompt, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return torch.tensor(encoded["input_ids"], dtype=torch.long), [
            tuple(pair) for pair in encoded["offset_mapping"]
        ]

    def _image_prompts(self, layouts, images_per_prompt, bos_id: int, images_kwargs: dict):
        """Each prompt's ids in Fuyu's layout (see the module docstring), labels (-100 but on the answers and their
        EOS) and each token's (start, end) characters in the prompt ((0, 0) for tokens the processor places; an
        answer's EOS stands for its closing tag), and (row, patches of one image) pairs in order."""
        flat_images = [image for entry in images_per_prompt for image in entry]
        processed = (
            self.image_processor(flat_images, **images_kwargs)
            if flat_images
            else {"pixel_values": [], "patch_grids": [], "image_sizes": [], "resized_sizes": []}
        )
        image_token_id, newline_id = self._token_id(self.image_token), self._token_id(self.image_newline_token)
        answer_id = self._token_id(self.begin_of_answer_token)
        with_answers = any(
            item[0] != "text" and item[0] != "image" and item[1].answer is not None
            for layout in layouts
            for item in layout
        )
        eos_id = self._special_id("eos", "ends every answer") if with_answers else None

        sequences, label_sequences, offset_sequences, patches = [], [], [], []
        next_image = 0
        for index, (layout, prompt_images) in enumerate(zip(layouts, images_per_prompt)):
            pieces = []  # (ids, their characters or None for placed tokens, whether they are an answer's)
            first_image, bos_placed = None, False
            if prompt_images:
                image_size = processed["image_sizes"][next_image]
                first_image = image_size, processed["resized_sizes"][next_image][0] / image_size[0]
            for item in layout:
                if item[0] == "continuation":
                    bos_placed = True
                if item[0] in ("text", "answer") and not bos_placed:
                    pieces.append(([bos_id], None, False))
                    bos_placed = True
                if item[0] == "text":
                    pieces.append((*self._text_ids(item[1], item[2], index, first_image), False))
                elif item[0] == "image":
                    rows, cols = processed["patch_grids"][next_image]
                    pieces.append((image_token_layout(rows, cols, image_token_id, newline_id).tolist(), None, False))
                    patches.append((index, processed["pixel_values"][next_image]))
                    next_image += 1
                else:
                    turn = item[1]
                    if item[0] == "answer":
                        pieces.append(([answer_id], None, False))
                    if turn.answer is not None:
                        encoded = self.tokenizer(turn.answer, add_special_tokens=False, return_offsets_mapping=True)
                        in_text = turn.answer_span is not None  # the answer stands in the prompt text
                        start = turn.answer_span[0] if in_text else 0
                        answer_offsets = [(start + a, start + b) for a, b in encoded["offset_mapping"]]
                        pieces.append((encoded["input_ids"], answer_offsets if in_text else None, True))
                        pieces.append(([eos_id], [turn.close_span] if in_text else None, True))
            ids = [token for piece_ids, _, _ in pieces for token in piece_ids]
            labelled = [answer for piece_ids, _, answer in pieces for _ in piece_ids]
            offsets = [pair for piece_ids, chars, _ in pieces for pair in (chars or [(0, 0)] * len(piece_ids))]
            sequences.append(torch.tensor(ids, dtype=torch.long))
            label_sequences.append(torch.where(torch.tensor(labelled, dtype=torch.bool), sequences[-1], IGNORE_INDEX))
            offset_sequences.append(offsets)
        return sequences, label_sequences, offset_sequences, patches, with_answers

    def _padded_length(self, lengths: list[int], text_kwargs: dict) -> int:
        """The length every row is left-padded to, by the text kwargs `padding` and `max_length`. Prompts are never
        truncated: a prompt longer than `max_length` is refused."""
        padding, longest = text_kwargs.get("padding"), max(lengths)
        if padding == "max_length":
            max_length = text_kwargs.get("max_length") or self.tokenizer.model_max_length
            if longest > max_length:
                raise ValueError(
                    f"A prompt takes {longest} tokens with its images, more than max_length={max_length} (prompts are "
                    "never truncated); shorten it or raise max_length."
                )
            return max_length
        if padding in (True, "longest"):
            return longest
        if padding in (False, "do_not_pad"):
            if len(set(lengths)) > 1:
                raise ValueError(
                    f"The prompts take different numbers of tokens ({lengths}) and padding is off; pass "
                    "padding=True to left-pad them to the longest."
                )
            return longest
        raise ValueError(f"Unknown padding {padding!r}; pass True or 'longest', 'max_length' or False.")

    def __call__(
        self,
        images: ImageInput | list[list[ImageInput]] | None = None,
        text: TextInput | list[TextInput] | None = None,
        answers: TextInput | list[TextInput] | None = None,
        **kwargs: Unpack[MosaicFuyuProcessorKwargs],
    ) -> BatchFeature:
        """`images` and `text` as in the module docstring; `answers` (one per prompt) add `labels`. Image kwargs go
        to the image processor; of the text kwargs, `padding` ("longest" by default, "max_length" with
        `max_length`, or False), `max_length`, `add_special_tokens` (calls without images) and `return_tensors`
        ("pt" by default), `padding_side` ("left" by default, "right" for training collators),
        `return_mm_token_type_ids` (1 on image-block tokens) and `return_offsets_mapping` (each token's characters
        in its prompt, for `apply_chat_template(..., return_assistant_tokens_mask=True)`) apply. Answers may also
        come inside the text as <answer>...</answer> after each user turn, as the chat template renders a
        conversation."""
        if text is None:
            raise ValueError("MosaicFuyuProcessor needs `text` (a prompt or a list of prompts).")
        output_kwargs = self._merge_kwargs(
            MosaicFuyuProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs = output_kwargs["text_kwargs"]
        typed_special_tokens = self._typed_special_tokens()
        prompts = check_texts(text, "Prompt", typed_special_tokens)
        if not prompts:
            raise ValueError("The batch of prompts is empty.")
        answer_texts = None if answers is None else check_texts(answers, "Answer", typed_special_tokens)
        if answer_texts is not None and len(answer_texts) != len(prompts):
            raise ValueError(f"Got {len(answer_texts)} answers for {len(prompts)} prompts.")
        turns_per_prompt = [split_turns(prompt, index) for index, prompt in enumerate(prompts)]
        chat_rendered = any(turn.answer is not None for turns in turns_per_prompt for turn in turns)
        if answer_texts is not None:
            if chat_rendered:
                raise ValueError("Pass answers either as `answers` or as <answer>...</answer> in the text, not both.")
            turns_per_prompt = [[Turn(prompt, 0, answer)] for prompt, answer in zip(prompts, answer_texts)]
        images_per_prompt = self._images_per_prompt(images, prompts)
        layouts = [
            self._layout(turns, prompt_images, index)
            for index, (turns, prompt_images) in enumerate(zip(turns_per_prompt, images_per_prompt))
        ]
        bos_id = self._special_id("bos", "starts every prompt")  # checked on every call, with images or without
        if images is None and answer_texts is None and not chat_rendered:
            add_special_tokens = text_kwargs.get("add_special_tokens", True)
            sequences, offset_sequences = zip(
                *(self._text_only_ids(prompt, index, add_special_tokens) for index, prompt in enumerate(prompts))
            )
            label_sequences, patches, with_answers = None, [], False
        else:
            if images is None and answer_texts is not None:
                raise ValueError(
                    "`answers` need `images`: without them the prompts are only tokenized as the tokenizer does "
                    "(as in transformers' FuyuProcessor); pass an empty image list per prompt for text-only "
                    "training rows."
                )
            sequences, label_sequences, offset_sequences, patches, with_answers = self._image_prompts(
                layouts, images_per_prompt, bos_id, output_kwargs["images_kwargs"]
            )
        tokenizer = self.tokenizer
        for index, ids in enumerate(sequences):
            if len(ids) > tokenizer.model_max_length:
                raise ValueError(
                    f"Prompt {index} takes {len(ids)} tokens with its images, more than the tokenizer's "
                    f"model_max_length={tokenizer.model_max_length}; shorten it or use smaller images."
                )

        length = self._padded_length([len(ids) for ids in sequences], text_kwargs)
        # padding is masked out, so any id does: the pad token's, else EOS's (a tokenizer may have no pad token)
        pad_id = next(
            (token_id for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id) if token_id is not None), 0
        )
        padding_side = text_kwargs.get("padding_side") or "left"  # left by default: generation continues the rows
        if padding_side not in ("left", "right"):
            raise ValueError(f"Unknown padding_side {padding_side!r}; pass 'left' or 'right'.")
        input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros(len(prompts), length, dtype=torch.long)
        placed = [
            slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids)) for ids in sequences
        ]
        for row, (ids, where) in enumerate(zip(sequences, placed)):
            input_ids[row, where] = ids
            attention_mask[row, where] = 1
        data = {"input_ids": input_ids, "attention_mask": attention_mask}
        if text_kwargs.get("return_offsets_mapping"):  # each token's characters in its prompt; (0, 0) if placed
            data["offset_mapping"] = torch.zeros(len(prompts), length, 2, dtype=torch.long)
            for row, (offsets, where) in enumerate(zip(offset_sequences, placed)):
                data["offset_mapping"][row, where] = torch.tensor(offsets, dtype=torch.long).view(-1, 2)
        if wants_mm_token_type_ids(kwargs):  # 1 on the image blocks' tokens (patches and newlines)
            image_ids = torch.tensor([self._token_id(self.image_token), self._token_id(self.image_newline_token)])
            data["mm_token_type_ids"] = torch.isin(input_ids, image_ids).long() * attention_mask
        if patches:
            data["pixel_values"], data["image_patches_mask"] = batch_patches(patches, len(prompts))
        if with_answers:
            data["labels"] = torch.full((len(prompts), length), IGNORE_INDEX, dtype=torch.long)
            for row, (labels, where) in enumerate(zip(label_sequences, placed)):
                data["labels"][row, where] = labels
        return BatchFeature(data, tensor_type=text_kwargs.get("return_tensors"))

    @property
    def model_input_names(self) -> list[str]:
        """What `__call__` returns for the model (`labels` aside, with `answers`): the processor builds the token ids
        and mask itself, so the tokenizer's own input names (token_type_ids, ...) do not apply."""
        return ["input_ids", "attention_mask", "pixel_values", "image_patches_mask"]

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Tokens (patches and row newlines) and patch rows of each (height, width) image, as `__call__` emits them
        (vLLM counts image tokens with this)."""
        if image_sizes is None:
            return MultiModalData()
        grids = [self.image_processor.patch_grid_of(height, width) for height, width in image_sizes]
        return MultiModalData(
            num_image_tokens=[rows * (cols + 1) for rows, cols in grids],
            num_image_patches=[rows * cols for rows, cols in grids],
        )

    def post_process_image_text_to_text(
        self, generated_ids, skip_special_tokens: bool = True, image_sizes=None, **kwargs
    ) -> list[str]:
        """The generated answers only: each row decoded after its last begin-of-answer token. Boxes and points
        (fuyu-8b's <0x00> y1 x1 y2 x2 <0x01> and <0x02> x y <0x03>) come out as `<box>y1, x1, y2, x2</box>` /
        `<point>x, y</point>`; given `image_sizes` (the original (height, width) of each row's image) they are
        mapped back to original pixels."""
        answer_id = self._token_id(self.begin_of_answer_token)
        rows = torch.as_tensor(generated_ids)
        if image_sizes is not None and len(image_sizes) != len(rows):
            raise ValueError(f"Got {len(image_sizes)} image sizes for {len(rows)} generated rows.")
        answers = []
        for row_index, row in enumerate(rows):
            positions = (row == answer_id).nonzero()
            start = int(positions[-1]) + 1 if len(positions) else 0
            scale = None if image_sizes is None else self._fit_scale(tuple(image_sizes[row_index]))
            answers.append(self._decode_with_coordinates(row[start:].tolist(), scale, skip_special_tokens))
        return answers

    def _decode_with_coordinates(self, ids: list[int], scale: float | None, skip_special_tokens: bool) -> str:
        """Decodes ids, writing each well-formed open ... close coordinate span as a `<box>` or `<point>` tag,
        mapped back to original pixels when `scale` is given."""
        spans = {
            self._token_id(opening): (kind, self._token_id(closing))
            for kind, (opening, closing) in COORDINATE_TOKENS.items()
        }
        pieces, plain, position = [], [], 0
        while position < len(ids):
            kind, close_id = spans.get(ids[position], (None, None))
            end = ids.index(close_id, position + 1) if close_id in ids[position + 1 :] else None
            values = [] if end is None else self._coordinate_values(ids[position + 1 : end])
            if end is None or len(values) != COORDINATE_COUNT[kind]:  # plain text, or a malformed span
                plain.append(ids[position])
                position += 1
                continue
            values = values if scale is None else to_original_coordinates(values, scale)
            pieces += [
                self.tokenizer.decode(plain, skip_special_tokens=skip_special_tokens),
                f"<{kind}>{', '.join(map(str, values))}</{kind}>",
            ]
            plain, position = [], end + 1
        pieces.append(self.tokenizer.decode(plain, skip_special_tokens=skip_special_tokens))
        return " ".join(piece.strip() for piece in pieces if piece.strip())
