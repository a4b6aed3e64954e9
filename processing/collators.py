"""Data collators for `Trainer`: they turn `datasets` rows into model inputs.

Call `collator.validate(dataset)` before training: it checks, once, that the columns exist, that every
row has a readable image and how many texts will be truncated, so that bad data fails before the first
step with one clear error instead of deep inside a training loop.
"""

import io
import logging

import PIL.Image

logger = logging.getLogger(__name__)


class _ImageTextCollator:
    image_column: str
    text_columns: tuple[str, ...]

    def __init__(self, processor):
        self.processor = processor

    def validate(self, dataset) -> None:
        """Raise one ValueError for a missing column or a row without a readable image; warn about texts
        longer than the tokenizer's model_max_length (they are truncated)."""
        from datasets import Image

        needed = (self.image_column, *self.text_columns)
        missing = [column for column in needed if column not in dataset.column_names]
        if missing:
            raise ValueError(f"The dataset lacks the column(s) {missing}; it has {dataset.column_names}.")
        raw_images = dataset.cast_column(self.image_column, Image(decode=False))[self.image_column]
        for index, raw in enumerate(raw_images):
            if raw is None or (raw.get("bytes") is None and raw.get("path") is None):
                raise ValueError(f"Row {index} of the dataset has no image in column {self.image_column!r}.")
            try:
                with PIL.Image.open(io.BytesIO(raw["bytes"]) if raw.get("bytes") else raw["path"]) as image:
                    image.verify()
            except Exception as error:
                raise ValueError(f"Row {index} of the dataset has an unreadable image: {error}") from error
        tokenizer = self.processor.tokenizer
        for column in self.text_columns:
            lengths = [len(ids) for ids in tokenizer(list(dataset[column]))["input_ids"]]
            too_long = sum(length > tokenizer.model_max_length for length in lengths)
            if too_long:
                logger.warning(
                    "%d of %d texts in column %r are longer than %d tokens and will be truncated.",
                    too_long, len(lengths), column, tokenizer.model_max_length,
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
