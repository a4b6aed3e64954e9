"""The clients people drive VLMs with, run on our saved folders: trl's SFTTrainer (messages with images, and
prompt-completion), sentence-transformers, peft LoRA and transformers' pipelines (none of them asks whether to run
custom code: the package is installed and registers its classes)."""

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset
from tiny import CAPTIONS, FUYU_TEXTS, FUYU_TOKENS, tiny_clip_config, tiny_fuyu_model
from transformers import pipeline

from mosaic_vlm.modeling import MosaicClipModel, MosaicClipVisionModel
from mosaic_vlm.processing import (
    MosaicClipImageProcessor,
    MosaicClipProcessor,
    MosaicFuyuImageProcessor,
    MosaicFuyuProcessor,
    train_bpe_tokenizer,
)

IGNORE = -100
ANSWERS = ["seven", "three"] * 4


def photo(seed: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def fuyu_processor():
    tokenizer = train_bpe_tokenizer(
        FUYU_TEXTS * 5 + ["seven three"] * 5, vocab_size=120, model_max_length=256, extra_special_tokens=FUYU_TOKENS
    )
    return MosaicFuyuProcessor(MosaicFuyuImageProcessor(patch_size=16, size={"height": 64, "width": 64}), tokenizer)


@pytest.fixture(scope="module")
def clip_parts():
    tokenizer = train_bpe_tokenizer(CAPTIONS * 4, vocab_size=128, model_max_length=24)
    image_processor = MosaicClipImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    return MosaicClipModel(tiny_clip_config()).eval(), MosaicClipProcessor(image_processor, tokenizer)


@pytest.fixture(scope="module")
def clip_folder(clip_parts, tmp_path_factory):
    model, processor = clip_parts
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def question(answer: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what digit is this?"}]}]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


def sft(model, processor, dataset: Dataset, tmp_path, **config):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=1,
        max_length=None,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        **config,
    )
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)


def answer_ids(processor, answer: str) -> list[int]:
    return processor.tokenizer(answer, add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]


def check_trained_on_answers_only(trainer, processor, dataset):
    batch = trainer.data_collator([dataset[index] for index in range(4)])
    for row in range(4):
        labelled = batch["input_ids"][row][batch["labels"][row] != IGNORE].tolist()
        assert labelled == answer_ids(processor, ANSWERS[row])
        padding = batch["attention_mask"][row] == 0
        assert not padding.any() or padding.nonzero().min() > batch["attention_mask"][row].nonzero().max()  # right
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0], losses


def test_trl_sft_on_messages_with_images_trains_on_the_answers(fuyu_processor, tmp_path):
    dataset = Dataset.from_dict({"images": [[photo(i)] for i in range(8)], "messages": [question(a) for a in ANSWERS]})
    model = tiny_fuyu_model(fuyu_processor).train()
    trainer = sft(model, fuyu_processor, dataset, tmp_path, assistant_only_loss=True)
    check_trained_on_answers_only(trainer, fuyu_processor, dataset)


@pytest.mark.parametrize("conversational", [True, False])
def test_trl_sft_on_prompt_completion_trains_on_the_completion(fuyu_processor, tmp_path, conversational):
    prompts = [question() for _ in ANSWERS] if conversational else ["what digit is this?"] * 8
    completions = [[{"role": "assistant", "content": answer}] for answer in ANSWERS] if conversational else ANSWERS
    dataset = Dataset.from_dict(
        {"images": [[photo(i)] for i in range(8)], "prompt": prompts, "completion": completions}
    )
    trainer = sft(tiny_fuyu_model(fuyu_processor).train(), fuyu_processor, dataset, tmp_path)
    if conversational:  # the chat template's completion ends with EOS, as the processor's `answers=` do
        check_trained_on_answers_only(trainer, fuyu_processor, dataset)
    else:  # a plain completion is text as written: trl adds no EOS to it
        batch = trainer.data_collator([dataset[0]])
        assert batch["input_ids"][0][batch["labels"][0] != IGNORE].tolist() == answer_ids(fuyu_processor, "seven")[:-1]


