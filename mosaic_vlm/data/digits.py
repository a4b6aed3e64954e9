"""Offline data sets from real images that ship in wheels, as `datasets.Dataset`s with an `Image()` feature.

- `digit_caption_dataset`: sklearn's 1797 handwritten digits, captioned "a photo of the digit seven".
- `digit_question_dataset`: the same digits with a question and its one-word answer.
Both split train/test with a fixed stratified seed, so every script and test sees the same held-out set.
- `photo_caption_dataset`: random crops of four scikit-image photos with everyday captions (label -1),
  to add to the digits so that a CLIP-style model also learns a few everyday labels.
"""

import numpy as np
import PIL.Image

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_QUESTION = "What digit is this?"
PHOTO_CAPTIONS = {
    "astronaut": "a photo of an astronaut",
    "coffee": "a photo of a cup of coffee",
    "chelsea": "a photo of a cat",
    "rocket": "a photo of a rocket",
}


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


def photo_caption_dataset(crops_per_photo: int, image_size: int = 32, seed: int = 0):
    """Dataset with columns image (Image), caption (str), label (ClassLabel, -1: not a digit): random square
    crops (half to all of the short side) of the PHOTO_CAPTIONS photos, resized to `image_size`."""
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from skimage import data

    rng = np.random.default_rng(seed)
    images, captions = [], []
    for name, caption in PHOTO_CAPTIONS.items():
        photo = PIL.Image.fromarray(getattr(data, name)()).convert("RGB")
        for _ in range(crops_per_photo):
            side = int(rng.integers(min(photo.size) // 2, min(photo.size) + 1))
            x, y = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
            images.append(photo.crop((x, y, x + side, y + side)).resize((image_size, image_size), PIL.Image.BICUBIC))
            captions.append(caption)
    features = Features({"image": Image(), "caption": Value("string"), "label": ClassLabel(names=list(DIGIT_NAMES))})
    return Dataset.from_dict({"image": images, "caption": captions, "label": [-1] * len(images)}, features=features)
