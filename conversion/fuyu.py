"""Fuyu conversions between MosaicFuyuForCausalLM and transformers' FuyuForCausalLM (the adept/fuyu-8b layout).

The parts of `state_dict_mapping`, run on the engine in `streaming`: in memory the parameter names are identical
(no key table); adept/fuyu-8b's files name the decoder `language_model.model.*` (`TRANSFORMERS_FILE_KEY_TABLE`).
Then a strict load, a check of every layer and the logits on a fixed input with image patches, and a
greedy-generation check that must come out token for token. A failed check raises; nothing is returned or
written. `FUYU_CONVERTERS` streams checkpoint folders (what `mosaic-vlm convert` runs); `fuyu_from_transformers`
and `fuyu_to_transformers` convert live models in memory through the same plan and checks.
"""

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import FuyuConfig, FuyuForCausalLM

from mosaic_vlm.modeling import MosaicFuyuConfig, MosaicFuyuForCausalLM
from mosaic_vlm.modeling.mosaic_transformers_compat import TRANSFORMERS_FUYU_PATCHES_ARGUMENT
from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor
from mosaic_vlm.processing.fuyu_special_tokens import BEGIN_OF_ANSWER_TOKEN, IMAGE_NEWLINE_TOKEN, IMAGE_TOKEN

from .state_dict_mapping import invert, load_config_strictly, rule
from .streaming import (
    DEFAULT_MAX_SHARD_SIZE,
    Converter,
    LazyCheckpoint,
    StateDictCheckpoint,
    expected_shapes,
    input_device,
    load_converted,
    placed_like,
    reference_model,
    save_model_files,
    source_of,
    stream_tensors,
    verify_outputs,
)

logger = logging.getLogger(__name__)

FUYU_8B_NEWLINE_TOKEN_ID = 71019  # IMAGE_NEWLINE_TOKEN in adept/fuyu-8b's tokenizer
CHECK_SEED, CHECK_NEW_TOKENS = 0, 6

# adept/fuyu-8b's files (the layout transformers' FuyuForCausalLM saves and reads) -> our parameter names, which
# are transformers' in-memory names
TRANSFORMERS_FILE_KEY_TABLE = (
    rule("language_model.lm_head.weight", "lm_head.weight"),
    rule("language_model.model.{rest}", "model.language_model.{rest}"),
    rule("vision_embed_tokens.{wb}", "model.vision_embed_tokens.{wb}"),
)

# decoder fields with the same name in our flat config and in FuyuConfig.text_config
_TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_act",
    "max_position_embeddings",
    "layer_norm_eps",
    "qk_layernorm",
    "attention_dropout",
    "hidden_dropout",
    "initializer_range",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


def config_from_transformers(
    config: FuyuConfig, image_newline_token_id: int = FUYU_8B_NEWLINE_TOKEN_ID
) -> MosaicFuyuConfig:
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
    prompt = [t for t in torch.randint(0, config.vocab_size, (64,), generator=generator).tolist() if t not in special][
        :8
    ]
    layout = ([config.image_token_id] * 4 + [config.image_newline_token_id]) * 3
    input_ids = torch.tensor([layout + [config.bos_token_id or 0] + prompt])
    patches = torch.randn(1, 12, config.patch_dim, generator=generator)
    return input_ids, patches


def _inputs_for(model: nn.Module, input_ids: torch.Tensor, patches: torch.Tensor) -> dict:
    """The check input on `model`'s device, the patches under the keyword `model` reads them by."""
    device = input_device(model)
    patches_argument = TRANSFORMERS_FUYU_PATCHES_ARGUMENT if isinstance(model, FuyuForCausalLM) else "pixel_values"
    return {"input_ids": input_ids.to(device), patches_argument: patches.to(device)}


@torch.no_grad()
def _check(reference: nn.Module, converted: nn.Module, config: MosaicFuyuConfig, name: str) -> None:
    """Every layer and the logits on `check_inputs` (float32, LOGIT_ATOL), then greedy tokens equal, or raise."""
    input_ids, patches = check_inputs(config)
    run = lambda model: model(**_inputs_for(model, input_ids, patches)).logits  # noqa: E731
    verify_outputs(reference, converted, run, run, name)
    settings = dict(max_new_tokens=CHECK_NEW_TOKENS, min_new_tokens=CHECK_NEW_TOKENS, do_sample=False, pad_token_id=0)
    expected = reference.generate(**_inputs_for(reference, input_ids, patches), **settings).cpu()
    generated = converted.generate(**_inputs_for(converted, input_ids, patches), **settings).cpu()
    if not torch.equal(expected, generated):
        raise ValueError(
            f"Generation check failed: greedy tokens differ from {name} ({expected[0, -CHECK_NEW_TOKENS:].tolist()} "
            f"vs {generated[0, -CHECK_NEW_TOKENS:].tolist()}). The conversion is refused."
        )
    logger.info("greedy generation of %d tokens matches %s token for token", CHECK_NEW_TOKENS, name)


