"""The tiny things tests across rooms share: random configs (hidden 32, 2 layers, 4 heads), their inputs, texts and
command lines. Fixtures stay in conftest.py."""

import textwrap

import torch

from mosaic_vlm.data.digits import DIGIT_NAMES
from mosaic_vlm.modeling import MosaicClipConfig, MosaicFuyuConfig, MosaicFuyuForCausalLM
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS

CLIP_EOS = 3  # the end-of-text id of tiny_clip_config: the trained tokenizer's


CAPTIONS = [f"a photo of the digit {name}" for name in DIGIT_NAMES] + [
    "a photo of a cat",
    "a photo of a dog",
    "an astronaut in space",
    "a cup of coffee",
]


def tiny_clip_config(**overrides) -> MosaicClipConfig:
    """Hidden 32, 2 layers, 4 heads; 32x32 images in 8x8 patches; the trained tokenizer's special ids."""
    text_config = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=24,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=48,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    text_config.update(overrides.pop("text_config", {}))
    vision_config.update(overrides.pop("vision_config", {}))
    return MosaicClipConfig(text_config=text_config, vision_config=vision_config, projection_dim=16, **overrides)


def convert_argv(family: str, source_layout: str, target_layout: str, source, output, *flags: str) -> list[str]:
    """`mosaic-vlm convert` arguments: the `family` checkpoint at `source`, from one layout to another, into
    `output`, with any further `flags`."""
    layouts = ["--from", source_layout, "--to", target_layout]
    return ["convert", "--model", family, *layouts, *flags, str(source), "--output", str(output)]


def random_texts(config, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of varying lengths, each ending in EOS and right-padded with 0, plus the attention mask."""
    text_config = config.text_config if hasattr(config, "text_config") else config
    generator = torch.Generator().manual_seed(batch_size)
    length = 10
    input_ids = torch.randint(4, text_config.vocab_size, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(batch_size):
        end = length - 1 - row % 3  # position of EOS; the rest is padding
        input_ids[row, end] = CLIP_EOS
        input_ids[row, end + 1 :] = 0
        attention_mask[row, end + 1 :] = 0
    return input_ids, attention_mask


def random_pixels(config, batch_size: int) -> torch.Tensor:
    vision_config = config.vision_config if hasattr(config, "vision_config") else config
    size = vision_config.image_size
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(batch_size))


IMAGE, NEWLINE, PAD, BOS, EOS = 10, 11, 0, 1, 2


PATCH_DIM = 4 * 4 * 3


def tiny_fuyu_config(**overrides) -> MosaicFuyuConfig:
    values = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        patch_size=4,
        image_token_id=IMAGE,
        image_newline_token_id=NEWLINE,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    values.update(overrides)
    return MosaicFuyuConfig(**values)


def sample_tokens(rows: int, cols: int, prompt: list[int]) -> list[int]:
    """One image of rows x cols patches (each row ended by a newline), then BOS and the prompt."""
    return ([IMAGE] * cols + [NEWLINE]) * rows + [BOS] + prompt


def left_padded_batch(samples: list[list[int]], patch_counts: list[int]) -> dict:
    """Left-pad token lists; patches per sample zero-padded at the end, with their mask."""
    length, max_patches = max(map(len, samples)), max(max(patch_counts), 1)
    input_ids = torch.full((len(samples), length), PAD)
    attention_mask = torch.zeros(len(samples), length, dtype=torch.long)
    pixel_values = torch.zeros(len(samples), max_patches, PATCH_DIM)
    image_patches_mask = torch.zeros(len(samples), max_patches, dtype=torch.bool)
    generator = torch.Generator().manual_seed(len(samples))
    for row, (tokens, count) in enumerate(zip(samples, patch_counts)):
        input_ids[row, length - len(tokens) :] = torch.tensor(tokens)
        attention_mask[row, length - len(tokens) :] = 1
        pixel_values[row, :count] = torch.randn(count, PATCH_DIM, generator=generator)
        image_patches_mask[row, :count] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": pixel_values,
        "image_patches_mask": image_patches_mask,
    }


def varied_batch(batch_size: int) -> dict:
    """Different image grids and prompt lengths per sample, so rows need left padding."""
    grids = [(2, 3), (1, 2), (3, 2), (2, 2)]
    samples, counts = [], []
    for index in range(batch_size):
        rows, cols = grids[index % len(grids)]
        samples.append(sample_tokens(rows, cols, list(range(20, 20 + 3 + index))))
        counts.append(rows * cols)
    return left_padded_batch(samples, counts)


# Run first in a child process: makes every `mosaic_vlm` import fail, as in a Python without the package.
BLOCK_MOSAIC_VLM = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockMosaicVlm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mosaic_vlm" or name.startswith("mosaic_vlm."):
                raise ImportError(f"{name} is blocked in this process")

    sys.meta_path.insert(0, BlockMosaicVlm())
    try:
        import mosaic_vlm.modeling
        still_importable = True
    except ImportError:
        still_importable = False
    if still_importable:
        raise SystemExit("mosaic_vlm is still importable")
    """
)


FUYU_TOKENS = list(FUYU_SPECIAL_TOKENS)


