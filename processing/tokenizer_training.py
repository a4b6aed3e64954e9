"""Train a small tokenizer on the spot with the `tokenizers` library (no hub needed).

The result is a `PreTrainedTokenizerFast` that wraps every text as `<s> text </s>`, pads with `<pad>`,
saves with `save_pretrained` and loads back through `AutoTokenizer`.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    model_max_length: int = 77,
    extra_special_tokens: Iterable[str] = (),
) -> PreTrainedTokenizerFast:
    """A BPE tokenizer with Metaspace pre-tokenisation trained on `texts`.

    `extra_special_tokens` are added as whole tokens (for instance image placeholders) after the four
    standard ones, which take ids 0-3: `<pad>`, `<unk>`, `<s>`, `</s>`.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("train_bpe_tokenizer needs at least one text to learn from.")
    special_tokens = [*SPECIAL_TOKENS, *extra_special_tokens]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", tokenizer.token_to_id("<s>")), ("</s>", tokenizer.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=list(extra_special_tokens) or None,
        model_max_length=model_max_length,
    )
