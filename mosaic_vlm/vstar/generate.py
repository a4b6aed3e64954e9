"""V*'s answering loop: name the targets, search for each, keep different targets on different objects,
and answer from the whole image plus full-resolution crops of what was found (the visual working memory)."""

import itertools
from dataclasses import dataclass, replace

import PIL.Image

from .boxes import Box, enlarge_box, normalised, same_object
from .prompts import IMAGE_PLACEHOLDER, TARGETS_PROMPT, focus_question, parse_targets
from .scorers import CheckedScorer, FuyuScorer, Scorer
from .search import SearchConfig, SearchResult, visual_search


@dataclass
class VStarOutput:
    """answer: the generated answer. targets: what was searched for. searches: each target's SearchResult.
    memory: the visual working memory, (target, box in pixels, box normalised to [0, 1]) per found target."""

    answer: str
    targets: list[str]
    searches: dict[str, SearchResult]
    memory: list[tuple[str, Box, tuple[float, float, float, float]]]


# Boxes are assigned to targets jointly (every assignment tried) for at most this many found targets.
MAX_JOINTLY_ASSIGNED = 6


def separate_targets(
    image: PIL.Image.Image,
    searches: dict[str, SearchResult],
    scorer: Scorer,
    config: SearchConfig | None = None,
) -> dict[str, SearchResult]:
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
            again = visual_search(image, target, scorer, config, exclude=taken)
            if again.found:
                separated[target] = SearchResult(
                    True,
                    again.box,
                    again.score,
                    again.boxes,
                    first.path + again.path,
                    first.num_calls + again.num_calls,
                )
        taken.append(separated[target].box)
    found = [target for target, result in separated.items() if result.found]
    if not 2 <= len(found) <= MAX_JOINTLY_ASSIGNED:
        return separated
    boxes = [separated[target].box for target in found]
    crops = [enlarge_box(box, 1.2, width, height) for box in boxes]
    confidence = [CheckedScorer(scorer, image, target).score(crops) for target in found]  # (targets, boxes)
    best = max(
        itertools.permutations(range(len(found))), key=lambda order: sum(confidence[t][b] for t, b in enumerate(order))
    )
    for target_index, (target, box_index) in enumerate(zip(found, best)):
        result = separated[target]
        if box_index == target_index:  # keeps its own box (and every instance its search saw)
            separated[target] = replace(result, num_calls=result.num_calls + len(crops))
        else:
            separated[target] = SearchResult(
                True,
                boxes[box_index],
                confidence[target_index][box_index],
                [boxes[box_index]],
                result.path,
                result.num_calls + len(crops),
            )
    return separated


def chat_message(images: list[PIL.Image.Image], text: str) -> list[dict]:
    """A one-turn conversation: `text` with an image wherever `IMAGE_PLACEHOLDER` stands (the whole text after
    one image when it holds no placeholder), in the chat-template message format every VLM processor reads."""
    pieces = text.split(IMAGE_PLACEHOLDER)
    if len(pieces) == 1 and len(images) == 1:
        pieces = ["", text]
    if len(pieces) - 1 != len(images):
        raise ValueError(f"The prompt has {len(pieces) - 1} image placeholders for {len(images)} images.")
    content = []
    for index, piece in enumerate(pieces):
        if piece:
            content.append({"type": "text", "text": piece})
        if index < len(images):
            content.append({"type": "image", "image": images[index]})
    return [{"role": "user", "content": content}]


