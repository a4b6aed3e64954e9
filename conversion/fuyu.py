"""Converters between MosaicFuyuForCausalLM and transformers' FuyuForCausalLM (the adept/fuyu-8b layout).

The parts of `state_dict_mapping`: the parameter names are identical (no key table), so a strict load,
then a logit check on a fixed input with image patches and a greedy-generation check that must come out
token for token. A failed check raises; nothing is returned.
"""

import logging
import os

import torch
from mosaic_vlm.modeling import MosaicFuyuConfig, MosaicFuyuForCausalLM
from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor
from mosaic_vlm.processing.fuyu_special_tokens import BEGIN_OF_ANSWER_TOKEN, IMAGE_NEWLINE_TOKEN, IMAGE_TOKEN
from transformers import FuyuConfig, FuyuForCausalLM

from .state_dict_mapping import build, float32_eval, load_folder_strictly, require_close

logger = logging.getLogger(__name__)

FUYU_8B_NEWLINE_TOKEN_ID = 71019  # IMAGE_NEWLINE_TOKEN in adept/fuyu-8b's tokenizer
CHECK_SEED, CHECK_NEW_TOKENS = 0, 6

# decoder fields with the same name in our flat config and in FuyuConfig.text_config
_TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
    "max_position_embeddings", "layer_norm_eps", "qk_layernorm", "attention_dropout", "hidden_dropout",
    "initializer_range", "pad_token_id", "bos_token_id", "eos_token_id",
)


def config_from_transformers(config: FuyuConfig, image_newline_token_id: int = FUYU_8B_NEWLINE_TOKEN_ID) -> MosaicFuyuConfig:
    text = config.text_config
    rope = text.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"Only the default rotary embedding converts, got rope_type={rope.get('rope_type')!r}.")
    if not isinstance(config.patch_size, int):
        raise ValueError(f"Only square patches convert, got patch_size={config.patch_size!r}.")
    return MosaicFuyuConfig(
        **{field: getattr(text, field) for field in _TEXT_FIELDS},
        rope_theta=float(rope.get("rope_theta", 25000.0)),
        partial_rotary_factor=float(rope.get("partial_rotary_factor", 0.5)),
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        image_token_id=config.image_token_id,
        image_newline_token_id=image_newline_token_id,
        tie_word_embeddings=bool(config.tie_word_embeddings),
    )


def config_to_transformers(config: MosaicFuyuConfig) -> FuyuConfig:
    text_config = {field: getattr(config, field) for field in _TEXT_FIELDS}
    text_config["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": config.rope_theta,
        "partial_rotary_factor": config.partial_rotary_factor,
    }
    return FuyuConfig(
        text_config=text_config,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        image_token_id=config.image_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )


