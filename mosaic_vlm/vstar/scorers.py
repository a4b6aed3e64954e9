"""Scorers: what tells V*'s search how likely a crop shows the target, and where in it the target likely is.

A scorer is any object with two methods (the `Scorer` protocol):
- `score(images: list[PIL.Image.Image], target: str) -> list[float]`: confidence in [0, 1] that each
  image shows the target (one batched call for many crops);
- `heatmap(image: PIL.Image.Image, target: str) -> torch.Tensor`: a 2-D non-negative map of where in
  the image the target likely is (any resolution; it is stretched over the image).
A scorer may also have `locate(image, target) -> (x0, y0, x1, y1) | None`: the target's box in the image, which
then becomes a found patch's box (a detector's own box) instead of one tightened from heatmaps.
`CheckedScorer` wraps any scorer for a search: it counts evaluations and refuses malformed answers.

Scorers here: `ClipScorer` (ours, transformers' CLIPModel and SiglipModel), `DetectorScorer` (an open-vocabulary
detector, e.g. `pipeline("zero-shot-object-detection")`), `FuyuScorer` (a Fuyu-style model asked yes or no).
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

    def locate(self, box: Box) -> Box | None:
        """Where in `box` the scorer sees the target, in image pixels (one evaluation), or None when it does not
        say (a scorer without `locate`, or one that found nothing there)."""
        if not hasattr(self.scorer, "locate"):
            return None
        answer = self.scorer.locate(self.image.crop(box), self.target)
        self.calls += 1
        if answer is None:
            return None
        x0, y0, x1, y1 = box
        try:
            left, top, right, bottom = (round(float(value)) for value in answer)
        except (TypeError, ValueError):
            left = top = right = bottom = -1
        if not (0 <= left < right <= x1 - x0 and 0 <= top < bottom <= y1 - y0):
            raise ValueError(
                f"{type(self.scorer).__name__}.locate must return None or a box (x0, y0, x1, y1) inside the "
                f"{x1 - x0}x{y1 - y0} crop it was given; got {answer!r}."
            )
        return x0 + left, y0 + top, x0 + right, y0 + bottom

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


def _pooled(output) -> torch.Tensor:
    """The embedding a `get_*_features` call gives: a model output's `pooler_output`, or the tensor itself."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


