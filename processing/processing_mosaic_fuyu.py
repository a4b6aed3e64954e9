"""Processor of the Fuyu-style family: a tokenizer plus `MosaicFuyuImageProcessor`.

Layout of one prompt, as adept/fuyu-8b reads it: the image blocks that come before any text, BOS, the prompt
(with an image block wherever an `<image>` placeholder stands), and the begin-of-answer token. One image and
no placeholder puts the image first, as Fuyu does. An image block is, per patch row, one image token per patch
and an image-newline token. The prompt's text is tokenized as written, whitespace included (a trailing "\n" is
a token of its own, `<0x0A>` in fuyu-8b's tokenizer). Token ids are built directly as tensors; batches are
left-padded (with the pad token, or EOS for a tokenizer without one: padding is masked out).

Images: one image per prompt (a list, or a 4-D array/tensor of shape (N, H, W, C) or (N, C, H, W) with one
image per prompt), all images for a single prompt, or a list of image lists (one list per prompt).

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

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs, Unpack
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
from .mosaic_processing_common import MosaicProcessorMixin, check_texts, images_to_pil_list

IGNORE_INDEX = -100
COORDINATE_TAG = re.compile(r"<(box|point)>(.*?)</\1>", re.DOTALL)
LONE_TAG = re.compile(r"</?(?:box|point)>")  # a tag left over once the whole <box>...</box> tags are taken out
COORDINATE_TOKENS = {"box": (BOX_OPEN_TOKEN, BOX_CLOSE_TOKEN), "point": (POINT_OPEN_TOKEN, POINT_CLOSE_TOKEN)}
COORDINATE_COUNT = {"box": 4, "point": 2}
COORDINATE_FORMATS = "boxes as <box>y1, x1, y2, x2</box> and points as <point>x, y</point>"
BARE_NUMBER = re.compile(r"[0-9]+")


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


class MosaicFuyuProcessor(MosaicProcessorMixin):
    text_kwargs = {"padding": "longest", "return_tensors": "pt"}

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_token: str = IMAGE_TOKEN,
        image_newline_token: str = IMAGE_NEWLINE_TOKEN,
        begin_of_answer_token: str = BEGIN_OF_ANSWER_TOKEN,
        **kwargs,
    ):
        self.image_token = image_token
        self.image_newline_token = image_newline_token
        self.begin_of_answer_token = begin_of_answer_token
        super().__init__(image_processor, tokenizer, **kwargs)

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
        if len(images) == len(prompts):
            return [images_to_pil_list(image) for image in images]
        raise ValueError(
            f"Got {len(images)} image(s) for {len(prompts)} prompts: pass one image per prompt, or a list of "
            "image lists (one list per prompt)."
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

    def _text_ids(self, text: str, index: int, first_image: tuple[tuple[int, int], float] | None) -> list[int]:
        """Token ids of a piece of prompt `index`, whitespace kept; its boxes and points are checked against the
        (height, width) of the prompt's first image, rescaled by that image's resize factor (processed / original
        height, as transformers' Fuyu image processor reports it in `image_scale_factors`) and wrapped in their
        open/close tokens; `first_image` holds both. Each piece of text between tags is tokenized on its own, as
        fuyu-8b's processor does."""
        parts = COORDINATE_TAG.split(text)  # text, kind, coordinates, text, kind, coordinates, ..., text
        ids = []
        for start in range(0, len(parts), 3):
            if lone_tag := LONE_TAG.search(parts[start]):
                raise ValueError(
                    f"Prompt {index} has a {lone_tag.group()} that is not closed or not opened; "
                    f"write {COORDINATE_FORMATS}."
                )
            if parts[start]:
                ids += self.tokenizer(parts[start], add_special_tokens=False)["input_ids"]
            if start + 2 < len(parts):
                kind, values = parts[start + 1], parse_coordinates(parts[start + 1], parts[start + 2])
                if first_image is None:
                    raise ValueError(f"Prompt {index} has a <{kind}> but no image it could refer to.")
                image_size, scale = first_image
                check_inside(kind, values, *image_size)
                open_token, close_token = COORDINATE_TOKENS[kind]
                numbers = self._coordinate_ids(to_processed_coordinates(values, scale))
                ids += [self._token_id(open_token), *numbers, self._token_id(close_token)]
        return ids

    def _segments(self, prompt: str, prompt_images: list, index: int) -> list[str]:
        """The text of prompt `index` around its images: one piece more than it has images."""
        segments = prompt.split(IMAGE_PLACEHOLDER)
        if len(segments) == 1 and len(prompt_images) == 1:
            segments = ["", prompt]  # one image without a placeholder goes first, as in Fuyu
        if len(segments) - 1 != len(prompt_images):
            raise ValueError(
                f"Prompt {index} has {len(segments) - 1} {IMAGE_PLACEHOLDER} placeholders but "
                f"{len(prompt_images)} images; give one image per placeholder."
            )
        return segments

    def _text_only_ids(self, prompt: str, index: int, add_special_tokens: bool) -> torch.Tensor:
        """Prompt `index` of a call without images, tokenized as the tokenizer does on its own (as transformers'
        FuyuProcessor does): no image block, no begin-of-answer token. A box or point in it refers to no image."""
        if tag := LONE_TAG.search(prompt):
            raise ValueError(f"Prompt {index} has a {tag.group()} but no image it could refer to.")
        return torch.tensor(
            self.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"], dtype=torch.long
        )

    def _image_prompts(self, segments_per_prompt, images_per_prompt, answer_texts, bos_id: int, images_kwargs: dict):
        """Each prompt's ids in Fuyu's layout (see the module docstring) and labels (-100 but on the answers),
        and (row, patches of one image) pairs in order."""
        flat_images = [image for entry in images_per_prompt for image in entry]
        processed = (
            self.image_processor(flat_images, **images_kwargs)
            if flat_images
            else {"pixel_values": [], "patch_grids": [], "image_sizes": [], "resized_sizes": []}
        )
        image_token_id, newline_id = self._token_id(self.image_token), self._token_id(self.image_newline_token)
        answer_id = self._token_id(self.begin_of_answer_token)
        eos_id = None if answer_texts is None else self._special_id("eos", "ends every answer")

        sequences, label_sequences, patches = [], [], []
        next_image = 0
        for index, (segments, prompt_images) in enumerate(zip(segments_per_prompt, images_per_prompt)):
            pieces, bos_placed = [], False
            first_image = None
            if prompt_images:
                image_size = processed["image_sizes"][next_image]
                first_image = image_size, processed["resized_sizes"][next_image][0] / image_size[0]
            for position, segment in enumerate(segments):
                if segment and not bos_placed:
                    pieces.append(torch.tensor([bos_id]))
                    bos_placed = True
                if segment:
                    pieces.append(torch.tensor(self._text_ids(segment, index, first_image), dtype=torch.long))
                if position < len(prompt_images):
                    rows, cols = processed["patch_grids"][next_image]
                    pieces.append(image_token_layout(rows, cols, image_token_id, newline_id))
                    patches.append((index, processed["pixel_values"][next_image]))
                    next_image += 1
            if not bos_placed:
                pieces.append(torch.tensor([bos_id]))
            pieces.append(torch.tensor([answer_id]))
            prompt_ids = torch.cat(pieces)
            labels = torch.full_like(prompt_ids, IGNORE_INDEX)
            if answer_texts is not None:
                answer_ids = self.tokenizer(answer_texts[index], add_special_tokens=False)["input_ids"] + [eos_id]
                answer_ids = torch.tensor(answer_ids, dtype=torch.long)
                prompt_ids, labels = torch.cat([prompt_ids, answer_ids]), torch.cat([labels, answer_ids])
            sequences.append(prompt_ids)
            label_sequences.append(labels)
        return sequences, label_sequences, patches

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
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        """`images` and `text` as in the module docstring; `answers` (one per prompt) add `labels`. Image kwargs go
        to the image processor; of the text kwargs, `padding` ("longest" by default, "max_length" with
        `max_length`, or False), `max_length`, `add_special_tokens` (calls without images) and `return_tensors`
        ("pt" by default) apply. Rows are always left-padded."""
        if text is None:
            raise ValueError("MosaicFuyuProcessor needs `text` (a prompt or a list of prompts).")
        output_kwargs = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs = output_kwargs["text_kwargs"]
        typed_special_tokens = self._typed_special_tokens()
        prompts = check_texts(text, "Prompt", typed_special_tokens)
        if not prompts:
            raise ValueError("The batch of prompts is empty.")
        answer_texts = None if answers is None else check_texts(answers, "Answer", typed_special_tokens)
        if answer_texts is not None and len(answer_texts) != len(prompts):
            raise ValueError(f"Got {len(answer_texts)} answers for {len(prompts)} prompts.")
        images_per_prompt = self._images_per_prompt(images, prompts)
        segments_per_prompt = [
            self._segments(prompt, prompt_images, index)
            for index, (prompt, prompt_images) in enumerate(zip(prompts, images_per_prompt))
        ]
        bos_id = self._special_id("bos", "starts every prompt")  # checked on every call, with images or without
        if images is None:
            if answer_texts is not None:
                raise ValueError(
                    "`answers` need `images`: without them the prompts are only tokenized as the tokenizer does "
                    "(as in "
                    "transformers' FuyuProcessor); pass an empty image list per prompt for text-only training rows."
                )
            add_special_tokens = text_kwargs.get("add_special_tokens", True)
            sequences = [
                self._text_only_ids(prompt, index, add_special_tokens) for index, prompt in enumerate(prompts)
            ]
            label_sequences, patches = None, []
        else:
            sequences, label_sequences, patches = self._image_prompts(
                segments_per_prompt, images_per_prompt, answer_texts, bos_id, output_kwargs["images_kwargs"]
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
        input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros(len(prompts), length, dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, length - len(ids) :] = ids  # left padding
            attention_mask[row, length - len(ids) :] = 1
        data = {"input_ids": input_ids, "attention_mask": attention_mask}
        if patches:
            data["pixel_values"], data["image_patches_mask"] = batch_patches(patches, len(prompts))
        if answer_texts is not None:
            data["labels"] = torch.full((len(prompts), length), IGNORE_INDEX, dtype=torch.long)
            for row, labels in enumerate(label_sequences):
                data["labels"][row, length - len(labels) :] = labels
        return BatchFeature(data, tensor_type=text_kwargs.get("return_tensors"))

    @property
    def model_input_names(self) -> list[str]:
        """What `__call__` returns for the model (`labels` aside, with `answers`): the processor builds the token ids
        and mask itself, so the tokenizer's own input names (token_type_ids, ...) do not apply."""
        return ["input_ids", "attention_mask", "pixel_values", "image_patches_mask"]

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
