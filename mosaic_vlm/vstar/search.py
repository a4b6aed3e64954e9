"""V* guided visual search (Wu & Xie, 2023) for any mosaic model, with a pluggable scorer (`scorers`).

Some details are too small to see in the whole picture. `visual_search` finds the patch that holds a
target with V*'s best-first hierarchical search, with the settings of one frozen `SearchConfig`;
`exhaustive_search` is the window scan it is measured against.
"""

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch

from .boxes import Box, area, enlarge_box, require_box_inside, split_box
from .scorers import CheckedScorer, Scorer


@dataclass(frozen=True)
class SearchConfig:
    """The settings of one search.

    min_size: patches whose short side is at most this many pixels are leaves (default: SEAL's, a quarter of
        the image's short side but at least 224 px; `default_min_size`).
    conf_high: a patch scoring at least this ends the search.
    conf_low: when no patch reaches `conf_high`, the best patch seen is returned if it reaches this.
    max_calls: scorer evaluations allowed (None: no limit).
    confirm: a patch below the root that reaches `conf_high` ends the search only when the box its heatmap
        tightens it to also scores at least `conf_high` (one more evaluation); otherwise the search goes on, and
        the patch counts with that lower score. A scorer confidently wrong about a patch whose heatmap points
        elsewhere (a cup's rim for "cup") no longer ends the search there.
    """

    min_size: int | None = None
    conf_high: float = 0.5
    conf_low: float = 0.3
    max_calls: int | None = None
    confirm: bool = True

    def __post_init__(self):
        if self.min_size is not None and (not isinstance(self.min_size, int) or self.min_size < 1):
            raise ValueError(
                f"SearchConfig.min_size must be a whole number of pixels >= 1 (or None), got {self.min_size!r}."
            )
        if not 0.0 <= self.conf_low <= self.conf_high <= 1.0:
            raise ValueError(
                f"SearchConfig needs 0 <= conf_low <= conf_high <= 1, got conf_low={self.conf_low}, "
                f"conf_high={self.conf_high}."
            )
        if self.max_calls is not None and (not isinstance(self.max_calls, int) or self.max_calls < 1):
            raise ValueError(f"SearchConfig.max_calls must be at least 1 (the root's score), got {self.max_calls!r}.")


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


def _overlap_weights(cells: int, start: float, stop: float) -> torch.Tensor:
    """Length of overlap of each unit cell [i, i + 1) with [start, stop)."""
    edges = torch.arange(cells, dtype=torch.float64)
    return torch.clamp(torch.minimum(edges + 1, torch.tensor(stop)) - torch.maximum(edges, torch.tensor(start)), min=0)


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


# A found patch is tightened within this much context (1.5x around its centre): the patch grid or a
# heatmap region may cut the target, and the context brings the rest of it back in.
TIGHTEN_CONTEXT = 1.5


def tighten(counter: CheckedScorer, box: Box, min_side: float, budget_left=lambda needed: True) -> Box:
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
        narrows = 3 * area(region) <= 2 * area(current)
        current = region
        if not narrows or min(region[2] - region[0], region[3] - region[1]) <= min_side:
            break
    return box if area(current) > area(box) else current


def paint_over(image: PIL.Image.Image, boxes: Sequence[Box]) -> PIL.Image.Image:
    """A copy of `image` with each box filled with the median colour of the ring around it (the box enlarged
    1.5x, less the box), so that what was there is gone and the patch blends into its surroundings. The
    image itself when there is nothing to paint."""
    if not boxes:
        return image
    width, height = image.size
    painted = image.copy()
    for box in boxes:
        x0, y0, x1, y1 = box = require_box_inside(box, width, height, "A box to paint over")
        ring = enlarge_box(box, 1.5, width, height)
        pixels = torch.from_numpy(np.array(image.crop(ring)))  # (ring height, ring width, 3)
        outside = torch.ones(pixels.shape[:2], dtype=torch.bool)
        outside[y0 - ring[1] : y1 - ring[1], x0 - ring[0] : x1 - ring[0]] = False
        colour = (
            pixels[outside].median(dim=0).values if bool(outside.any()) else pixels.reshape(-1, 3).median(dim=0).values
        )
        painted.paste(tuple(colour.tolist()), box)
    return painted


def default_min_size(width: int, height: int) -> int:
    """SEAL's smallest patch side: a quarter of the short side, but at least 224 pixels."""
    return max(math.ceil(min(width, height) / 4), 224)


