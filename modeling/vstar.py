"""V* guided visual search (Wu & Xie, 2023) for any mosaic model, with a pluggable scorer.

Some details are too small to see in the whole picture. `visual_search` finds the patch that holds a
target with V*'s best-first hierarchical search; `vstar_generate` answers a question with a Fuyu-style
model from the whole image plus crops of what it searched for; `draw_search` pictures a search.

A scorer is any object with two methods:
- `score(images: list[PIL.Image.Image], target: str) -> list[float]`: confidence in [0, 1] that each
  image shows the target (one batched call for many crops);
- `heatmap(image: PIL.Image.Image, target: str) -> torch.Tensor`: a 2-D non-negative map of where in
  the image the target likely is (any resolution; it is stretched over the image).
"""

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in original pixels, x1/y1 exclusive


class Scorer(Protocol):
    def score(self, images: list[PIL.Image.Image], target: str) -> list[float]: ...

    def heatmap(self, image: PIL.Image.Image, target: str) -> torch.Tensor: ...


@dataclass
class SearchResult:
    """Outcome of `visual_search`.

    found: whether a patch reached `conf_high`, or the best patch seen reached `conf_low`.
    box: the target's box in original pixels (tightened with the heatmap), None when not found.
    score: the confidence of the patch the box came from (the best seen when not found).
    boxes: every confident instance (several when the whole image already shows the target).
    path: visited patches (and the heatmap regions scored on the way) with their scores, in visiting order.
    num_calls: scorer evaluations: one per image scored plus one per heatmap.
    (`separate_targets` may add a second search's path and calls, and the calls that assign the boxes.)
    """

    found: bool
    box: Box | None
    score: float
    boxes: list[Box] = field(default_factory=list)
    path: list[tuple[Box, float]] = field(default_factory=list)
    num_calls: int = 0


def split_box(box: Box) -> list[Box]:
    """2x2 quadrants, or 4 strips along the long side when the aspect ratio is >= 2 or <= 0.5."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0, y1 - y0
    if width >= 2 * height:
        xs = [x0 + round(i * width / 4) for i in range(5)]
        return [(xs[i], y0, xs[i + 1], y1) for i in range(4)]
    if height >= 2 * width:
        ys = [y0 + round(i * height / 4) for i in range(5)]
        return [(x0, ys[i], x1, ys[i + 1]) for i in range(4)]
    xm, ym = x0 + width // 2, y0 + height // 2
    return [(x0, y0, xm, ym), (xm, y0, x1, ym), (x0, ym, xm, y1), (xm, ym, x1, y1)]


def _overlap_weights(cells: int, start: float, stop: float) -> torch.Tensor:
    """Length of overlap of each unit cell [i, i + 1) with [start, stop)."""
    edges = torch.arange(cells, dtype=torch.float64)
    return (torch.clamp(torch.minimum(edges + 1, torch.tensor(stop)) - torch.maximum(edges, torch.tensor(start)), min=0))


def heatmap_share(heatmap: torch.Tensor, outer: Box, inner: Box) -> float:
    """Share of the heatmap mass (stretched over `outer`) that lies inside `inner`, exactly by cell area."""
    total = float(heatmap.sum())
    if total <= 0:
        return 0.0
    rows, cols = heatmap.shape
    x0, y0, x1, y1 = outer
    scale_x, scale_y = cols / (x1 - x0), rows / (y1 - y0)
    row_weights = _overlap_weights(rows, (inner[1] - y0) * scale_y, (inner[3] - y0) * scale_y)
    col_weights = _overlap_weights(cols, (inner[0] - x0) * scale_x, (inner[2] - x0) * scale_x)
    return float(row_weights @ heatmap.double() @ col_weights) / total


def _weighted_extent(cells: list[tuple[int, float]]) -> tuple[float, float]:
    """The extent, in cell units, of a region along one axis: the interval of the uniform spread with the
    heatmap-weighted mean and variance of its cells (each cell a unit interval). A block of equal cells
    gives exactly its cells; weaker cells at the border (partly covered by the target) pull the edges in.
    Never larger than the cells' own span."""
    total = sum(weight for _, weight in cells)
    mean = sum(weight * (index + 0.5) for index, weight in cells) / total
    variance = sum(weight * (index + 0.5 - mean) ** 2 for index, weight in cells) / total + 1 / 12
    half = math.sqrt(3 * variance)  # a uniform spread of width w has variance w^2 / 12
    first, last = min(index for index, _ in cells), max(index for index, _ in cells) + 1
    return max(first, mean - half), min(last, mean + half)


