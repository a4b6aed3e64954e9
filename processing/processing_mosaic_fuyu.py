"""Processor of the Fuyu-style family: a tokenizer plus `MosaicFuyuImageProcessor`.

Layout of one prompt: the image blocks that come before any text, BOS, the prompt (with an image block
wherever an `<image>` placeholder stands), and the begin-of-answer token. One image and no placeholder
puts the image first, as Fuyu does. An image block is, per patch row, one image token per patch and an
image-newline token. Token ids are built directly as tensors; batches are left-padded.

Model inputs: `input_ids`, `attention_mask`, `image_patches` (batch, max patches, patch dim) and
`image_patches_mask` (batch, max patches), plus `labels` when `answers` are given (-100 everywhere but
the answer and its EOS).
"""

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_mosaic_fuyu import image_token_layout

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100


class MosaicFuyuProcessor(ProcessorMixin):
    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_token: str = "|SPEAKER|",
        image_newline_token: str = "|NEWLINE|",
        begin_of_answer_token: str = "<0x04>",
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

    def _images_per_prompt(self, images, prompts: list[str]) -> list[list]:
        if images is None:
            return [[] for _ in prompts]
        if not isinstance(images, (list, tuple)):
            return [[images]] + [[] for _ in prompts[1:]]
        if all(isinstance(entry, (list, tuple)) for entry in images):
            if len(images) != len(prompts):
                raise ValueError(f"Got image lists for {len(images)} prompts but {len(prompts)} prompts.")
            return [list(entry) for entry in images]
        if len(prompts) == 1:
            return [list(images)]
        if len(images) == len(prompts):
            return [[image] for image in images]
        raise ValueError(
            f"Got {len(images)} images for {len(prompts)} prompts: pass one image per prompt, or a list of "
            "image lists (one list per prompt)."
        )

    def __call__(self, images=None, text=None, answers=None, return_tensors="pt", **kwargs) -> BatchFeature:
        if text is None:
            raise ValueError("MosaicFuyuProcessor needs `text` (a prompt or a list of prompts).")
        prompts = [text] if isinstance(text, str) else list(text)
        if not prompts:
            raise ValueError("The batch of prompts is empty.")
        answer_texts = None if answers is None else ([answers] if isinstance(answers, str) else list(answers))
        if answer_texts is not None and len(answer_texts) != len(prompts):
            raise ValueError(f"Got {len(answer_texts)} answers for {len(prompts)} prompts.")
        images_per_prompt = self._images_per_prompt(images, prompts)
        segments_per_prompt = []
        for index, (prompt, prompt_images) in enumerate(zip(prompts, images_per_prompt)):
            segments = prompt.split(IMAGE_PLACEHOLDER)
            if len(segments) == 1 and len(prompt_images) == 1:
                segments = ["", prompt]  # one image without a placeholder goes first, as in Fuyu
            if len(segments) - 1 != len(prompt_images):
                raise ValueError(
                    f"Prompt {index} has {len(segments) - 1} {IMAGE_PLACEHOLDER} placeholders but "
                    f"{len(prompt_images)} images; give one image per placeholder."
                )
            segments_per_prompt.append(segments)
        flat_images = [image for entry in images_per_prompt for image in entry]
        processed = self.image_processor(flat_images) if flat_images else {"image_patches": [], "patch_grids": []}
        image_token_id, newline_id = self._token_id(self.image_token), self._token_id(self.image_newline_token)
        answer_id = self._token_id(self.begin_of_answer_token)
        tokenizer = self.tokenizer

        sequences, label_sequences, patches = [], [], []
        next_image = 0
        for index, (segments, prompt_images) in enumerate(zip(segments_per_prompt, images_per_prompt)):
            pieces, bos_placed = [], False
            for position, segment in enumerate(segments):
                if segment.strip() and not bos_placed:
                    pieces.append(torch.tensor([tokenizer.bos_token_id]))
                    bos_placed = True
                if segment.strip():
                    pieces.append(torch.tensor(tokenizer(segment.strip(), add_special_tokens=False)["input_ids"], dtype=torch.long))
                if position < len(prompt_images):
                    rows, cols = processed["patch_grids"][next_image]
                    pieces.append(image_token_layout(rows, cols, image_token_id, newline_id))
                    patches.append((index, processed["image_patches"][next_image]))
                    next_image += 1
            if not bos_placed:
                pieces.append(torch.tensor([tokenizer.bos_token_id]))
            pieces.append(torch.tensor([answer_id]))
            prompt_ids = torch.cat(pieces)
            labels = torch.full_like(prompt_ids, IGNORE_INDEX)
            if answer_texts is not None:
                answer_ids = tokenizer(answer_texts[index], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                answer_ids = torch.tensor(answer_ids, dtype=torch.long)
                prompt_ids, labels = torch.cat([prompt_ids, answer_ids]), torch.cat([labels, answer_ids])
            if len(prompt_ids) > tokenizer.model_max_length:
                raise ValueError(
                    f"Prompt {index} takes {len(prompt_ids)} tokens with its images, more than the tokenizer's "
                    f"model_max_length={tokenizer.model_max_length}; shorten it or use smaller images."
                )
            sequences.append(prompt_ids)
            label_sequences.append(labels)

        length = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(prompts), length), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(prompts), length, dtype=torch.long)
        label_ids = torch.full((len(prompts), length), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, labels) in enumerate(zip(sequences, label_sequences)):
            input_ids[row, length - len(ids) :] = ids  # left padding
            attention_mask[row, length - len(ids) :] = 1
            label_ids[row, length - len(ids) :] = labels
        data = {"input_ids": input_ids, "attention_mask": attention_mask}
        if patches:
            counts = [sum(len(p) for i, p in patches if i == row) for row in range(len(prompts))]
            patch_dim = patches[0][1].shape[-1]
            data["image_patches"] = torch.zeros(len(prompts), max(counts), patch_dim)
            data["image_patches_mask"] = torch.zeros(len(prompts), max(counts), dtype=torch.bool)
            filled = [0] * len(prompts)
            for row, sample_patches in patches:
                start, stop = filled[row], filled[row] + len(sample_patches)
                data["image_patches"][row, start:stop] = sample_patches
                data["image_patches_mask"][row, start:stop] = True
                filled[row] = stop
        if answer_texts is not None:
            data["labels"] = label_ids
        return BatchFeature(data, tensor_type=return_tensors)

    def post_process_image_text_to_text(self, generated_ids, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """The generated answers only: each row decoded after its last begin-of-answer token."""
        answer_id = self._token_id(self.begin_of_answer_token)
        answers = []
        for row in torch.as_tensor(generated_ids):
            positions = (row == answer_id).nonzero()
            start = int(positions[-1]) + 1 if len(positions) else 0
            answers.append(self.tokenizer.decode(row[start:], skip_special_tokens=skip_special_tokens).strip())
        return answers

    def batch_decode(self, generated_ids, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        return self.post_process_image_text_to_text(generated_ids, skip_special_tokens=skip_special_tokens)
