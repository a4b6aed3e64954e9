"""Pictures of a V* search, made to be read by a person: what was asked, where the search went, where it ended
and whether it was sure, where the target really is, and what the answerer was shown."""

from collections.abc import Sequence

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from .boxes import Box, box_iou
from .search import SearchConfig, SearchResult

CONFIDENT = (0, 190, 0)  # final box of a search that ended confident
UNSURE = (225, 20, 20)  # final box of one that did not
TRUTH = (255, 205, 0)  # where the target really is (dashed)
EARLY, LATE = (120, 200, 255), (40, 40, 160)  # visited patches: outline colour from the first to the last
INK, PAPER = (20, 20, 20), (255, 255, 255)
# Visiting-order numbers go on at most this many patches: where the search began, narrowed down and ended.
KEY_PATCHES = 6


def draw_search(
    image: PIL.Image.Image,
    result: SearchResult,
    *,
    question: str | None = None,
    target: str | None = None,
    answer: str | None = None,
    truth: Box | None = None,
    crops: Sequence[tuple[str, PIL.Image.Image]] = (),
    config: SearchConfig | None = None,
) -> PIL.Image.Image:
    """One search as a picture: a caption (the question, the answer, the target and how the search ended), the
    image with the visited patches outlined thin from light (early) to dark (late), the visiting order numbered
    on a few key patches (`KEY_PATCHES`, each with its score), the final box thick (green when its score reached
    `config.conf_high`, red when not), the ground-truth box `truth` dashed yellow when known; beside it the
    `crops` the answerer saw, (name, crop) pairs; under it a legend of what is drawn. `config` is the search's
    (None: `SearchConfig()`, as `visual_search` takes it)."""
    config = SearchConfig() if config is None else config
    picture = image.convert("RGB").copy()
    scale = max(1, round(min(picture.size) / 400))  # line widths and text grow with the image
    font = PIL.ImageFont.load_default(size=13 * scale)
    draw = PIL.ImageDraw.Draw(picture)
    visited = result.path[1:]  # the first entry is the whole image

    def order_colour(number: int) -> tuple:  # of the number-th visited patch, counted from 1
        return _mix(EARLY, LATE, (number - 1) / max(1, len(visited) - 1))

    for number, (box, _) in enumerate(visited, start=1):
        draw.rectangle(_inside(box), outline=order_colour(number), width=scale)
    confident = result.found and result.score >= config.conf_high
    marked = []  # the final and true boxes as drawn, which labels keep clear of
    if result.found:
        marked.append(_outside(result.box, 3 * scale, picture.size))
        draw.rectangle(marked[-1], outline=CONFIDENT if confident else UNSURE, width=3 * scale)
    if truth is not None:
        marked.append(_outside(truth, 6 * scale, picture.size))
        _dashed_rectangle(draw, marked[-1], TRUTH, scale)
    for number, text, spot in _labels(result, marked, picture.size, lambda text: _text_size(draw, text, font, scale)):
        colour = order_colour(number)
        draw.rectangle(spot, fill=colour)
        draw.text((spot[0] + scale, spot[1] + scale), text, fill=INK if sum(colour) > 450 else PAPER, font=font)
    caption = _caption_lines(result, confident, config, question, target, answer, truth)
    return _compose(picture, caption, _legend_entries(result, confident, truth is not None), crops, font, scale)


def _labels(
    result: SearchResult, keep_clear: list[Box], size: tuple[int, int], text_size
) -> list[tuple[int, str, Box]]:
    """(visiting number, text, where) of the labels of the key patches (`_key_patches`): each at the first free
    spot (`_free_spot`), covering nothing in `keep_clear` nor another label; a patch with no free spot goes
    unlabelled. `text_size(text)` gives a label's (width, height)."""
    taken = list(keep_clear)
    labels = []
    for number, box, score in _key_patches(result):
        text = f"{number} · {score:.2f}"
        spot = _free_spot(box, text_size(text), size, taken)
        if spot is not None:
            taken.append(spot)
            labels.append((number, text, spot))
    return labels