def _cells_box(heatmap: torch.Tensor, cells: list[tuple[int, int]], outer: Box) -> Box:
    """The box (in pixels of `outer`) of a set of heatmap cells (row, col), with edges pulled in by weaker
    border cells (`_weighted_extent`)."""
    rows, cols = heatmap.shape
    x0, y0, x1, y1 = outer
    cell_w, cell_h = (x1 - x0) / cols, (y1 - y0) / rows
    col_start, col_stop = _weighted_extent([(c, float(heatmap[r, c])) for r, c in cells])
    row_start, row_stop = _weighted_extent([(r, float(heatmap[r, c])) for r, c in cells])
    return (
        x0 + math.floor(col_start * cell_w),
        y0 + math.floor(row_start * cell_h),
        x0 + math.ceil(col_stop * cell_w),
        y0 + math.ceil(row_stop * cell_h),
    )


def heatmap_components(heatmap: torch.Tensor, outer: Box, relative_threshold: float = 0.5) -> list[tuple[float, Box]]:
    """Boxes (in pixels of `outer`) of the 4-connected regions above `relative_threshold * max`, each with
    its peak value, strongest first (`_cells_box`)."""
    if float(heatmap.max()) <= 0:
        return []
    above = (heatmap >= relative_threshold * heatmap.max()).tolist()
    rows, cols = len(above), len(above[0])
    seen = [[False] * cols for _ in range(rows)]
    components = []
    for start_row, start_col in itertools.product(range(rows), range(cols)):
        if not above[start_row][start_col] or seen[start_row][start_col]:
            continue
        stack, cells = [(start_row, start_col)], []
        seen[start_row][start_col] = True
        while stack:
            row, col = stack.pop()
            cells.append((row, col))
            for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
                if 0 <= r < rows and 0 <= c < cols and above[r][c] and not seen[r][c]:
                    seen[r][c] = True
                    stack.append((r, c))
        peak = max(float(heatmap[r, c]) for r, c in cells)
        components.append((peak, _cells_box(heatmap, cells, outer)))
    return sorted(components, key=lambda component: -component[0])


def heatmap_extent(heatmap: torch.Tensor, outer: Box, relative_threshold: float = 0.5) -> Box | None:
    """The box (in pixels of `outer`) of every cell above `relative_threshold * max`, connected or not
    (`_cells_box`); None for an all-zero map. Inside a patch that holds one target, cells over the target
    can be split by weak ones (a crop of a digit's hollow middle), and all of them mark its extent."""
    if float(heatmap.max()) <= 0:
        return None
    cells = [tuple(cell) for cell in (heatmap >= relative_threshold * heatmap.max()).nonzero().tolist()]
    return _cells_box(heatmap, cells, outer)


class _CountingScorer:
    """Wraps a scorer to count evaluations and to refuse malformed answers with one clear error."""

    def __init__(self, scorer: Scorer, image: PIL.Image.Image, target: str):
        self.scorer, self.image, self.target, self.calls = scorer, image, target, 0

    def score(self, boxes: Sequence[Box]) -> list[float]:
        scores = list(self.scorer.score([self.image.crop(box) for box in boxes], self.target))
        self.calls += len(boxes)
        if len(scores) != len(boxes) or not all(0.0 <= float(s) <= 1.0 for s in scores):
            raise ValueError(
                f"{type(self.scorer).__name__}.score must return one confidence in [0, 1] per image; "
                f"got {scores!r} for {len(boxes)} images."
            )
        return [float(s) for s in scores]

    def heatmap(self, box: Box) -> torch.Tensor:
        heatmap = torch.as_tensor(self.scorer.heatmap(self.image.crop(box), self.target)).detach().float().cpu()
        self.calls += 1
        if heatmap.ndim != 2 or heatmap.numel() == 0 or not bool(torch.isfinite(heatmap).all()) or heatmap.min() < 0:
            raise ValueError(
                f"{type(self.scorer).__name__}.heatmap must return a non-empty 2-D map of finite non-negative "
                f"values; got shape {tuple(heatmap.shape)}."
            )
        return heatmap


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


