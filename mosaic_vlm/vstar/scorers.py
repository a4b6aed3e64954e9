"""Scorers: what tells V*'s search how likely a crop shows the target, and where in it the target likely is.

A scorer is any object with two methods (the `Scorer` protocol):
- `score(images: list[PIL.Image.Image], target: str) -> list[float]`: confidence in [0, 1] that each
  image shows the target (one batched call for many crops);
- `heatmap(image: PIL.Image.Image, target: str) -> torch.Tensor`: a 2-D non-negative map of where in
  the image the target likely is (any resolution; it is stretched over the image).
`CheckedScorer` wraps any scorer for a search: it counts evaluations and refuses malformed answers.
"""

import math
from collections.abc import Sequence
from typing import Protocol

import PIL.Image
import torch

from .boxes import Box
from .prompts import PRESENCE_QUESTION


class Scorer(Protocol):
    def score(self, images: list[PIL.Image.Image], target: str) -> list[float]: ...

    def heatmap(self, image: PIL.Image.Image, target: str) -> torch.Tensor: ...


def _confidence(value) -> float | None:
    """`value` as a float in [0, 1], or None when it is not one (None, NaN, a string, out of range)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0.0 <= number <= 1.0 else None


class CheckedScorer:
    """A scorer bound to one image and target: counts evaluations (one per crop scored, one per heatmap) and
    refuses malformed answers with one clear error."""

    def __init__(self, scorer: Scorer, image: PIL.Image.Image, target: str):
        self.scorer, self.image, self.target, self.calls = scorer, image, target, 0

    def score(self, boxes: Sequence[Box]) -> list[float]:
        answer = self.scorer.score([self.image.crop(box) for box in boxes], self.target)
        try:
            scores = [_confidence(value) for value in answer]
        except TypeError:  # not a sequence: None, a single number
            scores = None
        self.calls += len(boxes)
        if scores is None or len(scores) != len(boxes) or None in scores:
            raise ValueError(
                f"{type(self.scorer).__name__}.score must return one confidence in [0, 1] per image; "
                f"got {answer!r} for {len(boxes)} images."
            )
        return scores

    def heatmap(self, box: Box) -> torch.Tensor:
        answer = self.scorer.heatmap(self.image.crop(box), self.target)
        self.calls += 1
        try:
            heatmap = torch.as_tensor(answer).detach().float().cpu()
        except (TypeError, ValueError, RuntimeError):
            heatmap = torch.empty(0)
        if heatmap.ndim != 2 or heatmap.numel() == 0 or not bool(torch.isfinite(heatmap).all()) or heatmap.min() < 0:
            raise ValueError(
                f"{type(self.scorer).__name__}.heatmap must return a non-empty 2-D map of finite non-negative "
                f"values; got {type(answer).__name__} of shape {tuple(heatmap.shape)}."
            )
        return heatmap


class ClipScorer:
    """Scores with a CLIP-style model. Confidence: the softmax probability of the target prompt against
    background prompts. Heatmap: the same softmax per patch, from the projected patch tokens of one
    forward pass (each patch token compared with the text embeddings)."""

    def __init__(
        self,
        model,
        processor,
        prompt: str = "a photo of {}",
        background_prompts: Sequence[str] = ("a photo", "a photo of the background", "a photo of something"),
    ):
        if not background_prompts:
            raise ValueError(
                "ClipScorer needs at least one background prompt: the target's confidence is its softmax "
                "probability against them (with none, every image scores 1.0)."
            )
        if "{}" not in prompt:
            raise ValueError(f"ClipScorer's prompt must hold '{{}}' where the target goes, got {prompt!r}.")
        self.model, self.processor = model.eval(), processor
        self.prompt, self.background_prompts = prompt, tuple(background_prompts)

    @torch.no_grad()
    def _text_embeds(self, target: str) -> torch.Tensor:
        texts = self.processor(text=[self.prompt.format(target), *self.background_prompts])
        embeds = self.model.get_text_features(texts["input_ids"], texts["attention_mask"]).pooler_output
        return embeds / embeds.norm(dim=-1, keepdim=True)  # (1 + backgrounds, dim)

    def _pixels(self, images) -> torch.Tensor:
        """Whole images stretched to the model's square input: no centre crop, so a heatmap covers all of it."""
        side = self.model.config.vision_config.image_size
        size = {"height": side, "width": side}
        return self.processor.image_processor(images, do_center_crop=False, size=size, return_tensors="pt")[
            "pixel_values"
        ]

    @torch.no_grad()
    def score(self, images: list[PIL.Image.Image], target: str) -> list[float]:
        pixel_values = self._pixels(images)
        image_embeds = self.model.get_image_features(pixel_values).pooler_output
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        logits = self.model.similarity_logits(self._text_embeds(target), image_embeds)  # (prompts, images)
        return logits.softmax(dim=0)[0].tolist()

    @torch.no_grad()
    def heatmap(self, image: PIL.Image.Image, target: str) -> torch.Tensor:
        patch_embeds = self.model.get_patch_features(self._pixels(image))[0]  # (patches, dim)
        patch_embeds = patch_embeds / patch_embeds.norm(dim=-1, keepdim=True)
        probabilities = self.model.similarity_logits(self._text_embeds(target), patch_embeds).softmax(dim=0)[0]
        grid = math.isqrt(probabilities.numel())
        return probabilities.reshape(grid, grid)  # row-major patch order -> (grid rows, grid cols)