def side_by_side(images: list[PIL.Image.Image]) -> PIL.Image.Image:
    """One canvas for a model that reads one image: the first image, and the others stacked in a column to its
    right, each scaled to the column's width (the first image's width divided by two) and in order."""
    first, rest = images[0], images[1:]
    if not rest:
        return first
    column = max(1, first.width // 2)
    scaled = [crop.resize((column, max(1, round(crop.height * column / crop.width)))) for crop in rest]
    canvas = PIL.Image.new("RGB", (first.width + column, max(first.height, sum(crop.height for crop in scaled))))
    canvas.paste(first, (0, 0))
    top = 0
    for crop in scaled:
        canvas.paste(crop, (first.width, top))
        top += crop.height
    return canvas


# Families whose processor takes one image per prompt: V* pastes its crops beside the whole image for them.
ONE_IMAGE_MODEL_TYPES = ("fuyu",)


def _generate_text(model, processor, images: list, text: str, **generate_kwargs) -> str:
    """The model's answer to `text` about `images`, through the processor's chat template (any image-text-to-text
    model whose processor has one); the crops go into one canvas for a model that reads one image."""
    if len(images) > 1 and model.config.model_type in ONE_IMAGE_MODEL_TYPES:
        images, text = [side_by_side(images)], text.replace(IMAGE_PLACEHOLDER, "") + " (the crops are on the right)"
    inputs = processor.apply_chat_template(
        chat_message(images, text), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device)
    generated = model.generate(**inputs, **generate_kwargs)[:, inputs["input_ids"].shape[1] :]  # the new tokens
    return processor.post_process_image_text_to_text(generated, skip_special_tokens=True)[0].strip()


def vstar_generate(
    model,
    processor,
    image: PIL.Image.Image,
    question: str,
    *,
    targets: str | list[str] | None = None,
    scorer: Scorer | None = None,
    search_config: SearchConfig | None = None,
    **generate_kwargs,
) -> VStarOutput:
    """Answer `question` about `image` with `model`, searching first for what it needs. The model is any
    image-text-to-text model whose processor has a chat template (ours, LLaVA, Idefics3 / SmolVLM, Qwen2-VL, ...);
    it reads each prompt as one user turn, images where the prompt's placeholders stand. A model that reads one
    image per prompt (`ONE_IMAGE_MODEL_TYPES`: transformers' Fuyu) gets the crops pasted to the right of the
    whole image (`side_by_side`).

    1. Without `targets`, the model is asked which objects it must see (`TARGETS_PROMPT`); its reply is
       parsed as a comma-separated list ("none": nothing to search). A string names one target.
    2. Each target is searched for with `visual_search(..., search_config)`; the scorer defaults to a
       FuyuScorer on `model` (ours only: pass a ClipScorer or DetectorScorer for another model). Different
       targets then get different objects (`separate_targets`).
    3. The visual working memory holds each found box enlarged 1.2x around its centre, cropped at full
       resolution, with its coordinates normalised to the image.
    4. The whole image, the crops and the question (`FOCUS_PROMPT`) go to the model, which generates.
    If no target is named or none is found, the model answers from the whole image alone.
    """
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"vstar_generate takes a PIL.Image.Image, got {type(image).__name__}.")
    image = image.convert("RGB")
    width, height = image.size
    if isinstance(targets, str):
        targets = [targets]
    if targets is not None and not all(isinstance(t, str) and t.strip() for t in targets):
        raise ValueError(f"vstar_generate's targets must be non-empty strings (or one string), got {targets!r}.")
    if targets is None:
        targets = parse_targets(
            _generate_text(model, processor, [image], TARGETS_PROMPT.format(question), **generate_kwargs)
        )
    scorer = scorer if scorer is not None else FuyuScorer(model, processor)
    searches = {target: visual_search(image, target, scorer, search_config) for target in targets}
    searches = separate_targets(image, searches, scorer, search_config)
    memory = []
    for target, result in searches.items():
        if result.found:
            box = enlarge_box(result.box, 1.2, width, height)
            memory.append((target, box, normalised(box, image.size)))
    if not memory:
        return VStarOutput(
            _generate_text(model, processor, [image], question, **generate_kwargs), list(targets), searches, memory
        )
    prompt = focus_question(question, [(target, box) for target, _, box in memory])
    crops = [image.crop(box) for _, box, _ in memory]
    answer = _generate_text(model, processor, [image, *crops], prompt, **generate_kwargs)
    return VStarOutput(answer, list(targets), searches, memory)
