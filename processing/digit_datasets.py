"""Offline data sets from real images that ship in wheels, as `datasets.Dataset`s with an `Image()` feature.

- `digit_caption_dataset`: sklearn's 1797 handwritten digits, captioned "a photo of the digit seven".
- `digit_question_dataset`: the same digits with a question and its one-word answer.
Both split train/test with a fixed stratified seed, so every script and test sees the same held-out set.
"""

import numpy as np
import PIL.Image

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_QUESTION = "What digit is this?"


def digit_caption(digit: int) -> str:
    return f"a photo of the digit {DIGIT_NAMES[digit]}"


def _digit_images(size: int) -> tuple[list[PIL.Image.Image], np.ndarray]:
    """The 8x8 digits (values 0-16) as `size` x `size` grayscale PIL images, with their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    images = [PIL.Image.fromarray(array).resize((size, size), PIL.Image.BILINEAR) for array in pixels]
    return images, digits.target


def _split(columns: dict, features, labels: np.ndarray, test_size: float, seed: int):
    from datasets import Dataset

    dataset = Dataset.from_dict(columns, features=features)
    return dataset.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def digit_caption_dataset(image_size: int = 32, test_size: float = 0.2, seed: int = 0):
    """DatasetDict(train, test) with columns image (Image), caption (str), label (ClassLabel)."""
    from datasets import ClassLabel, Features, Image, Value

    images, labels = _digit_images(image_size)
    features = Features({"image": Image(), "caption": Value("string"), "label": ClassLabel(names=list(DIGIT_NAMES))})
    columns = {"image": images, "caption": [digit_caption(int(d)) for d in labels], "label": labels.tolist()}
    return _split(columns, features, labels, test_size, seed)


def digit_question_dataset(image_size: int = 32, test_size: float = 0.2, seed: int = 0):
    """DatasetDict(train, test) with columns image (Image), question (str), answer (str), label (ClassLabel)."""
    from datasets import ClassLabel, Features, Image, Value

    images, labels = _digit_images(image_size)
    features = Features(
        {
            "image": Image(),
            "question": Value("string"),
            "answer": Value("string"),
            "label": ClassLabel(names=list(DIGIT_NAMES)),
        }
    )
    columns = {
        "image": images,
        "question": [DIGIT_QUESTION] * len(labels),
        "answer": [DIGIT_NAMES[d] for d in labels],
        "label": labels.tolist(),
    }
    return _split(columns, features, labels, test_size, seed)