def test_sentence_transformers_encodes_texts_and_images_and_fits(clip_parts, clip_folder):
    from sentence_transformers import SentenceTransformer, losses
    from sentence_transformers.training_args import SentenceTransformerTrainingArguments

    model, processor = clip_parts
    encoder = SentenceTransformer(str(clip_folder), device="cpu")
    texts, images = ["a photo of a cat", "a photo of a dog"], [photo(0), photo(1)]
    with torch.no_grad():
        expected_text = model.get_text_features(**processor(text=texts, return_tensors="pt")).pooler_output
        expected_image = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
    torch.testing.assert_close(encoder.encode(texts, convert_to_tensor=True), expected_text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(encoder.encode(images, convert_to_tensor=True), expected_image, atol=1e-5, rtol=1e-4)

    from sentence_transformers import SentenceTransformerTrainer

    pairs = Dataset.from_dict({"anchor": CAPTIONS[:8], "positive": CAPTIONS[1:9]})
    before = {name: value.clone() for name, value in encoder.named_parameters()}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(clip_folder / "fit"), max_steps=2, per_device_train_batch_size=4, report_to="none", use_cpu=True
    )
    trainer = SentenceTransformerTrainer(
        model=encoder, args=args, train_dataset=pairs, loss=losses.MultipleNegativesRankingLoss(encoder)
    )
    trainer.train()
    changed = [name for name, value in encoder.named_parameters() if not torch.equal(value, before[name])]
    assert any("text" in name for name in changed), changed


def test_peft_lora_trains_only_the_adapters(fuyu_processor):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_fuyu_model(fuyu_processor).train(), LoraConfig(r=4, target_modules=["query_key_value"])
    )
    before = {name: value.clone() for name, value in model.named_parameters()}
    inputs = fuyu_processor(images=photo(0), text="what digit is this?", answers="seven")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**inputs).loss.backward()
    optimizer.step()
    changed = {name for name, value in model.named_parameters() if not torch.equal(value, before[name])}
    assert changed and all("lora_" in name for name in changed), changed


@pytest.fixture(scope="module")
def fuyu_folder(fuyu_processor, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuyu")
    tiny_fuyu_model(fuyu_processor).save_pretrained(folder)
    fuyu_processor.save_pretrained(folder)
    return folder


def test_image_text_to_text_pipeline_with_chat_messages(fuyu_folder, fuyu_processor):
    answerer = pipeline("image-text-to-text", model=str(fuyu_folder))
    messages = [{"role": "user", "content": [{"type": "image", "image": photo(0)}, {"type": "text", "text": "what?"}]}]
    single = answerer(text=messages, max_new_tokens=3, do_sample=False)
    reply = single[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and isinstance(reply["content"], str)
    batched = answerer(text=[messages, messages], max_new_tokens=3, do_sample=False, return_full_text=False)
    assert [rows[0]["generated_text"] for rows in batched] == [reply["content"]] * 2
    model = tiny_fuyu_model(fuyu_processor)
    inputs = fuyu_processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert fuyu_processor.post_process_image_text_to_text(generated)[0] == reply["content"]


def test_zero_shot_and_feature_extraction_pipelines(clip_parts, clip_folder, tmp_path):
    model, processor = clip_parts
    labels = ["a photo of a cat", "a photo of a dog"]
    scores = pipeline("zero-shot-image-classification", model=str(clip_folder))(
        photo(0), candidate_labels=labels, hypothesis_template="{}"
    )
    with torch.no_grad():
        probabilities = model(**processor(images=photo(0), text=labels, return_tensors="pt")).logits_per_image.softmax(
            -1
        )
    assert {row["label"]: row["score"] for row in scores} == pytest.approx(
        dict(zip(labels, probabilities[0].tolist()))
    )

    tower = tmp_path / "vision"
    vision = MosaicClipVisionModel(model.config.vision_config).eval()
    vision.save_pretrained(tower)
    processor.image_processor.save_pretrained(tower)
    features = pipeline("image-feature-extraction", model=str(tower))(photo(0), return_tensors=True)
    with torch.no_grad():
        expected = vision(**processor.image_processor(photo(0), return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(features, expected)