# A found patch is tightened within this much context (1.5x around its centre): the patch grid or a
# heatmap region may cut the target, and the context brings the rest of it back in.
TIGHTEN_CONTEXT = 1.5


def tighten(counter: _CountingScorer, box: Box, min_side: float, budget_left=lambda needed: True) -> Box:
    """The target's box inside a confident patch, from the heatmap of the patch with its context
    (`TIGHTEN_CONTEXT`): the extent of the map (`heatmap_extent`) replaces the box, and while that still
    narrows it (to two thirds of the area or less) and is more than `min_side` wide, it is tightened again
    the same way, each step placing the target's edges on a finer grid of cells. The patch itself is
    returned when the result is larger than it (a flat map, or no budget left)."""
    current = enlarge_box(box, TIGHTEN_CONTEXT, *counter.image.size)
    while budget_left(1):
        region = heatmap_extent(counter.heatmap(current), current)
        if region is None:
            break
        narrows = 3 * _area(region) <= 2 * _area(current)
        current = region
        if not narrows or min(region[2] - region[0], region[3] - region[1]) <= min_side:
            break
    return box if _area(current) > _area(box) else current


def paint_over(image: PIL.Image.Image, boxes: Sequence[Box]) -> PIL.Image.Image:
    """A copy of `image` with each box filled with the median colour of the ring around it (the box enlarged
    1.5x, less the box), so that what was there is gone and the patch blends into its surroundings. The
    image itself when there is nothing to paint."""
    if not boxes:
        return image
    width, height = image.size
    painted = image.copy()
    for box in boxes:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"Box {box} to paint over is not inside the {width}x{height} image.")
        ring = enlarge_box(box, 1.5, width, height)
        pixels = torch.from_numpy(np.array(image.crop(ring)))  # (ring height, ring width, 3)
        outside = torch.ones(pixels.shape[:2], dtype=torch.bool)
        outside[y0 - ring[1] : y1 - ring[1], x0 - ring[0] : x1 - ring[0]] = False
        colour = pixels[outside].median(dim=0).values if bool(outside.any()) else pixels.reshape(-1, 3).median(dim=0).values
        painted.paste(tuple(colour.tolist()), box)
    return painted


def same_object(a: Box, b: Box) -> bool:
    """Whether two boxes mark the same object: they overlap by at least half of the smaller one, and neither
    is more than 4x the other's area (a box inside a much larger one, a collar on a dog, is another object)."""
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    smaller, larger = sorted((_area(a), _area(b)))
    return inter_w > 0 and inter_h > 0 and 2 * inter_w * inter_h >= smaller and larger <= 4 * smaller


def default_min_size(width: int, height: int) -> int:
    """SEAL's smallest patch side: a quarter of the short side, but at least 224 pixels."""
    return max(math.ceil(min(width, height) / 4), 224)