def _key_patches(result: SearchResult) -> list[tuple[int, Box, float]]:
    """(visiting number from 1, box, score) of the patches worth numbering: the first one visited, those on the
    way down to where the search ended (each holds the final box's centre), and the last one; when nothing was
    found, the best-scoring one instead of the way down. At most `KEY_PATCHES`, the last ones kept."""
    visited = [(number, box, score) for number, (box, score) in enumerate(result.path[1:], start=1)]
    if not visited:
        return []
    if result.found:
        x, y = (result.box[0] + result.box[2]) / 2, (result.box[1] + result.box[3]) / 2
        way = [patch for patch in visited if patch[1][0] <= x < patch[1][2] and patch[1][1] <= y < patch[1][3]]
    else:
        way = [max(visited, key=lambda patch: patch[2])]
    chosen = sorted({visited[0], *way, visited[-1]})
    return [chosen[0], *chosen[1:][-(KEY_PATCHES - 1) :]] if len(chosen) > KEY_PATCHES else chosen


def _caption_lines(result, confident, config, question, target, answer, truth) -> list[tuple[str, tuple]]:
    """(text, colour) lines: what was asked and answered, how the search ended and, when the truth is known,
    whether its box is on the target (IoU > 0.5, the benchmark's measure)."""
    lines = []
    if question is not None:
        lines.append((f"Q: {question}" + (f"   V* answered: {answer}" if answer is not None else ""), INK))
    what = f"search for '{target}'" if target is not None else "search"
    calls = f"{result.num_calls} scorer calls"
    if not result.found:
        lines.append((f"{what}: not found (best score {result.score:.2f} < {config.conf_low:.2f}), {calls}", UNSURE))
    elif confident:
        lines.append(
            (f"{what}: found, confident (score {result.score:.2f} >= {config.conf_high:.2f}), {calls}", CONFIDENT)
        )
    else:
        unsure = f"score {result.score:.2f} < {config.conf_high:.2f}), the box is the best patch seen"
        lines.append((f"{what}: ended unsure ({unsure}, {calls}", UNSURE))
    if truth is not None and result.found:
        iou = box_iou(result.box, truth)
        hit = iou > 0.5
        lines.append(
            (f"the final box is {'on' if hit else 'NOT on'} the target (IoU {iou:.2f})", CONFIDENT if hit else UNSURE)
        )
    return lines


def _legend_entries(result: SearchResult, confident: bool, has_truth: bool) -> list[tuple[str, tuple, str]]:
    """(swatch style, colour, words) for what this picture shows."""
    entries = [
        ("thin", None, "visited patches, light to dark in visiting order"),
        ("label", LATE, "n · s: n-th patch visited, its score s"),
    ]
    if result.found:
        entries.append(
            ("thick", CONFIDENT, "final box, confident") if confident else ("thick", UNSURE, "final box, unsure")
        )
    if has_truth:
        entries.append(("dashed", TRUTH, "where the target is"))
    return entries