class FuyuScorer:
    """Scores with a Fuyu-style model. Confidence: the model's probability of "yes" (against "no") as the
    first answer token to a yes/no question about the target. Heatmap: the confidences of a tiling of the
    image, scored in batched calls: `grid x grid` cells, or more along a side longer than `grid * max_cell`
    pixels, so that no cell is wider than `max_cell` (a tiny model's input is a few dozen pixels: in a
    larger cell a small target would shrink out of sight). `evaluations` counts the images the model has
    scored (a heatmap costs one per cell).

    The default question is `PRESENCE_QUESTION`, with the image after the words."""

    def __init__(
        self,
        model,
        processor,
        question: str = PRESENCE_QUESTION,
        grid: int = 4,
        batch_size: int = 32,
        max_cell: int | None = None,
    ):
        if grid < 1 or batch_size < 1 or (max_cell is not None and max_cell < 1):
            raise ValueError(
                f"FuyuScorer needs grid >= 1, batch_size >= 1 and max_cell >= 1 (or None), got grid={grid}, "
                f"batch_size={batch_size}, max_cell={max_cell}."
            )
        if "{}" not in question:
            raise ValueError(f"FuyuScorer's question must hold '{{}}' where the target goes, got {question!r}.")
        self.model, self.processor, self.question = model.eval(), processor, question
        self.grid, self.max_cell, self.batch_size, self.evaluations = grid, max_cell, batch_size, 0
        tokenizer = processor.tokenizer
        self.answer_ids = [tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in ("yes", "no")]
        if self.answer_ids[0] == self.answer_ids[1]:
            raise ValueError("The tokenizer maps 'yes' and 'no' to the same first token; FuyuScorer needs them apart.")

    @torch.no_grad()
    def score(self, images: list[PIL.Image.Image], target: str) -> list[float]:
        scores = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            inputs = self.processor(
                images=[[image] for image in batch], text=[self.question.format(target)] * len(batch)
            )
            logits = self.model(**inputs.to(self.model.device), logits_to_keep=1).logits[:, -1]
            scores += logits[:, self.answer_ids].float().softmax(dim=-1)[:, 0].tolist()
        self.evaluations += len(images)
        return scores

    def cells(self, side: int) -> int:
        """How many heatmap cells span an image side of `side` pixels."""
        return max(self.grid, math.ceil(side / self.max_cell)) if self.max_cell else self.grid

    def heatmap(self, image: PIL.Image.Image, target: str) -> torch.Tensor:
        width, height = image.size
        rows, cols = self.cells(height), self.cells(width)
        xs = [round(i * width / cols) for i in range(cols + 1)]
        ys = [round(i * height / rows) for i in range(rows + 1)]
        tiles = [image.crop((xs[c], ys[r], xs[c + 1], ys[r + 1])) for r in range(rows) for c in range(cols)]
        return torch.tensor(self.score(tiles, target)).reshape(rows, cols)  # row-major tiles
