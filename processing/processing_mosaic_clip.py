"""Processor of the CLIP-style family: any tokenizer plus `MosaicClipImageProcessor`.

Texts are padded to the longest and truncated to the tokenizer's `model_max_length` by default, so no
text can overrun the model's position table.
"""

from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs, Unpack
from transformers.tokenization_utils_base import TextInput

from .mosaic_processing_common import MosaicProcessorMixin, check_texts

# A conversation's text for the text tower: every text item of every message, in order, joined by spaces (images
# go to the image processor; a CLIP-style model has no turns and no image tokens in its text).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] if item['type'] == 'text' -%}"
    "{{ ' ' if not loop.first }}{{ item['text'] }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ ' ' if not loop.last }}"
    "{%- endfor -%}"
)


class MosaicClipProcessorKwargs(ProcessingKwargs, total=False):
    # defaults as `_defaults` on the kwargs class: every 5.x release reads them there (5.23 and later also take
    # class variables on the processor, which 5.20-5.22 ignore)
    _defaults = {
        "text_kwargs": {"padding": True, "truncation": True, "return_tensors": "pt"},
        "images_kwargs": {"return_tensors": "pt"},
    }


class MosaicClipProcessor(MosaicProcessorMixin):
    """Texts must be strings of valid Unicode without the tokenizer's special tokens typed in (a typed EOS such
    as "</s>" would end the text there for the model, which pools at the EOS): such texts are refused."""

    valid_processor_kwargs = MosaicClipProcessorKwargs

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        **kwargs: Unpack[MosaicClipProcessorKwargs],
    ):
        if images is None and text is None:
            raise ValueError("MosaicClipProcessor needs `images`, `text`, or both.")
        if text is not None and not check_texts(text, "Text", self.tokenizer.all_special_tokens):
            raise ValueError("The batch of texts is empty; pass a string or a non-empty list of strings.")
        return super().__call__(images=images, text=text, **kwargs)
