"""V*Bench as released with the V* paper (penghao-wu/vstar; the data set craigwu/vstar_bench): a folder per
category (`direct_attributes`, `relative_position`), each holding image files and, paired by file name, annotation
JSON files `{"target_object": [...], "bbox": [[x, y, w, h], ...], "question": "...", "options": [...]}` whose first
option is the right one. Multiple choice is decided as the paper decides it: the option the model finds most likely
as its answer (the lowest mean negative log-likelihood of the answer's tokens)."""

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch
from tqdm.auto import tqdm

from .boxes import Box, enlarge_box, normalised
from .generate import chat_message
from .prompts import focus_question

CATEGORIES = ("direct_attributes", "relative_position")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")  # where a chat template marks the answer


@dataclass(frozen=True)
class VStarBenchQuestion:
    """One question: its category, image file, question, options (the first is right), and its annotated targets
    with their boxes (x0, y0, x1, y1) in pixels."""

    category: str
    image_path: Path
    question: str
    options: tuple[str, ...]
    targets: tuple[str, ...]
    boxes: tuple[Box, ...]


def _question(category: str, image_path: Path) -> VStarBenchQuestion:
    annotation_path = image_path.with_suffix(".json")
    if not annotation_path.is_file():
        raise ValueError(f"V*Bench image {image_path} has no annotation file {annotation_path.name} beside it.")
    try:
        annotation = json.loads(annotation_path.read_text())
        options = tuple(str(option) for option in annotation["options"])
        targets = tuple(str(target) for target in annotation["target_object"])
        boxes = tuple(
            (round(x), round(y), round(x + w), round(y + h))
            for x, y, w, h in (map(float, b) for b in annotation["bbox"])
        )
        question = str(annotation["question"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{annotation_path} is not a V*Bench annotation ({{'target_object': [...], 'bbox': [[x, y, w, h], ...], "
            f"'question': '...', 'options': [...]}}): {error}"
        ) from None
    if len(options) < 2 or len(targets) != len(boxes):
        raise ValueError(
            f"{annotation_path} needs at least two options and one box per target object; got {len(options)} options, "
            f"{len(targets)} targets and {len(boxes)} boxes."
        )
    return VStarBenchQuestion(category, image_path, question, options, targets, boxes)


def load_vstar_bench(folder: str | Path) -> list[VStarBenchQuestion]:
    """Every question of the V*Bench release in `folder`, category by category, in file-name order."""
    folder = Path(folder)
    missing = [category for category in CATEGORIES if not (folder / category).is_dir()]
    if missing:
        raise ValueError(
            f"{folder} is not a V*Bench folder: it has no {', '.join(missing)} folder (the release holds "
            f"{' and '.join(CATEGORIES)}, each with image files and their annotation .json files)."
        )
    questions = [
        _question(category, path)
        for category in CATEGORIES
        for path in sorted((folder / category).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not questions:
        raise ValueError(f"{folder}'s category folders hold no images ({', '.join(IMAGE_SUFFIXES)}).")
    return questions


def _answer_inputs(processor, images: list[PIL.Image.Image], prompt: str, option: str):
    """The model's inputs for `option` as the answer to `prompt` about `images`, and a mask of the answer's tokens.
    Through the chat template's generation tags where it has them (`return_assistant_tokens_mask`: the answer and
    what the template ends it with); else, as the paper's code does, the prompt with its generation prompt and
    then the option's own tokens (rendering the answer inside the template could merge its first token with the
    template's text)."""
    conversation = [
        *chat_message(images, prompt),
        {"role": "assistant", "content": [{"type": "text", "text": option}]},
    ]
    template = processor.chat_template if isinstance(processor.chat_template, str) else ""
    if GENERATION_TAG.search(template):
        inputs = processor.apply_chat_template(
            conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
        )
        answer = torch.as_tensor(inputs.pop("assistant_masks")).bool()
        inputs.pop("labels", None)
        if answer.any():
            return inputs, answer
    inputs = processor.apply_chat_template(
        conversation[:1], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    option_ids = torch.tensor([processor.tokenizer(option, add_special_tokens=False)["input_ids"]])
    if option_ids.numel() == 0:
        raise ValueError(f"The option {option!r} has no tokens; V*Bench's options must be non-empty text.")
    length = inputs["input_ids"].shape[1]
    for key, value in list(inputs.items()):
        if isinstance(value, torch.Tensor) and value.shape == (1, length):  # per token: the answer's added after
            added = option_ids if key == "input_ids" else torch.full_like(option_ids, int(key == "attention_mask"))
            inputs[key] = torch.cat([value, added.to(value.dtype)], dim=1)
    answer = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    answer[:, length:] = True
    return inputs, answer


@torch.no_grad()
def option_losses(
    model, processor, images: list[PIL.Image.Image], prompt: str, options: tuple[str, ...]
) -> list[float]:
    """Each option's mean negative log-likelihood as the model's answer to `prompt` about `images` (one user turn
    through the processor's chat template, images where the prompt's placeholders stand), over the answer's
    tokens (`_answer_inputs`)."""
    losses = []
    for option in options:
        inputs, answer = _answer_inputs(processor, images, prompt, option)
        answer = answer[:, 1:]  # the tokens predicted, shifted
        logits = model(**inputs.to(model.device)).logits[:, :-1].float()
        targets = inputs["input_ids"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[answer.to(logits.device)], targets[answer.to(targets.device)])
        losses.append(nll.item())
    return losses


def evaluate_vstar_bench(
    model,
    processor,
    questions: list[VStarBenchQuestion],
    *,
    searches: dict[Path, list[tuple[str, Box]]] | None = None,
    progress: bool = True,
) -> dict:
    """Multiple-choice accuracy per category and overall (the paper's table). Without `searches` the model sees
    the whole image only; with them (image path -> (target, box) found by V*'s search, or the annotated boxes)
    it also sees each box enlarged 1.2x as a crop, named with its normalised coordinates, as V* answers. Returns
    {"direct_attributes": accuracy, "relative_position": accuracy, "overall": accuracy, "questions": n,
    "chosen": [index per question]}."""
    correct, chosen = defaultdict(list), []
    for question in tqdm(questions, desc="V*Bench", disable=not progress):
        with PIL.Image.open(question.image_path) as opened:
            image = opened.convert("RGB")
        found = (searches or {}).get(question.image_path, [])
        boxes = [enlarge_box(box, 1.2, *image.size) for _, box in found]
        prompt = (
            focus_question(
                question.question, [(name, normalised(box, image.size)) for (name, _), box in zip(found, boxes)]
            )
            if found
            else question.question
        )
        images = [image, *(image.crop(box) for box in boxes)]
        losses = option_losses(model, processor, images, prompt, question.options)
        choice = min(range(len(losses)), key=losses.__getitem__)
        chosen.append(choice)
        correct[question.category].append(choice == 0)
    every = [hit for hits in correct.values() for hit in hits]
    table = {category: sum(hits) / len(hits) for category, hits in correct.items()}
    return {**table, "overall": sum(every) / len(every), "questions": len(every), "chosen": chosen}


def annotated_searches(questions: list[VStarBenchQuestion]) -> dict[Path, list[tuple[str, Box]]]:
    """The annotated targets and boxes as if a search had found them: the upper bound of what V*'s search gives."""
    return {question.image_path: list(zip(question.targets, question.boxes)) for question in questions}


def searched_targets(
    questions: list[VStarBenchQuestion], scorer, config=None, *, progress: bool = True
) -> tuple[dict[Path, list[tuple[str, Box]]], list[int]]:
    """V*'s search for each question's annotated target names (as the paper measures its search): the boxes
    found per image, and the scorer evaluations each question cost."""
    from .search import visual_search

    found, calls = {}, []
    for question in tqdm(questions, desc="V* search", disable=not progress):
        with PIL.Image.open(question.image_path) as opened:
            image = opened.convert("RGB")
        results = {target: visual_search(image, target, scorer, config) for target in dict.fromkeys(question.targets)}
        found[question.image_path] = [(target, result.box) for target, result in results.items() if result.found]
        calls.append(sum(result.num_calls for result in results.values()))
    return found, calls