FUYU_TEXTS = [
    "what digit is this?",
    "seven",
    "three",
    "yes",
    "no",
    "is there a cat in the image?",
    "describe it",
    "find the cup at 0, 1, 2, 3, 4, 5, 6, 7, 8, 9",
]


def tiny_fuyu_model(processor) -> MosaicFuyuForCausalLM:
    """A tiny random Fuyu-style model (sdpa, eval mode) sized for `processor`'s tokenizer and special tokens."""
    tokenizer = processor.tokenizer
    image_token, newline = (tokenizer.convert_tokens_to_ids(token) for token in ("|SPEAKER|", "|NEWLINE|"))
    config = MosaicFuyuConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        patch_size=16,
        image_token_id=image_token,
        image_newline_token_id=newline,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return MosaicFuyuForCausalLM._from_config(config, attn_implementation="sdpa").eval()


# ------------------------------------------------------------------------------ transformers' VLMs and V*Bench

VLM_TEXTS = [
    "Which objects must be seen to answer: what colour is the cup",
    "a red cup, a cat",
    "Additional visual information to focus on: cup at",
]
TINY_TOWER = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)
# a plain chat template (no generation tags): each turn's images as the family's image token, where they stand
# among the words
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ image_token }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def vlm_tokenizer(*special: str):
    from mosaic_vlm.processing import train_bpe_tokenizer

    return train_bpe_tokenizer(
        VLM_TEXTS * 5, vocab_size=120, model_max_length=8192, extra_special_tokens=list(special)
    )


def tiny_llava():
    """A tiny random transformers LLaVA (CLIP tower, Llama decoder) and its processor with a plain chat template:
    (model, processor, image token, 16 image tokens per image)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = vlm_tokenizer("<image>")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=PLAIN_CHAT_TEMPLATE.replace("{{ image_token }}", "<image>"),
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**TINY_TOWER, image_size=32, patch_size=8),
        text_config=LlamaConfig(**TINY_TOWER, vocab_size=len(tokenizer), num_key_value_heads=4),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval(), processor, "<image>", 16  # 4x4 patch tokens per image


def tiny_owl_detector(family: str, tokenizer):
    """A tiny random zero-shot detector, OWL-ViT ("owlvit") or OWLv2 ("owlv2"), for a tokenizer of 128 ids and
    24 tokens, and its PIL image processor (32 px)."""
    import transformers

    if family == "owlvit":
        from transformers.models.owlvit.image_processing_pil_owlvit import OwlViTImageProcessorPil

        config_class, model_class = transformers.OwlViTConfig, transformers.OwlViTForObjectDetection
        image_processor = OwlViTImageProcessorPil(
            size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}
        )
    else:
        from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

        config_class, model_class = transformers.Owlv2Config, transformers.Owlv2ForObjectDetection
        image_processor = Owlv2ImageProcessorPil(size={"height": 32, "width": 32})
    config = config_class(
        text_config=dict(TINY_TOWER, vocab_size=128, max_position_embeddings=24),
        vision_config=dict(TINY_TOWER, image_size=32, patch_size=8),
        projection_dim=32,
    )
    return model_class(config).eval(), image_processor


def tiny_vstar_fuyu():
    """A tiny random Fuyu-style model and its processor, whose tokenizer knows the words of the V*Bench fixture's
    questions and options."""
    from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(
        FUYU_TEXTS * 5 + ["red blue green yellow left right cup cat side color"] * 5,
        vocab_size=140,
        model_max_length=512,
        extra_special_tokens=FUYU_TOKENS,
    )
    processor = MosaicFuyuProcessor(
        MosaicFuyuImageProcessor(patch_size=16, size={"height": 64, "width": 64}), tokenizer
    )
    return tiny_fuyu_model(processor), processor


# V*Bench's release layout (penghao-wu/vstar): a folder per category, each image beside its annotation JSON
VSTAR_BENCH_ANNOTATIONS = {
    "direct_attributes": {
        "sa_1": {
            "target_object": ["cup"],
            "bbox": [[40, 30, 20, 16]],
            "question": "What is the color of the cup?",
            "options": ["red", "blue", "green", "yellow"],
        },
        "sa_2": {
            "target_object": ["cat"],
            "bbox": [[5, 5, 30, 30.5]],
            "question": "What is the color of the cat?",
            "options": ["yes", "no", "seven", "three"],
        },
    },
    "relative_position": {
        "sa_3": {
            "target_object": ["cup", "cat"],
            "bbox": [[10, 10, 12, 12], [60, 40, 15, 15]],
            "question": "Is the cup on the left or right side of the cat?",
            "options": ["left", "right"],
        }
    },
}


def write_vstar_bench(folder):
    """VSTAR_BENCH_ANNOTATIONS in the release layout under `folder`, each with a random 100x80 JPEG."""
    import json

    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    for category, questions in VSTAR_BENCH_ANNOTATIONS.items():
        (folder / category).mkdir(parents=True)
        for stem, annotation in questions.items():
            pixels = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(folder / category / f"{stem}.jpg")
            (folder / category / f"{stem}.json").write_text(json.dumps(annotation))
    return folder
