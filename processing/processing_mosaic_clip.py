"""Processor of the CLIP-style family: any tokenizer plus `MosaicClipImageProcessor`.

Texts are padded to the longest and truncated to the tokenizer's `model_max_length` by default, so no
text can overrun the model's position table.
"""

from collections.abc import Iterable

from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import TextInput


def check_texts(texts, what: str, special_tokens: Iterable[str]) -> list[str]:
    """`texts` (one string or a list of them) as a list, each checked to be a string of valid Unicode (no lone
    surrogate such as "\\ud800") without any of `special_tokens` typed into it. `what` names a text in errors."""
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, (list, tuple)):
        raise TypeError(f"Got a {type(texts).__name__} for the {what.lower()}s; pass a string or a list of strings.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what} {index} is a {type(text).__name__}; pass a string or a list of strings.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{what} {index} is not valid Unicode: {text[error.start : error.end]!r} at position {error.start} "
                f"({error.reason}); pass text that encodes as UTF-8."
            ) from None
        typed = [token for token in special_tokens if token and token in text]
        if typed:
            raise ValueError(
                f"{what} {index} contains {typed[0]!r}, a special token that the processor places itself (typed in, "
                "it would be read as the real token); remove it from the text."
            )
    return list(texts)


class MosaicProcessorMixin(ProcessorMixin):
    """ProcessorMixin for processors registered for remote code (both families' processors)."""

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """ProcessorMixin.save_pretrained. For a class registered for remote code, transformers' `custom_object_save`
        sets `auto_map` on the processor itself to write it into processor_config.json; it is taken off again, as a
        processor never holds it otherwise (`from_pretrained` drops it), so saving leaves the processor unchanged."""
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            self.__dict__.pop("auto_map", None)


class MosaicClipProcessor(MosaicProcessorMixin):
    """Texts must be strings of valid Unicode without the tokenizer's special tokens typed in (a typed EOS such
    as "</s>" would end the text there for the model, which pools at the EOS): such texts are refused."""

    text_kwargs = {"padding": True, "truncation": True, "return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        **kwargs: Unpack[ProcessingKwargs],
    ):
        if images is None and text is None:
            raise ValueError("MosaicClipProcessor needs `images`, `text`, or both.")
        if text is not None and not check_texts(text, "Text", self.tokenizer.all_special_tokens):
            raise ValueError("The batch of texts is empty; pass a string or a non-empty list of strings.")
        return super().__call__(images=images, text=text, **kwargs)