def check_inputs(config: MosaicFuyuConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed check input: one 3 x 4 patch image block (image tokens, a newline per row), BOS and 8
    random prompt tokens; random patches."""
    generator = torch.Generator().manual_seed(CHECK_SEED)
    special = {config.image_token_id, config.image_newline_token_id}
    prompt = [t for t in torch.randint(0, config.vocab_size, (64,), generator=generator).tolist() if t not in special][:8]
    layout = ([config.image_token_id] * 4 + [config.image_newline_token_id]) * 3
    input_ids = torch.tensor([layout + [config.bos_token_id or 0] + prompt])
    patches = torch.randn(1, 12, config.patch_dim, generator=generator)
    return input_ids, patches


def _check(reference, converted, reference_inputs: dict, converted_inputs: dict, name: str) -> None:
    """Logits within LOGIT_ATOL and greedy tokens equal, or raise."""
    require_close(reference(**reference_inputs).logits, converted(**converted_inputs).logits, name)
    settings = dict(max_new_tokens=CHECK_NEW_TOKENS, min_new_tokens=CHECK_NEW_TOKENS, do_sample=False, pad_token_id=0)
    expected = reference.generate(**reference_inputs, **settings)
    generated = converted.generate(**converted_inputs, **settings)
    if not torch.equal(expected, generated):
        raise ValueError(
            f"Generation check failed: greedy tokens differ from {name} ({expected[0, -CHECK_NEW_TOKENS:].tolist()} "
            f"vs {generated[0, -CHECK_NEW_TOKENS:].tolist()}). Nothing was returned."
        )
    logger.info("greedy generation of %d tokens matches %s token for token", CHECK_NEW_TOKENS, name)


def fuyu_from_transformers(
    model_or_path: FuyuForCausalLM | str | os.PathLike, image_newline_token_id: int = FUYU_8B_NEWLINE_TOKEN_ID
) -> MosaicFuyuForCausalLM:
    """transformers' FuyuForCausalLM (an instance or a local folder) -> MosaicFuyuForCausalLM, checked on
    logits (fp32, <= 1e-4) and greedy tokens. FuyuConfig does not record the image-newline token: pass
    its id (adept/fuyu-8b's by default)."""
    source = load_folder_strictly(model_or_path, FuyuConfig, FuyuForCausalLM) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    if not isinstance(source, FuyuForCausalLM):
        raise TypeError(f"Expected a transformers FuyuForCausalLM or a path to one, got {type(source).__name__}.")
    config = config_from_transformers(source.config, image_newline_token_id)
    model = build(MosaicFuyuForCausalLM, config, source.state_dict(), "transformers Fuyu")
    input_ids, patches = check_inputs(config)
    with float32_eval(source) as reference:
        _check(reference, model, {"input_ids": input_ids, "pixel_values": patches},
               {"input_ids": input_ids, "image_patches": patches}, "FuyuForCausalLM")
    return model.to(device=source.device, dtype=source.dtype)


def fuyu_to_transformers(model: MosaicFuyuForCausalLM) -> FuyuForCausalLM:
    """MosaicFuyuForCausalLM -> transformers' FuyuForCausalLM, checked like `fuyu_from_transformers`."""
    config = config_to_transformers(model.config)
    exported = build(FuyuForCausalLM, config, model.state_dict(), "MosaicFuyu")
    input_ids, patches = check_inputs(model.config)
    with float32_eval(model) as reference:
        _check(reference, exported, {"input_ids": input_ids, "image_patches": patches},
               {"input_ids": input_ids, "pixel_values": patches}, "MosaicFuyuForCausalLM")
    return exported.to(device=model.device, dtype=model.dtype)


def fuyu_processor_from_transformers(tokenizer, image_processor_config: dict) -> MosaicFuyuProcessor:
    """A MosaicFuyuProcessor from a Fuyu tokenizer (with its image, image-newline and begin-of-answer tokens) and a
    transformers Fuyu image-processor config (a dict, e.g. `FuyuImageProcessorPil().to_dict()`)."""
    for token in (IMAGE_TOKEN, IMAGE_NEWLINE_TOKEN, BEGIN_OF_ANSWER_TOKEN):
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise ValueError(f"The tokenizer lacks Fuyu's special token {token!r}.")
    patch = image_processor_config.get("patch_size", {"height": 30, "width": 30})
    if isinstance(patch, dict):
        if patch["height"] != patch["width"]:
            raise ValueError(f"Only square patches convert, got patch_size={patch!r}.")
        patch = patch["height"]
    size = image_processor_config.get("size", {"height": 1080, "width": 1920})
    image_processor = MosaicFuyuImageProcessor(
        size={"height": size["height"], "width": size["width"]},
        patch_size=patch,
        padding_value=float(image_processor_config.get("padding_value", 1.0)),
        image_mean=image_processor_config.get("image_mean", 0.5),
        image_std=image_processor_config.get("image_std", 0.5),
        rescale_factor=image_processor_config.get("rescale_factor", 1 / 255),
    )
    return MosaicFuyuProcessor(image_processor=image_processor, tokenizer=tokenizer)