def _compose(picture, caption, legend, crops, font, scale) -> PIL.Image.Image:
    """The drawn image with the caption above, the crops to its right and the legend below, text wrapped to
    the width."""
    pad, line_height = 6 * scale, 18 * scale
    measure = PIL.ImageDraw.Draw(picture).textlength
    panel = _crops_panel(crops, picture.height, font, scale, measure) if crops else None
    width = picture.width + (panel.width + pad if panel else 0)
    caption = [(line, colour) for text, colour in caption for line in _wrapped(text, width - 2 * pad, font, measure)]
    swatch = 3 * line_height // 2
    legend_rows, row = [], []
    for entry in legend:  # legend entries side by side, as many as fit in a row
        entry_width = swatch + pad + round(measure(entry[2], font=font)) + 3 * pad
        if row and sum(w for _, w in row) + entry_width > width - pad:
            legend_rows.append(row)
            row = []
        row.append((entry, entry_width))
    legend_rows.append(row)
    top = pad + line_height * len(caption)
    bottom = top + picture.height + pad
    canvas = PIL.Image.new("RGB", (width, bottom + line_height * len(legend_rows) + pad), PAPER)
    draw = PIL.ImageDraw.Draw(canvas)
    for index, (text, colour) in enumerate(caption):
        draw.text((pad, pad // 2 + index * line_height), text, fill=colour, font=font)
    canvas.paste(picture, (0, top))
    if panel:
        canvas.paste(panel, (picture.width + pad, top))
    for index, row in enumerate(legend_rows):
        x, y = pad, bottom + index * line_height
        for (style, colour, words), entry_width in row:
            middle = y + line_height // 2
            if style == "label":
                draw.rectangle((x, y + scale, x + swatch, y + line_height - scale), fill=colour)
            elif style == "dashed":
                _dashed_rectangle(draw, (x, y + 2 * scale, x + swatch, y + line_height - 2 * scale), colour, scale)
            elif style == "thick":
                draw.line((x, middle, x + swatch, middle), fill=colour, width=3 * scale)
            else:  # thin, from the first visited patch's colour to the last one's
                for step in range(4):
                    start = x + step * swatch // 4
                    draw.line(
                        (start, middle, start + swatch // 4, middle), fill=_mix(EARLY, LATE, step / 3), width=scale
                    )
            draw.text((x + swatch + pad, y), words, fill=INK, font=font)
            x += entry_width
    return canvas


def _wrapped(text: str, width: int, font, measure) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` (a single long word stays whole)."""
    lines = [""]
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines[-1] else word
        if lines[-1] and measure(candidate, font=font) > width:
            lines.append(word)
        else:
            lines[-1] = candidate
    return lines


def _crops_panel(crops, height: int, font, scale: int, measure) -> PIL.Image.Image:
    """The crops the answerer saw, each enlarged (pixels kept sharp) under its name, in a column `height` high."""
    pad, line_height = 6 * scale, 18 * scale
    title = "the answerer saw:"
    side = max(8, min(96 * scale, (height - line_height) // len(crops) - line_height - pad))
    width = max(side, *(round(measure(text, font=font)) for text in (title, *(name for name, _ in crops))))
    panel = PIL.Image.new("RGB", (width + pad, height), (245, 245, 245))
    draw = PIL.ImageDraw.Draw(panel)
    draw.text((0, 0), title, fill=INK, font=font)
    y = line_height + pad
    for name, crop in crops:
        draw.text((0, y), name, fill=INK, font=font)
        y += line_height
        factor = side / max(crop.size)
        size = (max(1, round(crop.width * factor)), max(1, round(crop.height * factor)))
        enlarged = crop.convert("RGB").resize(size, PIL.Image.NEAREST if factor >= 2 else PIL.Image.BILINEAR)
        panel.paste(enlarged, (0, y))
        draw.rectangle((0, y, size[0] - 1, y + size[1] - 1), outline=INK, width=1)
        y += size[1] + pad
    return panel


def _free_spot(box: Box, size: tuple[int, int], canvas: tuple[int, int], taken: list[Box]) -> Box | None:
    """Where a label of `size` goes for the patch `box`: the first of its inside corners, then just above or
    below it, that lies in the canvas and overlaps nothing in `taken`; None when every spot is taken."""
    width, height = size
    x0, y0, x1, y1 = box
    corners = [(x0, y0), (x1 - width, y0), (x0, y1 - height), (x1 - width, y1 - height), (x0, y0 - height), (x0, y1)]
    for x, y in corners:
        spot = (x, y, x + width, y + height)
        inside = 0 <= x and 0 <= y and x + width <= canvas[0] and y + height <= canvas[1]
        if inside and not any(_overlaps(spot, other) for other in taken):
            return spot
    return None


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _text_size(draw, text: str, font, scale: int) -> tuple[int, int]:
    right, bottom = draw.textbbox((0, 0), text, font=font)[2:]
    return right + 2 * scale, bottom + 2 * scale


def _inside(box: Box) -> tuple[int, int, int, int]:
    return box[0], box[1], box[2] - 1, box[3] - 1


def _outside(box: Box, width: int, canvas: tuple[int, int]) -> tuple[int, int, int, int]:
    """An outline `width` thick drawn just outside `box` (within the canvas), so it hides none of what it marks."""
    return (
        max(0, box[0] - width),
        max(0, box[1] - width),
        min(canvas[0], box[2] + width) - 1,
        min(canvas[1], box[3] + width) - 1,
    )


def _dashed_rectangle(draw, box: tuple[int, int, int, int], colour, width: int) -> None:
    x0, y0, x1, y1 = box
    dash = 4 * width
    for start in range(x0, x1 + 1, 2 * dash):
        stop = min(start + dash, x1)
        draw.line((start, y0, stop, y0), fill=colour, width=width)
        draw.line((start, y1, stop, y1), fill=colour, width=width)
    for start in range(y0, y1 + 1, 2 * dash):
        stop = min(start + dash, y1)
        draw.line((x0, start, x0, stop), fill=colour, width=width)
        draw.line((x1, start, x1, stop), fill=colour, width=width)


def _mix(first: tuple, last: tuple, share: float) -> tuple:
    return tuple(round(a + (b - a) * share) for a, b in zip(first, last))
