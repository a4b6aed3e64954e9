"""V*'s prompts, defined once: the yes/no question the search model answers about a crop, the question that
makes the answering model name its targets, and the visual working memory written into the final question."""

from collections.abc import Sequence

from mosaic_vlm.processing.fuyu_special_tokens import IMAGE_PLACEHOLDER

# The image after the words: a decoder reads causally, so the image's patch tokens can attend to what is asked
# for ("red digit") and each patch can check its own colour.
PRESENCE_QUESTION = "Is there a {} in the image? " + IMAGE_PLACEHOLDER
TARGETS_PROMPT = "Which objects must be seen to answer: {}"
FOCUS_PROMPT = "{} Additional visual information to focus on: {}"


def parse_targets(reply: str) -> list[str]:
    """Target names from a comma-separated reply; 'none' (or nothing) gives no targets."""
    names = [name.strip(" .'\"\n").lower() for name in reply.replace(" and ", ",").split(",")]
    return list(dict.fromkeys(name for name in names if name and name != "none"))


def focus_text(memory: Sequence[tuple[str, Sequence[float]]]) -> str:
    """The working memory as prompt text: each target, its normalised box and an image placeholder for its crop."""
    return "; ".join(f"{name} at [{', '.join(f'{v:.2f}' for v in box)}] {IMAGE_PLACEHOLDER}" for name, box in memory)


def focus_question(question: str, memory: Sequence[tuple[str, Sequence[float]]]) -> str:
    """The final question: the whole image, then the question with the working memory's crops."""
    return IMAGE_PLACEHOLDER + FOCUS_PROMPT.format(question, focus_text(memory))