def visual_search(
    image: PIL.Image.Image,
    target: str,
    scorer: Scorer,
    *,
    min_size: int | None = None,
    conf_high: float = 0.5,
    conf_low: float = 0.3,
    max_calls: int | None = None,
    exclude: Sequence[Box] = (),
) -> SearchResult:
    """V*'s best-first hierarchical search for `target` in `image`.

    The root patch is the whole image. A popped patch that scores at least `conf_high` ends the search
    (at the root, every confident instance found in the heatmap is collected). Patches whose short side
    is at most `min_size` are leaves; others are split 2x2 (or into 4 strips when elongated) and each
    child gets priority sum over the patch and its ancestors a of share(heatmap_a, child) / 4^level(a),
    in one global queue, so the search backtracks. The 4 children are scored in one batched call, with
    the strongest region of the patch's heatmap (as SEAL's detector looks inside a patch): when that region
    reaches `conf_high` the search ends there, so a target cut by the split is still found whole. When
    the queue is empty or `max_calls` is spent, the best patch seen is returned if it reaches `conf_low`.
    A found patch is tightened onto the target with its heatmap (`tighten`). `exclude` boxes (objects known
    to be something else) are painted over before the search (`paint_over`), so nothing scores them.
    """
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"visual_search takes a PIL.Image.Image, got {type(image).__name__}.")
    if min(image.size) == 0:
        raise ValueError(f"visual_search got an empty image of size {image.size}.")
    if not 0.0 <= conf_low <= conf_high <= 1.0:
        raise ValueError(f"Need 0 <= conf_low <= conf_high <= 1, got conf_low={conf_low}, conf_high={conf_high}.")
    if max_calls is not None and max_calls < 1:
        raise ValueError(f"max_calls must be at least 1 (the root's score), got {max_calls}.")
    image = paint_over(image.convert("RGB"), exclude)
    min_size = default_min_size(*image.size) if min_size is None else min_size
    counter = _CountingScorer(scorer, image, target)
    root = (0, 0, *image.size)
    root_score = counter.score([root])[0]
    path = [(root, root_score)]
    best_box, best_score = root, root_score

    def budget_left(needed: int) -> bool:
        return max_calls is None or counter.calls + needed <= max_calls

    def found(box: Box, score: float, boxes: list[Box] | None = None) -> SearchResult:
        final = box if box == root else tighten(counter, box, min_size / 4, budget_left)
        return SearchResult(True, final, score, boxes or [final], path, counter.calls)

    if root_score >= conf_high:
        instances = []
        if budget_left(1):
            candidates = [box for _, box in heatmap_components(counter.heatmap(root), root)]
            if candidates and budget_left(len(candidates)):
                scores = counter.score(candidates)
                instances = [(s, b) for s, b in zip(scores, candidates) if s >= conf_high]
        instances.sort(key=lambda instance: -instance[0])
        boxes = [box for _, box in instances] or [root]
        return SearchResult(True, boxes[0], instances[0][0] if instances else root_score, boxes, path, counter.calls)

    # queue entries: (-priority, insertion order, box, level, score, ancestors' (box, level, heatmap))
    order = itertools.count()
    queue = [(0.0, next(order), root, 0, root_score, ())]
    while queue:
        _, _, box, level, score, ancestors = heapq.heappop(queue)
        if box != root:
            path.append((box, score))
            if score >= conf_high:
                return found(box, score)
        if min(box[2] - box[0], box[3] - box[1]) <= min_size or not budget_left(1 + 5):  # a heatmap, then 5 crops
            continue
        heatmap = counter.heatmap(box)
        lineage = (*ancestors, (box, level, heatmap))
        children = split_box(box)
        # the heatmap's strongest region is scored with the children, as SEAL's detector looks inside a
        # patch: a target that the 2x2 split cuts in pieces is still seen whole there
        components = heatmap_components(heatmap, box)
        region = components[0][1] if components and components[0][1] not in (box, *children) else None
        scores = counter.score([*children, *([region] if region else [])])
        if region is not None:
            region_score = scores[len(children)]
            path.append((region, region_score))
            if region_score >= conf_high:
                return found(region, region_score)
            if region_score > best_score:
                best_box, best_score = region, region_score
        for child, child_score in zip(children, scores):
            priority = sum(heatmap_share(a_heatmap, a_box, child) / 4**a_level for a_box, a_level, a_heatmap in lineage)
            heapq.heappush(queue, (-priority, next(order), child, level + 1, child_score, lineage))
            if child_score > best_score:
                best_box, best_score = child, child_score

    if best_score >= conf_low:
        return found(best_box, best_score)
    return SearchResult(False, None, best_score, [], path, counter.calls)


