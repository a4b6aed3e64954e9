"""Offline demo: train a tiny CLIP-style model on real handwritten digits and classify held-out digits
zero-shot from their captions ("a photo of the digit seven"). Everything it needs ships in wheels.

    ./dev demo [--epochs N] [--output-dir DIR]
"""

import argparse
import tempfile
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from transformers import AutoModel, AutoProcessor, Trainer, TrainingArguments

from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel
from mosaic_vlm.processing import MosaicClipImageProcessor, MosaicClipProcessor, train_bpe_tokenizer

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def caption(digit: int) -> str:
    return f"a photo of the digit {DIGIT_NAMES[digit]}"


def build_processor() -> MosaicClipProcessor:
    tokenizer = train_bpe_tokenizer([caption(d) for d in range(10)] * 8, vocab_size=96, model_max_length=16)
    image_processor = MosaicClipImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return MosaicClipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(tokenizer) -> MosaicClipModel:
    tower = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    config = MosaicClipConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=16,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=32,
    )
    return MosaicClipModel(config)


class CaptionedDigits(torch.utils.data.Dataset):
    """Digit images (8x8, 0-16) as processed pixels, each paired with its caption's token ids."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, processor: MosaicClipProcessor):
        pixels = (images * (255 / 16)).round().astype(np.uint8)
        self.pixel_values = processor.image_processor(list(pixels), return_tensors="pt")["pixel_values"]
        self.input_ids = [processor.tokenizer(caption(int(label)))["input_ids"] for label in labels]
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "input_ids": self.input_ids[index]}


def collate_with_loss(tokenizer):
    def collate(rows):
        texts = tokenizer.pad({"input_ids": [row["input_ids"] for row in rows]}, return_tensors="pt")
        return {
            "pixel_values": torch.stack([row["pixel_values"] for row in rows]),
            "input_ids": texts["input_ids"],
            "attention_mask": texts["attention_mask"],
            "return_loss": True,
        }

    return collate


@torch.no_grad()
def zero_shot_accuracy(model, processor, dataset: CaptionedDigits) -> float:
    model.eval()
    texts = processor(text=[caption(d) for d in range(10)])
    text_embeds = model.get_text_features(**texts).pooler_output
    image_embeds = model.get_image_features(dataset.pixel_values).pooler_output
    predictions = model.similarity_logits(
        text_embeds / text_embeds.norm(dim=-1, keepdim=True), image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    ).argmax(dim=0)
    return (predictions.numpy() == dataset.labels).mean().item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=20, help="training epochs over the 1437 training digits")
    parser.add_argument("--output-dir", default=None, help="where the trained model is saved (default: a temp dir)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()

    digits = load_digits()
    train_images, test_images, train_labels, test_labels = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    processor = build_processor()
    train_set = CaptionedDigits(train_images, train_labels, processor)
    test_set = CaptionedDigits(test_images, test_labels, processor)
    model = build_model(processor.tokenizer)
    print(f"zero-shot accuracy before training: {zero_shot_accuracy(model, processor, test_set):.1%}")

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="mosaic-demo-")
    training_args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=64,
        num_train_epochs=args.epochs,
        learning_rate=2e-3,
        warmup_steps=20,
        weight_decay=0.05,
        logging_steps=100,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_set, data_collator=collate_with_loss(processor.tokenizer)
    )
    trainer.train()
    accuracy = zero_shot_accuracy(model, processor, test_set)
    print(f"zero-shot accuracy on {len(test_set)} held-out digits: {accuracy:.1%}")

    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    reloaded = AutoModel.from_pretrained(output_dir)
    reloaded_accuracy = zero_shot_accuracy(reloaded, AutoProcessor.from_pretrained(output_dir), test_set)
    print(f"reloaded with AutoModel/AutoProcessor from {output_dir}: {reloaded_accuracy:.1%}")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
