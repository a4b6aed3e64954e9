"""Train a small tokenizer on the spot with the `tokenizers` library (no hub needed).

The result is a `PreTrainedTokenizerFast` that wraps every text as `<s> text </s>`, pads with `<pad>`,
saves with `save_pretrained` and loads back through `AutoTokenizer`. `train_fuyu_tokenizer` makes a stand-in
for adept/fuyu-8b's tokenizer: byte-fallback tokens and one bare token per number, as fuyu-8b has.
"""

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .fuyu_special_tokens import FUYU_SPECIAL_TOKENS

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")


def _trained_bpe(texts: list[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """BPE with Metaspace pre-tokenisation trained on `texts`, the special tokens first (ids 0, 1, ...)."""
    if not texts:
        raise ValueError("Training a tokenizer needs at least one text to learn from.")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _wrapped(tokenizer: Tokenizer, model_max_length: int, extra_special_tokens: list[str]) -> PreTrainedTokenizerFast:
    """`tokenizer` with a `<s> $A </s>` post-processor, as a transformers tokenizer."""
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
        additional_special_tokens=extra_special_tokens or None,
        model_max_length=model_max_length,
    )


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
    extra_special_tokens = list(extra_special_tokens)
    tokenizer = _trained_bpe(list(texts), vocab_size, [*SPECIAL_TOKENS, *extra_special_tokens])
    return _wrapped(tokenizer, model_max_length, extra_special_tokens)


def train_fuyu_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, model_max_length: int = 4096, numbers: int = 1000
) -> PreTrainedTokenizerFast:
    """A stand-in for adept/fuyu-8b's tokenizer: `train_bpe_tokenizer` with Fuyu's special tokens, plus what
    fuyu-8b's SentencePiece vocabulary has and a BPE learnt on a few texts lacks:
    - the 256 byte-fallback tokens `<0x00>` ... `<0xFF>`: a character it did not learn becomes its UTF-8 bytes,
      so "\\n" (left out of training, as fuyu-8b has no newline piece) is `<0x0A>`. Fuyu's box, point and
      begin-of-answer tokens are the first five of them, as in fuyu-8b;
    - one bare token per number 0 ... numbers - 1 ("388", no word-start marker), in which fuyu-8b reads and
      writes coordinates. They are in the vocabulary only: text is still tokenized by the learnt merges.
    `vocab_size` bounds the learnt part; these tokens come on top.
    """
    special_tokens = [*SPECIAL_TOKENS, *FUYU_SPECIAL_TOKENS]
    learnt = _trained_bpe([text.replace("\n", " ") for text in texts], vocab_size, special_tokens)
    state = json.loads(learnt.to_str())
    vocab = state["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for token in [f"<0x{byte:02X}>" for byte in range(256)] + [str(number) for number in range(numbers)]:
        if token not in vocab:
            vocab[token], next_id = next_id, next_id + 1
    state["model"]["byte_fallback"] = True
    tokenizer = Tokenizer.from_str(json.dumps(state))
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    return _wrapped(tokenizer, model_max_length, list(FUYU_SPECIAL_TOKENS))
