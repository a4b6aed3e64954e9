"""Train a CLIP-style model on sklearn's handwritten digits with Trainer; report zero-shot accuracy on
the held-out digits during and after training; save (and optionally push) the model and processor.

    mosaic-vlm train clip --output_dir out/clip-digits --num_train_epochs 20
    torchrun --nproc_per_node 2 -m mosaic_vlm.recipes.clip --output_dir out/clip-digits --ddp_backend gloo
    accelerate launch --config_file examples/accelerate_two_cpu.yaml -m mosaic_vlm.recipes.clip \\
        --output_dir out/clip-digits --ddp_backend gloo

Every TrainingArguments flag works (see --help), e.g. --push_to_hub --hub_model_id you/clip-digits.
"""

import dataclasses
import sys

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from mosaic_vlm.data.digits import (
    DIGIT_NAMES,
    PHOTO_CAPTIONS,
    digit_caption,
    digit_caption_dataset,
    photo_caption_dataset,
)
from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel
from mosaic_vlm.processing import MosaicClipImageProcessor, MosaicClipProcessor, train_bpe_tokenizer
from mosaic_vlm.processing.collators import MosaicClipCollator

from .recipe import parse_arguments, prepare_run, run_recipe


@dataclasses.dataclass
class ModelArguments:
    hidden_size: int = dataclasses.field(default=64, metadata={"help": "width of both towers"})
    num_hidden_layers: int = dataclasses.field(default=2, metadata={"help": "layers of each tower"})
    num_attention_heads: int = dataclasses.field(default=4, metadata={"help": "attention heads of each tower"})
    projection_dim: int = dataclasses.field(default=32, metadata={"help": "size of the shared embedding space"})
    image_size: int = dataclasses.field(default=32, metadata={"help": "side of the square model input"})
    patch_size: int = dataclasses.field(default=8, metadata={"help": "side of a square patch"})
    loss_type: str = dataclasses.field(default="clip", metadata={"help": "'clip' (softmax) or 'siglip' (sigmoid)"})
    max_train_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "cap the training set (for quick runs)"}
    )
    photo_crops: int = dataclasses.field(
        default=0, metadata={"help": "add this many captioned crops of each of four skimage photos (everyday labels)"}
    )


def build_processor(image_size: int) -> MosaicClipProcessor:
    captions = [digit_caption(d) for d in range(10)] + list(PHOTO_CAPTIONS.values())
    tokenizer = train_bpe_tokenizer(captions * 8, vocab_size=128, model_max_length=16)
    image_processor = MosaicClipImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    return MosaicClipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(args: ModelArguments, tokenizer) -> MosaicClipModel:
    tower = dict(
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        projection_dim=args.projection_dim,
    )
    config = MosaicClipConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(tower, image_size=args.image_size, patch_size=args.patch_size),
        projection_dim=args.projection_dim,
        loss_type=args.loss_type,
    )
    return MosaicClipModel(config)


def zero_shot_metrics(model, processor, labels: np.ndarray):
    """compute_metrics for Trainer: classify each held-out image embedding against the 10 class captions."""

    def compute_metrics(eval_prediction) -> dict:
        image_embeds = torch.as_tensor(eval_prediction.predictions)
        with torch.no_grad():
            texts = processor(text=[digit_caption(d) for d in range(len(DIGIT_NAMES))]).to(model.device)
            text_embeds = model.get_text_features(texts["input_ids"], texts["attention_mask"]).pooler_output.cpu()
        predictions = (image_embeds @ text_embeds.t()).argmax(dim=-1).numpy()
        return {"zero_shot_accuracy": float((predictions == labels[: len(predictions)]).mean())}

    return compute_metrics


def keep_image_embeds(outputs, labels):
    """Of the model outputs Trainer collects, keep only `image_embeds` (the 4th field after the loss)."""
    return outputs[3]


def build_trainer(model_args: ModelArguments, training_args: TrainingArguments) -> Trainer:
    """The data sets (validated), processor, model and Trainer of this recipe."""
    prepare_run(training_args)
    data = digit_caption_dataset(image_size=model_args.image_size)
    train_set, test_set = data["train"], data["test"]
    if model_args.max_train_samples is not None:
        train_set = train_set.select(range(model_args.max_train_samples))
    if model_args.photo_crops:
        from datasets import concatenate_datasets

        photos = photo_caption_dataset(model_args.photo_crops, model_args.image_size, seed=training_args.seed)
        train_set = concatenate_datasets([train_set, photos]).shuffle(seed=training_args.seed)
    processor = build_processor(model_args.image_size)
    collator = MosaicClipCollator(processor)
    collator.validate(train_set)
    collator.validate(test_set)
    model = build_model(model_args, processor.tokenizer)
    return Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=test_set,
        data_collator=collator,
        processing_class=processor,
        compute_metrics=zero_shot_metrics(model, processor, np.array(test_set["label"])),
        preprocess_logits_for_metrics=keep_image_embeds,
    )


def summary(args: ModelArguments, trainer: Trainer, metrics: dict) -> str:
    accuracy = metrics["eval_zero_shot_accuracy"]
    return f"zero-shot accuracy on {len(trainer.eval_dataset)} held-out digits: {accuracy:.1%}"


def run(model_args: ModelArguments, training_args: TrainingArguments) -> dict:
    """Train, evaluate and save (and push with `push_to_hub`) as `mosaic-vlm train clip` does; returns the
    metrics (also written to final_metrics.json beside the model)."""
    return run_recipe(build_trainer, model_args, training_args, summary)


def parse(argv: list[str] | None = None, prog: str | None = None) -> tuple[ModelArguments, TrainingArguments]:
    """`argv` (sys.argv when None) as this recipe's two dataclasses, as `main` reads it (no abbreviated flags, each
    flag once); `prog` names the command in usage and errors."""
    return parse_arguments(ModelArguments, argv, __doc__, prog)


def main(argv: list[str] | None = None) -> dict:
    """`mosaic-vlm train clip ARGS`: `argv` (sys.argv when None) parsed into the two dataclasses, then `run`."""
    return run(*parse(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
