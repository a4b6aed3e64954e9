"""Processor of the CLIP-style family: any tokenizer plus `MosaicClipImageProcessor`.

Texts are padded to the longest and truncated to the tokenizer's `model_max_length` by default, so no
text can overrun the model's position table.
"""

from transformers.processing_utils import ProcessorMixin


class MosaicClipProcessor(ProcessorMixin):
    text_kwargs = {"padding": True, "truncation": True, "return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, **kwargs):
        if images is None and text is None:
            raise ValueError("MosaicClipProcessor needs `images`, `text`, or both.")
        if isinstance(text, (list, tuple)) and len(text) == 0:
            raise ValueError("The batch of texts is empty; pass a string or a non-empty list of strings.")
        return super().__call__(images=images, text=text, **kwargs)
