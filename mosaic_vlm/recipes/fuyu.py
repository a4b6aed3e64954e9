"""Train a Fuyu-style model to answer "What digit is this?" about sklearn's handwritten digits with Trainer;
report held-out answer accuracy during training (teacher-forced, which equals greedy decoding) and after it
(with `generate`); save (and optionally push) the model and processor.

    mosaic-vlm train fuyu --output_dir out/fuyu-digits --num_train_epochs 12
    torchrun --nproc_per_node 2 -m mosaic_vlm.recipes.fuyu --output_dir out/fuyu-digits --ddp_backend gloo
    accelerate launch --config_file examples/accelerate_two_cpu.yaml -m mosaic_vlm.recipes.fuyu \\
        --output_dir out/fuyu-digits --ddp_backend gloo

Every TrainingArguments flag works (see --help), e.g. --push_to_hub --hub_model_id you/fuyu-digits.
"""

import dataclasses
import sys

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from mosaic_vlm.data.digits import DIGIT_NAMES, DIGIT_QUESTION, digit_question_dataset
from mosaic_vlm.modeling import MosaicFuyuConfig, MosaicFuyuForCausalLM
from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor, train_bpe_tokenizer
from mosaic_vlm.processing.collators import MosaicFuyuCollator
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS, IMAGE_NEWLINE_TOKEN, IMAGE_TOKEN

from .recipe import parse_arguments, prepare_run, run_recipe


@dataclasses.dataclass
class ModelArguments:
    hidden_size: int = dataclasses.field(default=64, metadata={"help": "width of the decoder"})
    num_hidden_layers: int = dataclasses.field(default=2, metadata={"help": "decoder layers"})
    num_attention_heads: int = dataclasses.field(default=4, metadata={"help": "attention heads"})
    image_size: int = dataclasses.field(default=32, metadata={"help": "side of the digit images"})
    patch_size: int = dataclasses.field(default=8, metadata={"help": "side of a square patch"})
    max_train_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "cap the training set (for quick runs)"}
    )


def build_processor(image_size: int, patch_size: int, extra_texts: tuple[str, ...] = ()) -> MosaicFuyuProcessor:
    texts = [DIGIT_QUESTION, *DIGIT_NAMES, *extra_texts] * 8
    tokenizer = train_bpe_tokenizer(
        texts, vocab_size=128, model_max_length=128, extra_special_tokens=list(FUYU_SPECIAL_TOKENS)
    )
    image_processor = MosaicFuyuImageProcessor(patch_size=patch_size, size={"height": image_size, "width": image_size})
    return MosaicFuyuProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(args: ModelArguments, tokenizer) -> MosaicFuyuForCausalLM:
    config = MosaicFuyuConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        max_position_embeddings=tokenizer.model_max_length,
        patch_size=args.patch_size,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_newline_token_id=tokenizer.convert_tokens_to_ids(IMAGE_NEWLINE_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return MosaicFuyuForCausalLM(config)


def greedy_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """preprocess_logits_for_metrics: the argmax token at each position (teacher-forced greedy choice)."""
    return logits.argmax(dim=-1)


def answer_accuracy(eval_prediction) -> dict:
    """compute_metrics: an answer is right when every answer token and the EOS are the argmax given the right
    prefix, which is exactly when greedy decoding writes the answer."""
    predictions, labels = np.asarray(eval_prediction.predictions), np.asarray(eval_prediction.label_ids)
    next_labels = labels[:, 1:]  # logits at position t predict the token at t + 1
    right = (predictions[:, :-1] == next_labels) | (next_labels == -100)
    return {"answer_accuracy": float(right.all(axis=1).mean())}


def generated_accuracy(model, processor, dataset, batch_size: int = 64) -> float:
    """Held-out accuracy of answers written by `generate` (greedy), compared with the right answer."""
    right = 0
    model.eval()
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        inputs = processor(images=[[image] for image in rows["image"]], text=rows["question"]).to(model.device)
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answers = processor.post_process_image_text_to_text(generated)
        right += sum(answer == expected for answer, expected in zip(answers, rows["answer"]))
    return right / len(dataset)


def build_trainer(model_args: ModelArguments, training_args: TrainingArguments) -> Trainer:
    """The data sets (validated), processor, model and Trainer of this recipe."""
    prepare_run(training_args)
    data = digit_question_dataset(image_size=model_args.image_size)
    train_set, test_set = data["train"], data["test"]
    if model_args.max_train_samples is not None:
        train_set = train_set.select(range(model_args.max_train_samples))
    processor = build_processor(model_args.image_size, model_args.patch_size)
    collator = MosaicFuyuCollator(processor)
    collator.validate(train_set)
    collator.validate(test_set)
    return Trainer(
        model=build_model(model_args, processor.tokenizer),
        args=training_args,
        train_dataset=train_set,
        eval_dataset=test_set,
        data_collator=collator,
        processing_class=processor,
        compute_metrics=answer_accuracy,
        preprocess_logits_for_metrics=greedy_predictions,
    )


def answered(trainer: Trainer) -> dict:
    return {"generated_accuracy": generated_accuracy(trainer.model, trainer.processing_class, trainer.eval_dataset)}


def summary(args: ModelArguments, trainer: Trainer, metrics: dict) -> str:
    return (
        f"'{DIGIT_QUESTION}' answered right on {metrics['generated_accuracy']:.1%} of "
        f"{len(trainer.eval_dataset)} held-out digits"
    )


def run(model_args: ModelArguments, training_args: TrainingArguments) -> dict:
    """Train, evaluate, answer the held-out digits with `generate` and save (and push with `push_to_hub`) as
    `mosaic-vlm train fuyu` does; returns the metrics (also written to final_metrics.json beside the model)."""
    return run_recipe(build_trainer, model_args, training_args, summary, answered)


def parse(argv: list[str] | None = None, prog: str | None = None) -> tuple[ModelArguments, TrainingArguments]:
    """`argv` (sys.argv when None) as this recipe's two dataclasses, as `main` reads it (no abbreviated flags, each
    flag once); `prog` names the command in usage and errors."""
    return parse_arguments(ModelArguments, argv, __doc__, prog)


def main(argv: list[str] | None = None) -> dict:
    """`mosaic-vlm train fuyu ARGS`: `argv` (sys.argv when None) parsed into the two dataclasses, then `run`."""
    return run(*parse(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