class ClipScorer:
    """Scores with a CLIP-style dual encoder: ours (`MosaicClipModel`, either loss), transformers' `CLIPModel` or
    `SiglipModel`, with its processor. Confidence: for a softmax-trained model the probability of the target
    prompt against background prompts; for a sigmoid-trained one (SigLIP, ours with `loss_type="siglip"`) the
    sigmoid of the target prompt's own logit, calibrated as it was trained. Heatmap: the same per patch, from the
    vision tower's patch tokens of one forward pass through the projection into the shared space."""

    def __init__(
        self,
        model,
        processor,
        prompt: str = "a photo of {}",
        background_prompts: Sequence[str] = ("a photo", "a photo of the background", "a photo of something"),
    ):
        if "{}" not in prompt:
            raise ValueError(f"ClipScorer's prompt must hold '{{}}' where the target goes, got {prompt!r}.")
        self.model, self.processor = model.eval(), processor
        config = model.config
        self.sigmoid = "siglip" in config.model_type or getattr(config, "loss_type", None) == "siglip"
        if not self.sigmoid and not background_prompts:
            raise ValueError(
                "ClipScorer needs at least one background prompt for a softmax-trained model: the target's "
                "confidence is its softmax probability against them (with none, every image scores 1.0)."
            )
        self.prompt, self.background_prompts = prompt, () if self.sigmoid else tuple(background_prompts)

    @torch.no_grad()
    def _text_embeds(self, target: str) -> torch.Tensor:
        padding = "max_length" if "siglip" in self.model.config.model_type else True  # as SigLIP was trained
        texts = self.processor(
            text=[self.prompt.format(target), *self.background_prompts], padding=padding, return_tensors="pt"
        )
        embeds = _pooled(self.model.get_text_features(**texts))
        return embeds / embeds.norm(dim=-1, keepdim=True)  # (1 + backgrounds, dim)

    def _pixels(self, images) -> torch.Tensor:
        """Whole images stretched to the model's square input: no centre crop, so a heatmap covers all of it."""
        side = self.model.config.vision_config.image_size
        image_processor = self.processor.image_processor
        options = {"do_center_crop": False} if hasattr(image_processor, "do_center_crop") else {}
        size = {"height": side, "width": side}
        return image_processor(images, size=size, return_tensors="pt", **options)["pixel_values"]

    def _confidence(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """The target's confidence for each (normalised) image embedding."""
        logits = self.model.logit_scale.exp() * text_embeds @ image_embeds.T  # (prompts, images)
        if self.sigmoid:
            return torch.sigmoid(logits[0] + self.model.logit_bias)
        return logits.softmax(dim=0)[0]

    def _patch_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The patch tokens in the shared embedding space: (patches, dim)."""
        if hasattr(self.model, "get_patch_features"):  # ours
            return self.model.get_patch_features(pixel_values)[0]
        vision = self.model.vision_model
        tokens = vision(pixel_values=pixel_values).last_hidden_state[0]
        if hasattr(vision, "head"):  # SigLIP: no class token; each token through the pooling head's MLP
            head = vision.head
            return tokens + head.mlp(head.layernorm(tokens))
        return self.model.visual_projection(vision.post_layernorm(tokens[1:]))  # CLIP: the class token left out

    @torch.no_grad()
    def score(self, images: list[PIL.Image.Image], target: str) -> list[float]:
        image_embeds = _pooled(self.model.get_image_features(pixel_values=self._pixels(images)))
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        return self._confidence(self._text_embeds(target), image_embeds).tolist()

    @torch.no_grad()
    def heatmap(self, image: PIL.Image.Image, target: str) -> torch.Tensor:
        patch_embeds = self._patch_embeds(self._pixels(image))
        patch_embeds = patch_embeds / patch_embeds.norm(dim=-1, keepdim=True)
        confidence = self._confidence(self._text_embeds(target), patch_embeds)
        grid = math.isqrt(confidence.numel())
        return confidence.reshape(grid, grid)  # row-major patch order -> (grid rows, grid cols)


class DetectorScorer:
    """Scores with an open-vocabulary detector: transformers' `pipeline("zero-shot-object-detection")` (OWL-ViT,
    OWLv2, Grounding DINO) or anything called the same way, `detector(image, candidate_labels=[target])`
    answering a list of `{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}`. Confidence: the best box's
    score for the target (0 with none). Heatmap: every box's score painted over its cells (the highest where boxes
    overlap) on a grid of `grid` cells along the longer side. `locate`: the best box itself, so a found patch is
    the detector's box."""

    def __init__(self, detector, grid: int = 32):
        if grid < 1:
            raise ValueError(f"DetectorScorer needs grid >= 1, got {grid}.")
        self.detector, self.grid = detector, grid

    def _detections(self, image: PIL.Image.Image, target: str) -> list[tuple[float, Box]]:
        """The target's boxes in `image`, strongest first, each clipped to the image."""
        answer = self.detector(image, candidate_labels=[target])
        width, height = image.size
        detections = []
        try:
            for item in answer:
                if item.get("label", target) != target:
                    continue
                box = item["box"]
                x0, y0 = max(0, round(box["xmin"])), max(0, round(box["ymin"]))
                x1, y1 = min(width, round(box["xmax"])), min(height, round(box["ymax"]))
                if x1 > x0 and y1 > y0:
                    detections.append((float(item["score"]), (x0, y0, x1, y1)))
        except (TypeError, KeyError, AttributeError, ValueError) as error:
            raise ValueError(
                f"{type(self.detector).__name__} must answer a list of {{'score', 'label', 'box': {{'xmin', 'ymin', "
                f"'xmax', 'ymax'}}}} as pipeline('zero-shot-object-detection') does; got {answer!r} ({error})."
            ) from None
        return sorted(detections, key=lambda detection: -detection[0])

    def score(self, images: list[PIL.Image.Image], target: str) -> list[float]:
        return [max((score for score, _ in self._detections(image, target)), default=0.0) for image in images]

    def heatmap(self, image: PIL.Image.Image, target: str) -> torch.Tensor:
        width, height = image.size
        cols = self.grid if width >= height else max(1, round(self.grid * width / height))
        rows = self.grid if height >= width else max(1, round(self.grid * height / width))
        heatmap = torch.zeros(rows, cols)
        for score, (x0, y0, x1, y1) in self._detections(image, target):
            # the cells a box covers, at least one: (rows, cols) cells over (height, width) pixels
            top, left = math.floor(y0 * rows / height), math.floor(x0 * cols / width)
            bottom, right = max(top + 1, math.ceil(y1 * rows / height)), max(left + 1, math.ceil(x1 * cols / width))
            heatmap[top:bottom, left:right] = heatmap[top:bottom, left:right].clamp(min=score)
        return heatmap

    def locate(self, image: PIL.Image.Image, target: str) -> Box | None:
        detections = self._detections(image, target)
        return detections[0][1] if detections else None


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
