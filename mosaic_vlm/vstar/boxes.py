"""Boxes in image pixels and their geometry: the one box type V*, its data sets and its benchmark share."""

import math

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in original pixels, x1/y1 exclusive


def area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def overlap(a: Box, b: Box) -> int:
    """Area of the intersection of two boxes."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def box_iou(a: Box, b: Box) -> float:
    inter = overlap(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0


def normalised(box: Box, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """`box` as fractions of the width x height image."""
    width, height = size
    return (box[0] / width, box[1] / height, box[2] / width, box[3] / height)


def require_box_inside(box, width: int, height: int, what: str) -> Box:
    """`box` as a Box of ints, or one clear error when it is not 4 numbers with x0 < x1 and y0 < y1 inside the
    width x height image."""
    if not (isinstance(box, (tuple, list)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise ValueError(f"{what} must be a box (x0, y0, x1, y1) of 4 numbers, got {box!r}.")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"{what} {tuple(box)} is not inside the {width}x{height} image (need 0 <= x0 < x1 <= width, "
            "0 <= y0 < y1 <= height)."
        )
    return (x0, y0, x1, y1)


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


def same_object(a: Box, b: Box) -> bool:
    """Whether two boxes mark the same object: they overlap by at least half of the smaller one, and neither
    is more than 4x the other's area (a box inside a much larger one, a collar on a dog, is another object)."""
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    smaller, larger = sorted((area(a), area(b)))
    return inter_w > 0 and inter_h > 0 and 2 * inter_w * inter_h >= smaller and larger <= 4 * smaller