def visual_search(
    image: PIL.Image.Image,
    target: str,
    scorer: Scorer,
    config: SearchConfig | None = None,
    *,
    exclude: Sequence[Box] = (),
) -> SearchResult:
    """V*'s best-first hierarchical search for `target` in `image`.

    The settings are `config`'s (a `SearchConfig`; None: its defaults). The root patch is the whole image. A
    popped patch that scores at least `conf_high` ends the search
    (at the root, every confident instance found in the heatmap is collected). Patches whose short side
    is at most `min_size` are leaves; others are split 2x2 (or into 4 strips when elongated) and each
    child gets priority sum over the patch and its ancestors a of share(heatmap_a, child) / 4^level(a),
    in one global queue, so the search backtracks. The 4 children are scored in one batched call, with
    the strongest region of the patch's heatmap (as SEAL's detector looks inside a patch): when that region
    reaches `conf_high` the search ends there, so a target cut by the split is still found whole. When
    the queue is empty or `max_calls` is spent, the best patch seen is returned if it reaches `conf_low`.
    A found patch is tightened onto the target with its heatmap (`tighten`), or becomes the box the scorer
    locates in it when the scorer can (`Scorer.locate`: a detector's own box). `exclude` boxes (objects known
    to be something else) are painted over before the search (`paint_over`), so nothing scores them.
    """
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"visual_search takes a PIL.Image.Image, got {type(image).__name__}.")
    if min(image.size) == 0:
        raise ValueError(f"visual_search got an empty image of size {image.size}.")
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"visual_search's target must be a non-empty string, got {target!r}.")
    config = SearchConfig() if config is None else config
    if not isinstance(config, SearchConfig):
        raise TypeError(f"visual_search's config must be a SearchConfig, got {type(config).__name__}.")
    if isinstance(exclude, str) or not isinstance(exclude, Sequence):
        raise TypeError(f"visual_search's exclude must be a sequence of boxes (x0, y0, x1, y1), got {exclude!r}.")
    image = paint_over(image.convert("RGB"), exclude)
    min_size = default_min_size(*image.size) if config.min_size is None else config.min_size
    conf_high, conf_low, max_calls = config.conf_high, config.conf_low, config.max_calls
    counter = CheckedScorer(scorer, image, target)
    root = (0, 0, *image.size)
    root_score = counter.score([root])[0]
    path = [(root, root_score)]

    def budget_left(needed: int) -> bool:
        return max_calls is None or counter.calls + needed <= max_calls

    scored = {root: root_score}  # every patch's score, as calibrated by a failed confirmation

    def found(box: Box, score: float) -> SearchResult:
        located = counter.locate(box) if box != root and budget_left(1) else None
        final = located or (box if box == root else tighten(counter, box, min_size / 4, budget_left))
        return SearchResult(True, final, score, [final], path, counter.calls)

    def confirmed(box: Box, score: float) -> SearchResult | None:
        """The search's result at a patch that reached conf_high, or None when its tightened box does not."""
        result = found(box, score)
        if not config.confirm or result.box == box or not budget_left(1):
            return result
        check = counter.score([result.box])[0]
        path.append((result.box, check))
        result.num_calls = counter.calls
        if check >= conf_high:
            return result
        scored[box] = check  # the heatmap disagrees with the patch's score: the patch is worth what its box is
        return None

    if root_score >= conf_high:
        if (located := counter.locate(root) if budget_left(1) else None) is not None:
            return SearchResult(True, located, root_score, [located], path, counter.calls)
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
            if score >= conf_high and (result := confirmed(box, score)) is not None:
                return result
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
            scored[region] = region_score
            if region_score >= conf_high and (result := confirmed(region, region_score)) is not None:
                return result
        for child, child_score in zip(children, scores):
            priority = sum(
                heatmap_share(a_heatmap, a_box, child) / 4**a_level for a_box, a_level, a_heatmap in lineage
            )
            heapq.heappush(queue, (-priority, next(order), child, level + 1, child_score, lineage))
            scored.setdefault(child, child_score)

    best_box = max(scored, key=scored.__getitem__)  # the first seen among equals
    if scored[best_box] >= conf_low:
        return found(best_box, scored[best_box])
    return SearchResult(False, None, scored[best_box], [], path, counter.calls)


def exhaustive_search(
    image: PIL.Image.Image, target: str, scorer: Scorer, *, window: int, conf_low: float = 0.3, batch_size: int = 16
) -> SearchResult:
    """The baseline V* is measured against: score every `window`-sized square on a half-window stride, then
    tighten the best one as `visual_search` tightens its final patch."""
    if not isinstance(image, PIL.Image.Image) or min(image.size) == 0:
        raise ValueError(f"exhaustive_search takes a non-empty PIL.Image.Image, got {image!r}.")
    if window < 1 or batch_size < 1:
        raise ValueError(
            f"exhaustive_search needs window >= 1 and batch_size >= 1, got window={window}, batch_size={batch_size}."
        )
    image = image.convert("RGB")
    width, height = image.size
    window = min(window, width, height)
    stride = max(window // 2, 1)

    def starts(size: int) -> list[int]:
        return sorted({*range(0, size - window + 1, stride), size - window})

    boxes = [(x, y, x + window, y + window) for y in starts(height) for x in starts(width)]
    counter = CheckedScorer(scorer, image, target)
    scores = [s for i in range(0, len(boxes), batch_size) for s in counter.score(boxes[i : i + batch_size])]
    best = max(range(len(boxes)), key=scores.__getitem__)
    path = list(zip(boxes, scores))
    if scores[best] < conf_low:
        return SearchResult(False, None, scores[best], [], path, counter.calls)
    box = tighten(counter, boxes[best], window / 4)
    return SearchResult(True, box, scores[best], [box], path, counter.calls)
