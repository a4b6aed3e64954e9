"""A small V*Bench-like set, offline: real photos that ship in scikit-image, at least 1024 px, with
handwritten sklearn digits drawn in colour on small white tiles (about 3% of the short side) at random
positions. Such a tile is a few pixels wide once the whole photo is fitted into a small model's input,
so it must be searched for.

Questions (each with its answer and the targets a search needs):
- digit (attribute): "What digit is on the tile?" -> "seven"; target "digit";
- colour (attribute): "What colour is the digit?" -> "red"; target "digit";
- spatial: "Is the red digit left or right of the blue digit?" -> "left"; targets "red digit" and
  "blue digit".

`training_rows` makes the rows V*'s two Fuyu-style models learn from with Trainer, as in SEAL: the
answering model names the targets a question needs and answers directly or from V*'s visual working
memory; the search model answers yes/no questions about crops of every size a search visits ("Is there a
red digit in the image?").
"""

import collections
import random
from dataclasses import dataclass
from functools import cache

import numpy as np
import PIL.Image

from mosaic_vlm.processing.fuyu_special_tokens import IMAGE_PLACEHOLDER
from mosaic_vlm.processing.image_processing_mosaic_fuyu import fitted_size
from mosaic_vlm.vstar.boxes import Box, normalised, overlap
from mosaic_vlm.vstar.prompts import PRESENCE_QUESTION, TARGETS_PROMPT, focus_question

from .digits import DIGIT_NAMES

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field", "immunohistochemistry")
COLOURS = {"red": (220, 20, 20), "green": (20, 150, 30), "blue": (20, 50, 220), "black": (0, 0, 0)}
DIGIT_QUESTION = "What digit is on the tile?"
COLOUR_QUESTION = "What colour is the digit?"
SPATIAL_QUESTION = "Is the {} digit left or right of the {} digit?"


@cache
def photo(name: str, short_side: int = 1024) -> PIL.Image.Image:
    """A scikit-image photo as RGB, upscaled (bicubic) so that its short side is at least `short_side`."""
    from skimage import data

    image = PIL.Image.fromarray(getattr(data, name)()).convert("RGB")
    scale = max(1.0, short_side / min(image.size))
    return image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.BICUBIC)


@cache
def _digit_strokes() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target