def fuyu_from_transformers(
    model_or_path: FuyuForCausalLM | str | os.PathLike, image_newline_token_id: int = FUYU_8B_NEWLINE_TOKEN_ID
) -> MosaicFuyuForCausalLM:
    """transformers' FuyuForCausalLM (an instance or a local folder) -> MosaicFuyuForCausalLM, in memory, checked
    on every layer, the logits (fp32, <= 1e-4) and greedy tokens (a folder's model runs with its weights left on
    disk). FuyuConfig does not record the image-newline token: pass its id (adept/fuyu-8b's by default). Returns
    the model in eval mode, in the source's dtype and on its device."""
    source_config, checkpoint, source = source_of(model_or_path, FuyuConfig, FuyuForCausalLM)
    table = TRANSFORMERS_FILE_KEY_TABLE if isinstance(source, LazyCheckpoint) else None  # a folder: fuyu-8b's names
    config = config_from_transformers(source_config, image_newline_token_id)
    model = load_converted(MosaicFuyuForCausalLM, config, checkpoint, table, "transformers Fuyu")
    with reference_model(source, FuyuForCausalLM, source_config, table) as reference:
        _check(reference, model, config, "FuyuForCausalLM")
    return placed_like(model, source)


def fuyu_to_transformers(model: MosaicFuyuForCausalLM) -> FuyuForCausalLM:
    """MosaicFuyuForCausalLM -> transformers' FuyuForCausalLM, in memory, checked like `fuyu_from_transformers`."""
    checkpoint = StateDictCheckpoint(model.state_dict())
    exported = load_converted(
        FuyuForCausalLM, config_to_transformers(model.config), checkpoint, None, "MosaicFuyuForCausalLM"
    )
    with reference_model(model) as reference:
        _check(reference, exported, model.config, "MosaicFuyuForCausalLM")
    return placed_like(exported, model)


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


def newline_token_id_of(tokenizer) -> int | None:
    """The id of IMAGE_NEWLINE_TOKEN in `tokenizer`, None when it has no such token."""
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_NEWLINE_TOKEN)
    return None if token_id in (None, tokenizer.unk_token_id) else token_id


def _convert(
    source: Path,
    output: Path,
    *,
    source_layout: str,
    target_layout: str,
    image_newline_token_id: int | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> None:
    """Stream a transformers FuyuForCausalLM folder to a MosaicFuyuForCausalLM folder, or back, into the folder
    `output`, never holding a whole model: tensors are copied one by one in the source dtype (or `dtype`), then
    both models run the fixed input with their weights left on disk (every layer, the logits, and greedy tokens
    must match). From transformers, the source's tokenizer and image processor become our processor, and the
    image-newline id is read from the tokenizer's IMAGE_NEWLINE_TOKEN (else `image_newline_token_id`, else
    adept/fuyu-8b's)."""
    processor = None
    if source_layout == "transformers":
        source_config = load_config_strictly(source, FuyuConfig)
        tokenizer = _source_tokenizer(source)
        found = newline_token_id_of(tokenizer) if tokenizer is not None else None
        if found is not None and image_newline_token_id not in (None, found):
            raise ValueError(
                f"image_newline_token_id={image_newline_token_id} differs from the tokenizer's "
                f"{IMAGE_NEWLINE_TOKEN} ({found}); leave it out."
            )
        newline = found if found is not None else image_newline_token_id or FUYU_8B_NEWLINE_TOKEN_ID
        config = config_from_transformers(source_config, newline)
        if tokenizer is not None:
            processor = fuyu_processor_from_transformers(tokenizer, _image_processor_config(source))
        # (model class, config, table from its files' names to the model's): adept/fuyu-8b's files, ours
        source_side = (FuyuForCausalLM, source_config, TRANSFORMERS_FILE_KEY_TABLE)
        target_side = (MosaicFuyuForCausalLM, config, None)
    else:
        config = load_config_strictly(source, MosaicFuyuConfig)
        source_side = (MosaicFuyuForCausalLM, config, None)
        target_side = (FuyuForCausalLM, config_to_transformers(config), TRANSFORMERS_FILE_KEY_TABLE)
    written_names = invert(target_side[2]) if target_side[2] is not None else None
    checkpoint = LazyCheckpoint(source)
    # save_pretrained removes weight files it did not write: the config and code go first
    save_model_files(target_side[0], target_side[1], output, dtype or checkpoint.floating_dtype())
    if processor is not None:
        processor.save_pretrained(output)
    stream_tensors(
        checkpoint,
        output,
        source_side[2] or written_names,
        expected_shapes(target_side[0], target_side[1], written_names),
        f"{source_side[0].__name__} ({source})",
        target_side[0].__name__,
        dtype=dtype,
        max_shard_size=max_shard_size,
    )
    with (
        reference_model(checkpoint, *source_side, rounded_to=dtype) as reference,
        reference_model(LazyCheckpoint(output), *target_side) as converted,
    ):
        _check(reference, converted, config, source_side[0].__name__)
    if processor is None and target_layout == "mosaic":
        logger.warning(
            "%s has no tokenizer: no processor was written. Add one to the output folder before "
            "`mosaic-vlm ask`: MosaicFuyuProcessor(image_processor, tokenizer).save_pretrained(folder).",
            source,
        )


FUYU_CONVERTERS: dict[tuple[str, str], Converter] = {
    ("transformers", "mosaic"): Converter("fuyu", "transformers", "mosaic", ("image_newline_token_id",), _convert),
    ("mosaic", "transformers"): Converter("fuyu", "mosaic", "transformers", (), _convert),
}
"""(source layout, target layout) -> its streaming converter: transformers <-> mosaic."""


def _source_tokenizer(folder: Path):
    """The tokenizer saved in a transformers folder, or None when it has none."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"The tokenizer in {folder} cannot be read: {error}") from error


def _image_processor_config(folder: Path) -> dict:
    """The Fuyu image-processor settings of a transformers folder (fuyu-8b's defaults when it has none)."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (folder / name).is_file():
            settings = json.loads((folder / name).read_text())
            return settings.get("image_processor", settings)
    return {}
