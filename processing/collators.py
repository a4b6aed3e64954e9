"""Data collators for `Trainer`: they turn `datasets` rows into model inputs.

Call `collator.validate(dataset)` before training: it checks, once, that the columns exist, that every
row has a readable image and how many texts will be truncated, so that bad data fails before the first
step with one clear error instead of deep inside a training loop.
"""

import io
import logging

from .image_processing_mosaic_fuyu import fitted_size, patch_grid
from .mosaic_processing_common import PIL_READ_ERRORS, open_image

logger = logging.getLogger(__name__)


class _ImageTextCollator:
    image_column: str
    text_columns: tuple[str, ...]

    def __init__(self, processor):
        self.processor = processor

    def validate(self, dataset) -> None:
        """Raise one ValueError for a missing column or a row without a readable image (or with one of more than
        MAX_IMAGE_PIXELS pixels); warn about texts longer than the tokenizer's model_max_length (they are
        truncated)."""
        from datasets import Image

        needed = (self.image_column, *self.text_columns)
        missing = [column for column in needed if column not in dataset.column_names]
        if missing:
            raise ValueError(f"The dataset lacks the column(s) {missing}; it has {dataset.column_names}.")
        raw_images = dataset.cast_column(self.image_column, Image(decode=False))[self.image_column]
        for index, raw in enumerate(raw_images):
            if raw is None or (raw.get("bytes") is None and raw.get("path") is None):
                raise ValueError(f"Row {index} of the dataset has no image in column {self.image_column!r}.")
            source = io.BytesIO(raw["bytes"]) if raw.get("bytes") else raw["path"]
            try:  # the image's size is checked against MAX_IMAGE_PIXELS first, as the image processors do
                with open_image(source, f"The image of row {index}") as image:
                    image.verify()
            except PIL_READ_ERRORS as error:
                raise ValueError(f"Row {index} of the dataset has an unreadable image: {error}") from error
        self._check_lengths(dataset)

    def _check_lengths(self, dataset) -> None:
        tokenizer = self.processor.tokenizer
        for column in self.text_columns:
            lengths = [len(ids) for ids in tokenizer(list(dataset[column]))["input_ids"]]
            too_long = sum(length > tokenizer.model_max_length for length in lengths)
            if too_long:
                logger.warning(
                    "%d of %d texts in column %r are longer than %d tokens and will be truncated.",
                    too_long,
                    len(lengths),
                    column,
                    tokenizer.model_max_length,
                )

    def _images(self, rows: list[dict]) -> list:
        images = [row.get(self.image_column) for row in rows]
        if any(image is None for image in images):
            raise ValueError(f"A batch row has no image in column {self.image_column!r}.")
        return images


class MosaicClipCollator(_ImageTextCollator):
    """Rows with an image and a caption -> pixel_values, input_ids, attention_mask and return_loss=True
    (so Trainer also reports the contrastive loss in evaluation)."""

    def __init__(self, processor, image_column: str = "image", caption_column: str = "caption"):
        super().__init__(processor)
        self.image_column, self.text_columns = image_column, (caption_column,)

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.processor(images=self._images(rows), text=[row[self.text_columns[0]] for row in rows])
        return {**batch, "return_loss": True}


class MosaicFuyuCollator(_ImageTextCollator):
    """Rows with an image, a question and an answer -> input_ids, attention_mask, pixel_values (the patches),
    image_patches_mask and labels that cover only the answer and its EOS."""

    def __init__(
        self, processor, image_column: str = "image", question_column: str = "question", answer_column: str = "answer"
    ):
        super().__init__(processor)
        self.image_column, self.text_columns = image_column, (question_column, answer_column)

    def _check_lengths(self, dataset) -> None:
        """Refuses rows whose image tokens, question, answer and 3 markers (BOS, begin-of-answer, EOS) exceed
        model_max_length: a cut answer would teach the wrong thing, so they are not truncated."""
        tokenizer, image_processor = self.processor.tokenizer, self.processor.image_processor
        question_column, answer_column = self.text_columns
        question_lengths = [
            len(ids) for ids in tokenizer(list(dataset[question_column]), add_special_tokens=False)["input_ids"]
        ]
        answer_lengths = [
            len(ids) for ids in tokenizer(list(dataset[answer_column]), add_special_tokens=False)["input_ids"]
        ]
        for index, image in enumerate(dataset[self.image_column]):
            height, width = image.height, image.width
            if image_processor.do_resize:
                height, width = fitted_size(
                    height, width, image_processor.size["height"], image_processor.size["width"]
                )
            rows, cols = patch_grid(height, width, image_processor.patch_size)
            length = rows * (cols + 1) + question_lengths[index] + answer_lengths[index] + 3
            if length > tokenizer.model_max_length:
                raise ValueError(
                    f"Row {index} takes {length} tokens (image, question and answer), more than the tokenizer's "
                    f"model_max_length={tokenizer.model_max_length}; shorten it or use smaller images."
                )

    def __call__(self, rows: list[dict]) -> dict:
        """A row's image column holds one image, or a list of images for a question with `<image>` placeholders."""
        question_column, answer_column = self.text_columns
        return dict(
            self.processor(
                images=[list(image) if isinstance(image, (list, tuple)) else [image] for image in self._images(rows)],
                text=[row[question_column] for row in rows],
                answers=[row[answer_column] for row in rows],
            )
        )
