"""Pictures of a V* search."""

import PIL.Image
import PIL.ImageDraw

from .search import SearchResult


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