def exhaustive_search(
    image: PIL.Image.Image, target: str, scorer: Scorer, *, window: int, conf_low: float = 0.3, batch_size: int = 16
) -> SearchResult:
    """The baseline V* is measured against: score every `window`-sized square on a half-window stride, then
    tighten the best one as `visual_search` tightens its final patch."""
    image = image.convert("RGB")
    width, height = image.size
    window = min(window, width, height)
    stride = max(window // 2, 1)

    def starts(size: int) -> list[int]:
        return sorted({*range(0, size - window + 1, stride), size - window})

    boxes = [(x, y, x + window, y + window) for y in starts(height) for x in starts(width)]
    counter = _CountingScorer(scorer, image, target)
    scores = [s for i in range(0, len(boxes), batch_size) for s in counter.score(boxes[i : i + batch_size])]
    best = max(range(len(boxes)), key=scores.__getitem__)
    path = list(zip(boxes, scores))
    if scores[best] < conf_low:
        return SearchResult(False, None, scores[best], [], path, counter.calls)
    box = tighten(counter, boxes[best], window / 4)
    return SearchResult(True, box, scores[best], [box], path, counter.calls)


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
        return self.processor.image_processor(images, do_center_crop=False, size=size, return_tensors="pt")["pixel_values"]

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

    The default question puts the image after the words (`<image>` at the end): a decoder reads causally,
    so the image's patch tokens can then attend to what is asked for ("red digit") and each patch can
    check its own colour, instead of the last token having to bind word and picture on its own."""

    def __init__(
        self,
        model,
        processor,
        question: str = "Is there a {} in the image? <image>",
        grid: int = 4,
        batch_size: int = 32,
        max_cell: int | None = None,
    ):
        if grid < 1 or (max_cell is not None and max_cell < 1):
            raise ValueError(f"FuyuScorer needs grid >= 1 and max_cell >= 1 (or None), got grid={grid}, max_cell={max_cell}.")
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
            inputs = self.processor(images=[[image] for image in batch], text=[self.question.format(target)] * len(batch))
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


@dataclass
class VStarOutput:
    """answer: the generated answer. targets: what was searched for. searches: each target's SearchResult.
    memory: the visual working memory, (target, box in pixels, box normalised to [0, 1]) per found target."""

    answer: str
    targets: list[str]
    searches: dict[str, SearchResult]
    memory: list[tuple[str, Box, tuple[float, float, float, float]]]


TARGETS_PROMPT = "Which objects must be seen to answer: {}"
FOCUS_PROMPT = "{} Additional visual information to focus on: {}"


def parse_targets(reply: str) -> list[str]:
    """Target names from a comma-separated reply; 'none' (or nothing) gives no targets."""
    names = [name.strip(" .'\"\n").lower() for name in reply.replace(" and ", ",").split(",")]
    return list(dict.fromkeys(name for name in names if name and name != "none"))


def enlarge_box(box: Box, factor: float, width: int, height: int) -> Box:
    """`box` scaled by `factor` around its centre, clipped to the width x height image."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = (box[2] - box[0]) * factor / 2, (box[3] - box[1]) * factor / 2
    return (
        max(0, math.floor(cx - half_w)),
        max(0, math.floor(cy - half_h)),
        min(width, math.ceil(cx + half_w)),
        min(height, math.ceil(cy + half_h)),
    )


def focus_text(memory: Sequence[tuple[str, Box, tuple[float, ...]]]) -> str:
    """The working memory as prompt text: each target, its normalised box and an image placeholder for its crop."""
    return "; ".join(f"{name} at [{', '.join(f'{v:.2f}' for v in normalised)}] <image>" for name, _, normalised in memory)


# Boxes are assigned to targets jointly (every assignment tried) for at most this many found targets.
MAX_JOINTLY_ASSIGNED = 6


def separate_targets(image: PIL.Image.Image, searches: dict[str, SearchResult], scorer: Scorer, **search_kwargs) -> dict[str, SearchResult]:
    """Different targets are different objects. A tiny scorer often knows a digit when it sees one but not
    its colour, so the searches for "red digit" and "blue digit" can both stop on the same tile.

    1. Found targets are taken strongest first. One whose box marks the same object as a box already taken
       (`same_object`) is searched for again with the taken boxes painted over (`visual_search(exclude=...)`);
       it keeps its first box when that finds nothing (the targets may be one object after all). The new
       result's path and calls include the first search's.
    2. Then (for 2 to `MAX_JOINTLY_ASSIGNED` found targets) each target scores the crops of every found box
       in one batched call, and the boxes go to the targets in the assignment with the highest total
       confidence: two searches that each stopped on the other's object are swapped back. A target given
       another target's box keeps its own path, with that box and its score for it; one that keeps its own
       box keeps its result.
    The scoring calls count in each target's `num_calls`."""
    width, height = image.size
    separated = dict(searches)
    taken: list[Box] = []
    for target in sorted((t for t, r in searches.items() if r.found), key=lambda t: -searches[t].score):
        first = searches[target]
        if any(same_object(first.box, box) for box in taken):
            exclude = [*search_kwargs.get("exclude", ()), *taken]
            again = visual_search(image, target, scorer, **{**search_kwargs, "exclude": exclude})
            if again.found:
                separated[target] = SearchResult(
                    True, again.box, again.score, again.boxes, first.path + again.path, first.num_calls + again.num_calls
                )
        taken.append(separated[target].box)
    found = [target for target, result in separated.items() if result.found]
    if not 2 <= len(found) <= MAX_JOINTLY_ASSIGNED:
        return separated
    boxes = [separated[target].box for target in found]
    crops = [enlarge_box(box, 1.2, width, height) for box in boxes]
    confidence = [_CountingScorer(scorer, image, target).score(crops) for target in found]  # (targets, boxes)
    best = max(itertools.permutations(range(len(found))), key=lambda order: sum(confidence[t][b] for t, b in enumerate(order)))
    for target_index, (target, box_index) in enumerate(zip(found, best)):
        result = separated[target]
        if box_index == target_index:  # keeps its own box (and every instance its search saw)
            separated[target] = replace(result, num_calls=result.num_calls + len(crops))
        else:
            separated[target] = SearchResult(
                True, boxes[box_index], confidence[target_index][box_index], [boxes[box_index]], result.path,
                result.num_calls + len(crops),
            )
    return separated


def _generate_text(model, processor, images: list, text: str, **generate_kwargs) -> str:
    inputs = processor(images=[images], text=[text]).to(model.device)
    return processor.post_process_image_text_to_text(model.generate(**inputs, **generate_kwargs))[0]


def vstar_generate(
    model, processor, image, question: str, *, targets=None, scorer=None, search_kwargs=None, **generate_kwargs
) -> VStarOutput:
    """Answer `question` about `image` with a Fuyu-style `model`, searching first for what it needs.

    1. Without `targets`, the model is asked which objects it must see (`TARGETS_PROMPT`); its reply is
       parsed as a comma-separated list ("none": nothing to search).
    2. Each target is searched for with `visual_search(**search_kwargs)`; the scorer defaults to a
       FuyuScorer on `model`. Different targets then get different objects (`separate_targets`).
    3. The visual working memory holds each found box enlarged 1.2x around its centre, cropped at full
       resolution, with its coordinates normalised to the image.
    4. The whole image, the crops and the question (`FOCUS_PROMPT`) go to the model, which generates.
    If no target is named or none is found, the model answers from the whole image alone.
    """
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"vstar_generate takes a PIL.Image.Image, got {type(image).__name__}.")
    image = image.convert("RGB")
    width, height = image.size
    if targets is None:
        targets = parse_targets(_generate_text(model, processor, [image], TARGETS_PROMPT.format(question), **generate_kwargs))
    scorer = scorer if scorer is not None else FuyuScorer(model, processor)
    searches = {target: visual_search(image, target, scorer, **(search_kwargs or {})) for target in targets}
    searches = separate_targets(image, searches, scorer, **(search_kwargs or {}))
    memory = []
    for target, result in searches.items():
        if result.found:
            box = enlarge_box(result.box, 1.2, width, height)
            memory.append((target, box, (box[0] / width, box[1] / height, box[2] / width, box[3] / height)))
    if not memory:
        return VStarOutput(_generate_text(model, processor, [image], question, **generate_kwargs), list(targets), searches, memory)
    prompt = "<image>" + FOCUS_PROMPT.format(question, focus_text(memory))
    crops = [image.crop(box) for _, box, _ in memory]
    answer = _generate_text(model, processor, [image, *crops], prompt, **generate_kwargs)
    return VStarOutput(answer, list(targets), searches, memory)


def draw_search(image: PIL.Image.Image, result: SearchResult) -> PIL.Image.Image:
    """The image with every visited patch outlined in visiting order (blue early, red late, numbered)
    and the final box in thick green."""
    canvas = image.convert("RGB").copy()
    draw = PIL.ImageDraw.Draw(canvas)
    line = max(2, round(min(canvas.size) / 300))
    steps = max(len(result.path) - 1, 1)
    for step, (box, score) in enumerate(result.path):
        mix = step / steps
        color = (round(255 * mix), 64, round(255 * (1 - mix)))
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=color, width=line)
        draw.text((box[0] + 2 * line, box[1] + 2 * line), f"{step}: {score:.2f}", fill=color)
    for box in result.boxes:
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(0, 200, 0), width=3 * line)
    return canvas