@dataclass(frozen=True)
class Tile:
    digit: int
    colour: str
    box: Box
    sample: int  # which handwritten sample of the digit

    def image(self) -> PIL.Image.Image:
        """The white tile with the digit's strokes in its colour (strokes blended by their intensity)."""
        strokes, _ = _digit_strokes()
        side = self.box[2] - self.box[0]
        inner = side - max(2, side // 8) * 2
        ink = PIL.Image.fromarray((strokes[self.sample] * 255).astype(np.uint8)).resize(
            (inner, inner), PIL.Image.BILINEAR
        )
        tile = PIL.Image.new("RGB", (side, side), (255, 255, 255))
        tile.paste(PIL.Image.new("RGB", (inner, inner), COLOURS[self.colour]), ((side - inner) // 2,) * 2, mask=ink)
        return tile


@dataclass(frozen=True)
class Scene:
    photo: str
    tiles: tuple[Tile, ...]

    @property
    def size(self) -> tuple[int, int]:
        return photo(self.photo).size

    def render(self) -> PIL.Image.Image:
        """The scene at full resolution."""
        return self.crop((0, 0, *self.size))

    def crop(self, box: Box) -> PIL.Image.Image:
        """`render().crop(box)`, without rendering the rest of the scene."""
        image = photo(self.photo).crop(box)
        for tile in self.tiles:
            if overlap(tile.box, box):
                image.paste(tile.image(), (tile.box[0] - box[0], tile.box[1] - box[1]))
        return image

    def fitted(self, max_size: tuple[int, int], box: Box | None = None) -> PIL.Image.Image:
        """The `box` part of the scene (None: all of it) fitted into `max_size` as a model's processor is given a
        crop: cut out, then fitted (`_fitted`). The whole scene comes pixel for pixel as fitting its render, but
        from the photo reduced once (cached), with only the blocks under the tiles reduced again: ten times faster."""
        if box is not None and box != (0, 0, *self.size):
            crop = self.crop(box)
            return _fitted(crop, (0, 0, *crop.size), max_size)
        width, height = self.size
        fitted_height, fitted_width = fitted_size(height, width, *max_size)
        fx = max(1, int(width / fitted_width / TRAINING_REDUCING_GAP))
        fy = max(1, int(height / fitted_height / TRAINING_REDUCING_GAP))
        reduced = _reduced_photo(self.photo, (fx, fy)).copy()
        for tile in self.tiles:
            x0, y0 = tile.box[0] // fx * fx, tile.box[1] // fy * fy  # the whole blocks under the tile
            x1, y1 = min(width, -(-tile.box[2] // fx) * fx), min(height, -(-tile.box[3] // fy) * fy)
            reduced.paste(self.crop((x0, y0, x1, y1)).reduce((fx, fy)), (x0 // fx, y0 // fy))
        return reduced.resize((fitted_width, fitted_height), PIL.Image.BILINEAR, box=(0, 0, width / fx, height / fy))


@cache
def _reduced_photo(name: str, factors: tuple[int, int]) -> PIL.Image.Image:
    return photo(name).reduce(factors)


@dataclass(frozen=True)
class Question:
    scene: Scene
    kind: str  # "digit", "colour" or "spatial"
    question: str
    answer: str
    targets: tuple[str, ...]
    target_boxes: tuple[Box, ...]


def random_scene(rng: random.Random, digits: list[int], tile_fraction: float = 0.03) -> Scene:
    """A random photo with one tile per digit, each at a random place apart from the others, in colours
    that differ from each other."""
    name = rng.choice(PHOTOS)
    width, height = photo(name).size
    side = max(12, round(min(width, height) * tile_fraction))
    _, labels = _digit_strokes()
    tiles, colours = [], rng.sample(list(COLOURS), len(digits))
    while len(tiles) < len(digits):
        x, y = rng.randrange(0, width - side), rng.randrange(0, height - side)
        box = (x, y, x + side, y + side)
        expanded = (x - 2 * side, y - 2 * side, x + 3 * side, y + 3 * side)
        if all(overlap(expanded, tile.box) == 0 for tile in tiles):
            digit = digits[len(tiles)]
            sample = rng.choice(np.flatnonzero(labels == digit).tolist())
            tiles.append(Tile(digit, colours[len(tiles)], box, sample))
    return Scene(name, tuple(tiles))


def random_question(rng: random.Random, kind: str) -> Question:
    if kind == "spatial":
        scene = random_scene(rng, [rng.randrange(10), rng.randrange(10)])
        a, b = scene.tiles
        answer = "left" if (a.box[0] + a.box[2]) < (b.box[0] + b.box[2]) else "right"
        question = SPATIAL_QUESTION.format(a.colour, b.colour)
        return Question(scene, kind, question, answer, (f"{a.colour} digit", f"{b.colour} digit"), (a.box, b.box))
    scene = random_scene(rng, [rng.randrange(10)])
    tile = scene.tiles[0]
    question, answer = (DIGIT_QUESTION, DIGIT_NAMES[tile.digit]) if kind == "digit" else (COLOUR_QUESTION, tile.colour)
    return Question(scene, kind, question, answer, ("digit",), (tile.box,))


def benchmark_questions(count: int = 120, seed: int = 0) -> list[Question]:
    """`count` questions, the three kinds in turn, each on its own random scene."""
    rng = random.Random(seed)
    return [random_question(rng, ("digit", "colour", "spatial")[index % 3]) for index in range(count)]


def memory_box(rng: random.Random, target: Box, size: tuple[int, int]) -> Box:
    """A box like the one a search ends with (the target give or take a quarter of its side on each edge),
    enlarged 1.2x."""
    width, height = size
    side = target[2] - target[0]
    x0, y0 = target[0] - rng.randint(0, side // 4), target[1] - rng.randint(0, side // 4)
    x1, y1 = target[2] + rng.randint(0, side // 4), target[3] + rng.randint(0, side // 4)
    grow_x, grow_y = (x1 - x0) // 10, (y1 - y0) // 10  # 1.2x around the centre
    return (max(0, x0 - grow_x), max(0, y0 - grow_y), min(width, x1 + grow_x), min(height, y1 + grow_y))


# Training images are fitted with PIL's reducing gap: 3-4x faster on a whole photo, within 0.4/255 (mean)
# of the processor's own resize.
TRAINING_REDUCING_GAP = 3.0


def search_crop(rng: random.Random, size: tuple[int, int], tile: Box) -> tuple[int, Box]:
    """A crop like those a search scores: one cell of the image split 2^d x 2^d (d = 0..6, from the whole
    image down to half a tile), which is a quadrant of the search tree or a heatmap cell of one; a third of
    the time the cell under the middle of `tile` (a search scores far more empty crops than full ones).
    Returns 2^d and the cell."""
    width, height = size
    cells = 2 ** rng.randint(0, 6)
    if rng.random() < 1 / 3:
        column, row = (tile[0] + tile[2]) * cells // (2 * width), (tile[1] + tile[3]) * cells // (2 * height)
    else:
        column, row = rng.randrange(cells), rng.randrange(cells)
    return cells, (
        column * width // cells,
        row * height // cells,
        (column + 1) * width // cells,
        (row + 1) * height // cells,
    )


def shows(crop: Box, tile: Box) -> bool:
    """Whether a crop clearly shows a tile: it holds at least half of the tile (or is at least half covered
    by it), and the tile spans at least an eighth of the crop's long side, so that it is still a few pixels
    wide once the crop is fitted into a small model's input. A whole 1024-px photo holding a 31-px tile
    does not show it; that is what the search is for."""
    crop_area, tile_area = (crop[2] - crop[0]) * (crop[3] - crop[1]), (tile[2] - tile[0]) * (tile[3] - tile[1])
    large_enough = 8 * (tile[2] - tile[0]) >= max(crop[2] - crop[0], crop[3] - crop[1])
    return large_enough and overlap(crop, tile) >= 0.5 * min(crop_area, tile_area)


def _focus_row(rng: random.Random, item: Question, whole: PIL.Image.Image, max_size: tuple[int, int]) -> dict:
    """`item` asked with V*'s working memory: the whole image, then a crop per target with its box."""
    size = item.scene.size
    memory = [memory_box(rng, box, size) for box in item.target_boxes]
    return {
        "kind": f"focus {item.kind}",
        "images": [whole, *(item.scene.fitted(max_size, box) for box in memory)],
        "question": focus_question(
            item.question, [(name, normalised(box, size)) for name, box in zip(item.targets, memory)]
        ),
        "answer": item.answer,
    }


def _answer_rows(rng: random.Random, max_size: tuple[int, int]) -> list[dict]:
    """One question asked with V*'s working memory, and a quarter of the time each for its target list
    and directly. The working-memory rows are where the rows go: reading a digit from a crop among other
    images and comparing two coordinates take a tiny model tens of thousands of rows each, so digit and
    left/right questions come three times as often as colour ones, while naming the targets (three
    phrasings) and the direct answer (a guess from a whole image where the tiles are a pixel or two wide)
    need few rows."""
    item = random_question(rng, rng.choices(("digit", "colour", "spatial"), weights=(3, 1, 3))[0])
    whole = item.scene.fitted(max_size)
    rows = [_focus_row(rng, item, whole, max_size)]
    if rng.random() < 1 / 4:
        rows.append(
            {
                "kind": "targets",
                "images": [whole],
                "question": TARGETS_PROMPT.format(item.question),
                "answer": ", ".join(item.targets),
            }
        )
    if rng.random() < 1 / 4:
        rows.append(
            {"kind": f"direct {item.kind}", "images": [whole], "question": item.question, "answer": item.answer}
        )
    return rows


def _digit_rows(rng: random.Random, max_size: tuple[int, int]) -> list[dict]:
    """A digit question asked with V*'s working memory: the answering model's first stage. Trained on all
    questions at once, the tiny model learns colours and left/right but never starts to read digits
    (12% held out, near chance); this stage alone teaches it (85% after 1500 steps), and the answer stage
    that starts from it keeps most of that."""
    item = random_question(rng, "digit")
    return [_focus_row(rng, item, item.scene.fitted(max_size), max_size)]


def _presence_rows(rng: random.Random, max_size: tuple[int, int], count: int) -> list[dict]:
    """`count` yes/no questions ("Is there a red digit in the image?") about search-shaped crops of one
    scene with one or two tiles. Three in five ask for a colour: half the time the colour of the tile the
    crop is drawn around, half the time another colour (the other tile's, when there is one), so that a
    search for the blue digit does not stop at the red one."""
    scene = random_scene(rng, [rng.randrange(10) for _ in range(rng.choice((1, 2)))])
    full = scene.render()
    rows = []
    for _ in range(count):
        tile = rng.choice(scene.tiles)
        cells, crop = search_crop(rng, full.size, tile.box)
        others = [t.colour for t in scene.tiles if t is not tile] or [c for c in COLOURS if c != tile.colour]
        target = (
            "digit" if rng.random() < 0.4 else f"{tile.colour if rng.random() < 0.5 else rng.choice(others)} digit"
        )
        shown = any(shows(crop, t.box) for t in scene.tiles if target in ("digit", f"{t.colour} digit"))
        rows.append(
            {
                "kind": f"presence {cells}x{cells}",
                "images": [_fitted(full, crop, max_size)],
                "question": PRESENCE_QUESTION.format(target),
                "answer": "yes" if shown else "no",
            }
        )
    return rows


def _fitted(image: PIL.Image.Image, box: Box, max_size: tuple[int, int]) -> PIL.Image.Image:
    """The `box` part of `image` fitted into max_size, resized straight from the image (no copy)."""
    height, width = fitted_size(box[3] - box[1], box[2] - box[0], *max_size)
    return image.resize((width, height), PIL.Image.BILINEAR, box=box, reducing_gap=TRAINING_REDUCING_GAP)


TASKS = ("answer", "digits", "search")


def training_rows(
    count: int, seed: int, max_size: tuple[int, int], task: str = "answer", batch_size: int = 1
) -> list[dict]:
    """`count` rows of {kind, images, question, answer} for one of V*'s two models, as in SEAL:
    - "answer": per scene, its question asked with the working memory, for its target list and directly;
    - "digits": digit questions with the working memory only, the answering model's first stage;
    - "search": yes/no presence questions about crops shaped like those a search scores (8 per scene).
    Images are fitted into `max_size` (height, width), the model's input size, as its processor would.
    The rows come in runs of `batch_size` with the same number of images, so that a batch read in order pads
    little (an answering row holds one to three images: a third of its tokens would be padding). The runs are
    drawn from all the rows, in random order, so that a batch holds rows of many scenes (a scene's rows, such as
    its eight search crops, are made together) and the rows can be read in order, unshuffled."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")
    rng = random.Random(seed)
    by_images = collections.defaultdict(list)  # rows by their number of images

    def in_whole_runs() -> int:
        return sum(len(group) // batch_size * batch_size for group in by_images.values())

    while in_whole_runs() < count:
        if task == "search":
            made = _presence_rows(rng, max_size, 8)
        else:
            made = _answer_rows(rng, max_size) if task == "answer" else _digit_rows(rng, max_size)
        for row in made:
            by_images[len(row["images"])].append(row)
    runs = []
    for group in by_images.values():
        rng.shuffle(group)
        runs += [
            group[start : start + batch_size] for start in range(0, len(group) // batch_size * batch_size, batch_size)
        ]
    rng.shuffle(runs)
    return [row for run in runs for row in run][:count]


def tokenizer_texts() -> list[str]:
    """Texts to train the rows' tokenizer on: every phrase the rows use (questions, prompts, target names,
    answers) 16 times over, so that each of their words becomes one token, and every normalised coordinate as
    the working memory writes it (most of them one token each)."""
    targets = ("digit", *(f"{colour} digit" for colour in COLOURS))
    questions = [
        DIGIT_QUESTION,
        COLOUR_QUESTION,
        *(SPATIAL_QUESTION.format(a, b) for a in COLOURS for b in COLOURS if a != b),
    ]
    phrases = [*questions, *COLOURS, "left", "right", "yes", "no", *DIGIT_NAMES, ", ".join(targets)]
    phrases += [PRESENCE_QUESTION.format(target) for target in targets]
    phrases += [
        TARGETS_PROMPT.format(DIGIT_QUESTION),
        focus_question(DIGIT_QUESTION, [(target, (0.5,) * 4) for target in targets]),
    ]
    coordinates = [f"[{v / 100:.2f}, {v / 100:.2f}, {v / 100:.2f}, {v / 100:.2f}]" for v in range(101)]
    return [phrase.replace(IMAGE_PLACEHOLDER, "") for phrase in phrases] * 16 + coordinates * 4
