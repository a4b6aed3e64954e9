"""Converters between MosaicClipModel, transformers' CLIPModel and the OpenAI / open_clip state-dict layout.

Every converter is the same four parts:
1. a declarative key table: source key template -> target key template(s), plus a pair of pure tensor
   functions (forward, inverse); the inverse table of a layout is derived from the same rows;
2. small pure tensor functions (`keep`, `transpose`, `split_qkv`, `join_qkv`);
3. a strict load that raises one ValueError listing every unused source key, every missing target key
   and every shape mismatch;
4. a check on a fixed deterministic input (`check_inputs`): the converted model's `logits_per_image`
   must match the source's within `LOGIT_ATOL` in float32, or the converter raises instead of returning.
   From the OpenAI layout there is no source model to run, so `openai_clip_logits` (a reference forward
   written with torch.nn.functional on the raw state dict) stands in for it, and converting back must
   reproduce every source tensor exactly.

Key templates use two placeholders: `{n}` a layer index and `{wb}` "weight" or "bias".
Converters log their steps (tensors mapped, logit difference) on the `mosaic_vlm.conversion` logger.
"""

import copy
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, CLIPConfig, CLIPModel
from transformers.initialization import no_init_weights

from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel

logger = logging.getLogger(__name__)

LOGIT_ATOL = 1e-4
"""Largest accepted absolute difference of `logits_per_image` between source and converted model (fp32)."""

CHECK_SEED = 0  # seed of the fixed check input (`check_inputs`)
CHECK_TEXTS, CHECK_IMAGES = 3, 2

# ---------------------------------------------------------------------------------------------------------
# Pure tensor functions. Each takes the source tensors of one key-table row and returns its target tensors.


def keep(tensor: torch.Tensor) -> tuple[torch.Tensor]:
    return (tensor,)


def transpose(projection: torch.Tensor) -> tuple[torch.Tensor]:
    """OpenAI applies projections as `x @ proj` with proj (width, dim); nn.Linear stores (dim, width)."""
    return (projection.t().contiguous(),)


def split_qkv(in_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """nn.MultiheadAttention's packed in_proj, rows [q; k; v]: weight (3w, w) -> 3 x (w, w), bias (3w,) -> 3 x (w,)."""
    if in_proj.shape[0] % 3:
        raise ValueError(f"A packed in_proj tensor needs a first dimension divisible by 3, got {tuple(in_proj.shape)}.")
    query, key, value = in_proj.chunk(3)
    return query, key, value


def join_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor]:
    """The inverse of `split_qkv`: q, k, v stacked along the output dimension."""
    return (torch.cat([query, key, value]),)


@dataclass(frozen=True)
class TensorMap:
    """A pure tensor function and its inverse."""

    forward: Callable[..., tuple[torch.Tensor, ...]]
    inverse: Callable[..., tuple[torch.Tensor, ...]]

    def inverted(self) -> "TensorMap":
        return TensorMap(self.inverse, self.forward)


KEEP = TensorMap(keep, keep)
TRANSPOSE = TensorMap(transpose, transpose)
SPLIT_QKV = TensorMap(split_qkv, join_qkv)


@dataclass(frozen=True)
class KeyRule:
    """One row of a key table: the source keys, the target keys, and the tensor map between them."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    tensors: TensorMap = KEEP

    def inverted(self) -> "KeyRule":
        return KeyRule(self.targets, self.sources, self.tensors.inverted())


def rule(source: str | tuple[str, ...], target: str | tuple[str, ...], tensors: TensorMap = KEEP) -> KeyRule:
    def as_tuple(keys):
        return (keys,) if isinstance(keys, str) else keys

    return KeyRule(as_tuple(source), as_tuple(target), tensors)


def invert(table: Iterable[KeyRule]) -> tuple[KeyRule, ...]:
    return tuple(row.inverted() for row in table)


_PLACEHOLDERS = {"n": r"\d+", "wb": "weight|bias"}


def _template_regex(template: str) -> re.Pattern:
    """'a.{n}.b.{wb}' -> r'a\\.(?P<n>\\d+)\\.b\\.(?P<wb>weight|bias)'."""
    literal_parts = re.split(r"\{(\w+)\}", template)  # literals at even indices, placeholder names at odd
    pattern = "".join(
        re.escape(part) if index % 2 == 0 else f"(?P<{part}>{_PLACEHOLDERS[part]})"
        for index, part in enumerate(literal_parts)
    )
    return re.compile(pattern)


# ---------------------------------------------------------------------------------------------------------
# Key tables.

TRANSFORMERS_KEY_TABLE: tuple[KeyRule, ...] = tuple(
    rule(key, key)  # MosaicClipModel keeps CLIPModel's parameter names, so every row is the identity
    for key in (
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.encoder.layers.{n}.layer_norm1.{wb}",
        "text_model.encoder.layers.{n}.self_attn.q_proj.{wb}",
        "text_model.encoder.layers.{n}.self_attn.k_proj.{wb}",
        "text_model.encoder.layers.{n}.self_attn.v_proj.{wb}",
        "text_model.encoder.layers.{n}.self_attn.out_proj.{wb}",
        "text_model.encoder.layers.{n}.layer_norm2.{wb}",
        "text_model.encoder.layers.{n}.mlp.fc1.{wb}",
        "text_model.encoder.layers.{n}.mlp.fc2.{wb}",
        "text_model.final_layer_norm.{wb}",
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
        "vision_model.pre_layrnorm.{wb}",
        "vision_model.encoder.layers.{n}.layer_norm1.{wb}",
        "vision_model.encoder.layers.{n}.self_attn.q_proj.{wb}",
        "vision_model.encoder.layers.{n}.self_attn.k_proj.{wb}",
        "vision_model.encoder.layers.{n}.self_attn.v_proj.{wb}",
        "vision_model.encoder.layers.{n}.self_attn.out_proj.{wb}",
        "vision_model.encoder.layers.{n}.layer_norm2.{wb}",
        "vision_model.encoder.layers.{n}.mlp.fc1.{wb}",
        "vision_model.encoder.layers.{n}.mlp.fc2.{wb}",
        "vision_model.post_layernorm.{wb}",
        "visual_projection.weight",
        "text_projection.weight",
        "logit_scale",
    )
)
"""transformers' CLIPModel <-> MosaicClipModel (the identity on names, but strict: unknown keys are refused)."""

def _qkv(layer: str, parameter: str) -> tuple[str, str, str]:
    return tuple(f"{layer}.self_attn.{name}_proj.{parameter}" for name in "qkv")


_VISION_LAYER = "vision_model.encoder.layers.{n}"
_TEXT_LAYER = "text_model.encoder.layers.{n}"

OPENAI_KEY_TABLE: tuple[KeyRule, ...] = (
    rule("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    rule("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    rule("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    rule("visual.ln_pre.{wb}", "vision_model.pre_layrnorm.{wb}"),
    rule("visual.transformer.resblocks.{n}.ln_1.{wb}", f"{_VISION_LAYER}.layer_norm1.{{wb}}"),
    rule("visual.transformer.resblocks.{n}.attn.in_proj_weight", _qkv(_VISION_LAYER, "weight"), SPLIT_QKV),
    rule("visual.transformer.resblocks.{n}.attn.in_proj_bias", _qkv(_VISION_LAYER, "bias"), SPLIT_QKV),
    rule("visual.transformer.resblocks.{n}.attn.out_proj.{wb}", f"{_VISION_LAYER}.self_attn.out_proj.{{wb}}"),
    rule("visual.transformer.resblocks.{n}.ln_2.{wb}", f"{_VISION_LAYER}.layer_norm2.{{wb}}"),
    rule("visual.transformer.resblocks.{n}.mlp.c_fc.{wb}", f"{_VISION_LAYER}.mlp.fc1.{{wb}}"),
    rule("visual.transformer.resblocks.{n}.mlp.c_proj.{wb}", f"{_VISION_LAYER}.mlp.fc2.{{wb}}"),
    rule("visual.ln_post.{wb}", "vision_model.post_layernorm.{wb}"),
    rule("visual.proj", "visual_projection.weight", TRANSPOSE),
    rule("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    rule("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    rule("transformer.resblocks.{n}.ln_1.{wb}", f"{_TEXT_LAYER}.layer_norm1.{{wb}}"),
    rule("transformer.resblocks.{n}.attn.in_proj_weight", _qkv(_TEXT_LAYER, "weight"), SPLIT_QKV),
    rule("transformer.resblocks.{n}.attn.in_proj_bias", _qkv(_TEXT_LAYER, "bias"), SPLIT_QKV),
    rule("transformer.resblocks.{n}.attn.out_proj.{wb}", f"{_TEXT_LAYER}.self_attn.out_proj.{{wb}}"),
    rule("transformer.resblocks.{n}.ln_2.{wb}", f"{_TEXT_LAYER}.layer_norm2.{{wb}}"),
    rule("transformer.resblocks.{n}.mlp.c_fc.{wb}", f"{_TEXT_LAYER}.mlp.fc1.{{wb}}"),
    rule("transformer.resblocks.{n}.mlp.c_proj.{wb}", f"{_TEXT_LAYER}.mlp.fc2.{{wb}}"),
    rule("ln_final.{wb}", "text_model.final_layer_norm.{wb}"),
    rule("text_projection", "text_projection.weight", TRANSPOSE),
    rule("logit_scale", "logit_scale"),
    rule("logit_bias", "logit_bias"),  # SigLIP-style open_clip models only
)
"""OpenAI / open_clip ViT layout -> MosaicClipModel; `invert(OPENAI_KEY_TABLE)` is the way back."""

OPENAI_IGNORED_KEYS: dict[str, str] = {
    "attn_mask": "the text tower's causal mask, a buffer rebuilt from the context length, not a weight",
    "input_resolution": "scalar metadata in OpenAI's released state dicts (image size); checked against the config",
    "context_length": "scalar metadata in OpenAI's released state dicts (text length); checked against the config",
    "vocab_size": "scalar metadata in OpenAI's released state dicts (vocabulary); checked against the config",
}
"""The only source keys of the OpenAI layout that are read but not converted, and why."""

OPENAI_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # OpenAI's QuickGELU
    "gelu": F.gelu,  # nn.GELU, used by most open_clip models trained by LAION
}
OPENAI_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by OpenAI and open_clip
OPENAI_HEAD_WIDTH = 64  # OpenAI and open_clip: heads = width // 64
OPENAI_WEIGHTS_NAME = "open_clip_model.safetensors"  # the file name open_clip reads from the Hub


# ---------------------------------------------------------------------------------------------------------
# Mapping and strict loading.


def map_state_dict(
    state_dict: Mapping[str, torch.Tensor], table: Iterable[KeyRule], ignored: Iterable[str] = ()
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply a key table. Returns the target tensors and the source keys no row used (keys in `ignored`
    are skipped). A row with several sources (e.g. q, k, v -> in_proj) is used only when all are present."""
    ignored = set(ignored)
    remaining = {key for key in state_dict if key not in ignored}
    mapped: dict[str, torch.Tensor] = {}
    for row in table:
        first_source = _template_regex(row.sources[0])
        for key in sorted(remaining):
            match = first_source.fullmatch(key)
            if match is None or key not in remaining:
                continue
            fields = match.groupdict()
            source_keys = [template.format(**fields) for template in row.sources]
            if not all(source_key in remaining for source_key in source_keys):
                continue
            outputs = row.tensors.forward(*(state_dict[source_key] for source_key in source_keys))
            for template, tensor in zip(row.targets, outputs, strict=True):
                mapped[template.format(**fields)] = tensor
            remaining.difference_update(source_keys)
    return mapped, sorted(remaining)


def summarise_keys(keys: Iterable[str], limit: int = 40) -> str:
    """Keys as one compact line, layer indices folded: 'a.[0-11].b, c' (at most `limit` entries)."""
    indices: dict[str, list[int]] = defaultdict(list)
    for key in sorted(keys):
        match = re.search(r"\.(\d+)\.", key)
        if match is None:
            indices[key] = []
        else:
            indices[key[: match.start(1)] + "\0" + key[match.end(1) :]].append(int(match.group(1)))
    entries = [key.replace("\0", f"[{_fold(numbers)}]") if numbers else key for key, numbers in indices.items()]
    more = f", ... and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def _fold(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    numbers = sorted(set(numbers))
    runs = []
    start = previous = numbers[0]
    for current in numbers[1:]:
        if current != previous + 1:
            runs.append((start, previous))
            start = current
        previous = current
    runs.append((start, previous))
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def load_strictly(model: nn.Module, mapped: Mapping[str, torch.Tensor], unused: list[str], source: str) -> None:
    """Copy `mapped` into `model`, or raise one ValueError listing every unused source key, every tensor
    the model has no place for, every missing target key and every shape mismatch."""
    expected = model.state_dict()
    unexpected = sorted(set(mapped) - set(expected))
    missing = sorted(set(expected) - set(mapped))
    wrong_shapes = [
        f"{key} {tuple(mapped[key].shape)} vs {tuple(expected[key].shape)}"
        for key in sorted(set(mapped) & set(expected))
        if mapped[key].shape != expected[key].shape
    ]
    problems = []
    if unused:
        problems.append(f"unused source keys: {summarise_keys(unused)}")
    if unexpected:
        problems.append(f"source tensors the model has no place for: {summarise_keys(unexpected)}")
    if missing:
        problems.append(f"missing target keys: {summarise_keys(missing)}")
    if wrong_shapes:
        problems.append(f"shape mismatches (checkpoint vs model): {', '.join(wrong_shapes)}")
    if problems:
        raise ValueError(
            f"Cannot load the {source} weights strictly into {type(model).__name__}: {'; '.join(problems)}."
        )
    model.load_state_dict(mapped, strict=True)


def _build(model_class, config, state_dict, table, source: str, ignored: Iterable[str] = ()):
    """A float32 `model_class(config)` in eval mode holding `state_dict` mapped through `table`."""
    mapped, unused = map_state_dict(state_dict, table, ignored)
    logger.info("mapping %d source tensors to %d %s tensors", len(state_dict), len(mapped), model_class.__name__)
    with no_init_weights():  # every weight is overwritten by the strict load below
        model = model_class(config)
    load_strictly(model, mapped, unused, source)
    return model.float().eval()


# ---------------------------------------------------------------------------------------------------------
# The check on a fixed input.


def check_inputs(config: MosaicClipConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed check input: CHECK_TEXTS random texts of full context length with EOS at different places
    (the last one at the end), and CHECK_IMAGES images of random pixels at the config's size.

    No token other than EOS is EOS, so pooling at the first EOS and OpenAI's pooling at the highest id
    agree whenever EOS is the highest id (`eos_token_id = vocab_size - 1`, as in OpenAI CLIP)."""
    text, vision = config.text_config, config.vision_config
    generator = torch.Generator().manual_seed(CHECK_SEED)
    length = text.max_position_embeddings
    input_ids = torch.randint(0, text.vocab_size - 1, (CHECK_TEXTS, length), generator=generator)
    input_ids += (input_ids >= text.eos_token_id).long()  # draw from every id but EOS
    for row in range(CHECK_TEXTS):
        input_ids[row, (length - 1) * (row + 1) // CHECK_TEXTS] = text.eos_token_id
    size = vision.image_size
    pixel_values = torch.randn(CHECK_IMAGES, vision.num_channels, size, size, generator=generator)
    return input_ids, pixel_values


def require_close(reference: torch.Tensor, converted: torch.Tensor, reference_name: str) -> float:
    """Raise unless the converted `logits_per_image` match the reference within LOGIT_ATOL."""
    if reference.shape != converted.shape:
        raise ValueError(
            f"Logit check failed: {reference_name} gives logits of shape {tuple(reference.shape)}, "
            f"the converted model {tuple(converted.shape)}."
        )
    difference = (reference.float().cpu() - converted.float().cpu()).abs().max().item()
    logger.info(
        "checking logits against %s: max |diff| of logits_per_image = %.2e (limit %.0e)",
        reference_name,
        difference,
        LOGIT_ATOL,
    )
    if not difference <= LOGIT_ATOL:  # `not <=` also refuses NaN
        raise ValueError(
            f"Logit check failed: the converted model differs from {reference_name} by {difference:.3e} "
            f"(max |diff| of logits_per_image on the fixed input; limit {LOGIT_ATOL:.0e}). Nothing was returned."
        )
    return difference


@contextmanager
def _float32_eval(model: nn.Module):
    """`model` in eval mode and float32, without gradients, for the check: a copy when it is in another
    dtype; the model's own mode is restored afterwards."""
    is_float32 = all(p.dtype == torch.float32 for p in model.parameters())
    checked = model if is_float32 else copy.deepcopy(model).float()
    was_training = model.training
    checked.eval()
    try:
        with torch.no_grad():
            yield checked
    finally:
        model.train(was_training)


def _logits(model: nn.Module, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    output = model(input_ids=input_ids.to(device), pixel_values=pixel_values.to(device))
    return output.logits_per_image


# ---------------------------------------------------------------------------------------------------------
# transformers' CLIPModel.

_TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "initializer_range",
    "initializer_factor",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)
_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "initializer_range",
    "initializer_factor",
)
_TOP_FIELDS = ("projection_dim", "logit_scale_init_value", "initializer_factor")
_LEGACY_EOS_TOKEN_ID = 2  # transformers' CLIP pools at argmax(input_ids), the highest id, when eos_token_id == 2


def _square(value, name: str) -> int:
    """transformers allows image_size / patch_size as (height, width); MosaicClipVisionConfig takes squares."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"CLIPVisionConfig.{name}={value} is not square; MosaicClipVisionConfig takes one int.")
        return int(value[0])
    return value


def config_from_transformers(config: CLIPConfig) -> MosaicClipConfig:
    """CLIPConfig -> MosaicClipConfig with the same fields.

    A legacy `eos_token_id == 2` (configs written before transformers PR #24773) makes CLIPModel pool at
    the highest token id; it becomes `eos_token_id = vocab_size - 1`, OpenAI's EOT, where ours pools."""
    text = {name: getattr(config.text_config, name) for name in _TEXT_FIELDS}
    vision = {name: getattr(config.vision_config, name) for name in _VISION_FIELDS}
    if not isinstance(text["eos_token_id"], int):
        raise ValueError(
            f"CLIPTextConfig.eos_token_id={text['eos_token_id']!r}: MosaicClipTextConfig pools at one EOS id."
        )
    if text["eos_token_id"] == _LEGACY_EOS_TOKEN_ID:
        text["eos_token_id"] = text["vocab_size"] - 1
        logger.info("legacy eos_token_id=2 (pooling at the highest id) mapped to eos_token_id=%d", text["eos_token_id"])
    for tower in (text, vision):
        tower["attention_dropout"] = float(tower["attention_dropout"])
    vision["image_size"] = _square(vision["image_size"], "image_size")
    vision["patch_size"] = _square(vision["patch_size"], "patch_size")
    top = {name: getattr(config, name) for name in _TOP_FIELDS}
    top["logit_scale_init_value"] = float(top["logit_scale_init_value"])
    return MosaicClipConfig(text_config=text, vision_config=vision, **top)


def config_to_transformers(config: MosaicClipConfig) -> CLIPConfig:
    """MosaicClipConfig -> CLIPConfig; refuses what CLIPModel cannot express."""
    if config.loss_type != "clip":
        raise ValueError(
            f"transformers' CLIPModel has no logit_bias, so a loss_type={config.loss_type!r} model cannot be "
            "converted to it; convert to the OpenAI / open_clip layout instead, which keeps logit_bias."
        )
    if config.text_config.eos_token_id == _LEGACY_EOS_TOKEN_ID:
        raise ValueError(
            "eos_token_id=2 means 'pool at the highest token id' to transformers' CLIPModel (a legacy rule), "
            "not 'pool at token 2' as in this model; the conversion would change the text embeddings."
        )
    return CLIPConfig(
        text_config={name: getattr(config.text_config, name) for name in _TEXT_FIELDS},
        vision_config={name: getattr(config.vision_config, name) for name in _VISION_FIELDS},
        **{name: getattr(config, name) for name in _TOP_FIELDS},
    )


def load_transformers_folder(path: str | os.PathLike, config_class, model_class):
    """A transformers `model_class` from a local save_pretrained folder whose config is a `config_class`,
    loaded strictly from safetensors only; one ValueError (FileNotFoundError for a missing path) otherwise."""
    path, name = Path(path), model_class.__name__
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder; pass the save_pretrained folder of a transformers {name}.")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path} holds no readable transformers config.json: {error}") from error
    if not isinstance(config, config_class):
        raise ValueError(
            f"{path} holds a {config.model_type!r} model; expected a transformers {name} ({config_class.model_type!r})."
        )
    try:
        model, info = model_class.from_pretrained(
            path, config=config, local_files_only=True, use_safetensors=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ValueError(f"Cannot load the {name} weights in {path} (safetensors only): {error}") from error
    problems = {kind: sorted(map(str, keys)) for kind, keys in info.items() if keys}
    if problems:
        raise ValueError(f"{path} does not load strictly into {name}: {problems}.")
    return model


def clip_from_transformers(model_or_path: CLIPModel | str | os.PathLike) -> MosaicClipModel:
    """transformers' CLIPModel (an instance, or a local save_pretrained folder) -> MosaicClipModel.

    The config is mapped field by field (see `config_from_transformers`), the weights through
    TRANSFORMERS_KEY_TABLE, and the logits of both models on `check_inputs` must agree within LOGIT_ATOL
    in float32, or this raises. Returns the model in eval mode, in the source's dtype and on its device."""
    source = load_transformers_folder(model_or_path, CLIPConfig, CLIPModel) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    if not isinstance(source, CLIPModel):
        raise TypeError(f"Expected a transformers CLIPModel or a path to one, got {type(source).__name__}.")
    config = config_from_transformers(source.config)
    model = _build(MosaicClipModel, config, source.state_dict(), TRANSFORMERS_KEY_TABLE, "transformers CLIPModel")
    input_ids, pixel_values = check_inputs(config)
    with _float32_eval(source) as reference:
        require_close(_logits(reference, input_ids, pixel_values), _logits(model, input_ids, pixel_values), "CLIPModel")
    return model.to(device=source.device, dtype=source.dtype)


def clip_to_transformers(model: MosaicClipModel) -> CLIPModel:
    """MosaicClipModel -> transformers' CLIPModel, checked like `clip_from_transformers`.

    Refuses SigLIP-loss models (CLIPModel has no logit_bias). Patch dropout, a training-time option, has
    no CLIPModel counterpart and is dropped. Returns the model in eval mode, in the source's dtype and device."""
    config = config_to_transformers(model.config)
    exported = _build(CLIPModel, config, model.state_dict(), invert(TRANSFORMERS_KEY_TABLE), "MosaicClipModel")
    input_ids, pixel_values = check_inputs(model.config)
    with _float32_eval(model) as reference:
        require_close(
            _logits(reference, input_ids, pixel_values), _logits(exported, input_ids, pixel_values), "MosaicClipModel"
        )
    return exported.to(device=model.device, dtype=model.dtype)


# ---------------------------------------------------------------------------------------------------------
# The OpenAI / open_clip layout.


def openai_clip_logits(
    state_dict: Mapping[str, torch.Tensor],
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    *,
    text_heads: int,
    vision_heads: int,
    hidden_act: str = "quick_gelu",
) -> torch.Tensor:
    """The reference forward of the OpenAI / open_clip ViT layout: `logits_per_image` (images, texts).

    Written with torch.nn.functional directly on the raw state dict, following OpenAI's clip/model.py:
    packed in_proj attention (F.multi_head_attention_forward, as nn.MultiheadAttention runs it), pre-LN
    residual blocks, class-token pooling, text pooling at the highest token id (`input_ids.argmax(-1)`,
    OpenAI's EOT), `x @ proj` projections, and `logit_scale.exp() * cos` (+ `logit_bias` when present).
    It shares no code with MosaicClipModel or the key tables, so the converters can check against it.
    Runs in float32."""
    weights = {key: value.detach().float().cpu() for key, value in state_dict.items()}
    activation = OPENAI_ACTIVATIONS[hidden_act]

    def layer_norm(x, prefix):
        return F.layer_norm(
            x, x.shape[-1:], weights[f"{prefix}.weight"], weights[f"{prefix}.bias"], eps=OPENAI_LAYER_NORM_EPS
        )

    def linear(x, prefix):
        return F.linear(x, weights[f"{prefix}.weight"], weights[f"{prefix}.bias"])

    def transformer(x, prefix, heads, attn_mask):
        # x: (T, B, width), sequence first as nn.MultiheadAttention takes it by default
        layer = 0
        while f"{prefix}.{layer}.ln_1.weight" in weights:
            block = f"{prefix}.{layer}"
            h = layer_norm(x, f"{block}.ln_1")
            attention, _ = F.multi_head_attention_forward(
                h, h, h, x.shape[-1], heads,
                weights[f"{block}.attn.in_proj_weight"], weights[f"{block}.attn.in_proj_bias"],
                None, None, False, 0.0,
                weights[f"{block}.attn.out_proj.weight"], weights[f"{block}.attn.out_proj.bias"],
                training=False, need_weights=False, attn_mask=attn_mask,
            )  # fmt: skip
            x = x + attention
            hidden = activation(linear(layer_norm(x, f"{block}.ln_2"), f"{block}.mlp.c_fc"))
            x = x + linear(hidden, f"{block}.mlp.c_proj")
            layer += 1
        return x

    conv = weights["visual.conv1.weight"]
    patches = F.conv2d(pixel_values.float().cpu(), conv, stride=conv.shape[-1])  # (B, width, grid, grid)
    patches = patches.flatten(2).permute(2, 0, 1)  # (grid * grid, B, width)
    class_token = weights["visual.class_embedding"].expand(1, patches.shape[1], -1)  # (1, B, width)
    positions = weights["visual.positional_embedding"].unsqueeze(1)  # (1 + grid * grid, 1, width), broadcast over B
    x = torch.cat([class_token, patches]) + positions
    x = transformer(layer_norm(x, "visual.ln_pre"), "visual.transformer.resblocks", vision_heads, None)
    image_features = layer_norm(x[0], "visual.ln_post") @ weights["visual.proj"]  # class token: (B, dim)

    input_ids = input_ids.cpu()
    length = input_ids.shape[1]
    x = weights["token_embedding.weight"][input_ids] + weights["positional_embedding"][:length]  # (B, T, width)
    causal_mask = torch.full((length, length), float("-inf")).triu(1)
    # (B, T, width) -> (T, B, width) for the blocks, and back
    x = transformer(x.transpose(0, 1), "transformer.resblocks", text_heads, causal_mask).transpose(0, 1)
    x = layer_norm(x, "ln_final")
    eot = x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)]  # (B, width) at the highest id, OpenAI's EOT
    text_features = eot @ weights["text_projection"]

    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    logits_per_image = weights["logit_scale"].exp() * image_features @ text_features.t()
    if "logit_bias" in weights:
        logits_per_image = logits_per_image + weights["logit_bias"]
    return logits_per_image


_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def load_openai_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """An OpenAI / open_clip state dict from a .safetensors file. Pickled files (.pt, .bin) are refused:
    loading them can run arbitrary code."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass the .safetensors file of an OpenAI / open_clip state dict.")
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path} is not a .safetensors file; weights are read only from safetensors, because loading a "
            "pickle (.pt, .bin) can run code. Convert it once where you trust it: "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors') "
            "(OpenAI's TorchScript archives: torch.jit.load(path, map_location='cpu').state_dict())."
        )
    try:
        return safetensors.torch.load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error


def infer_openai_config(state_dict: Mapping[str, torch.Tensor], hidden_act: str = "quick_gelu") -> MosaicClipConfig:
    """The MosaicClipConfig of an OpenAI / open_clip ViT state dict, read from its shapes.

    Widths, layers, MLP sizes, patch size (conv1), image size (position grid), context length,
    vocabulary and projection size come from the tensors; heads = width // 64 as OpenAI builds them;
    EOS = vocab_size - 1 and BOS = vocab_size - 2 (OpenAI's <|endoftext|>, <|startoftext|>), pad 0
    (OpenAI's tokenize pads with 0); `logit_bias` present -> loss_type "siglip". The activation is not
    in the weights: quick_gelu for OpenAI's models, gelu for most open_clip models trained by LAION."""

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        if key not in state_dict:
            raise ValueError(
                f"Cannot infer the config: the state dict has no {key!r}. Is it the OpenAI / open_clip ViT "
                "layout (keys like visual.conv1.weight, token_embedding.weight, without a 'module.' prefix)?"
            )
        if state_dict[key].ndim != ndim:
            raise ValueError(
                f"Cannot infer the config: {key} has shape {tuple(state_dict[key].shape)}, expected {ndim} dims."
            )
        return tuple(state_dict[key].shape)

    def num_layers(prefix: str) -> int:
        found = {int(m.group(1)) for key in state_dict if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", key))}
        if not found:
            raise ValueError(f"Cannot infer the config: the state dict has no {prefix}.N blocks.")
        return max(found) + 1  # a gap shows up as missing keys in the strict load

    def num_heads(width: int, tower: str) -> int:
        if width % OPENAI_HEAD_WIDTH:
            raise ValueError(
                f"Cannot infer the {tower} heads: width {width} is not a multiple of {OPENAI_HEAD_WIDTH} "
                "(OpenAI uses width // 64 heads); pass a config."
            )
        return width // OPENAI_HEAD_WIDTH

    vision_width, num_channels, patch_size, _ = shape("visual.conv1.weight", 4)
    num_positions, _ = shape("visual.positional_embedding", 2)
    grid = math.isqrt(num_positions - 1)  # positions = 1 class token + grid * grid patches
    if grid * grid != num_positions - 1:
        raise ValueError(f"Cannot infer the image size: {num_positions - 1} patch positions is not a square grid.")
    vocab_size, text_width = shape("token_embedding.weight", 2)
    context_length, _ = shape("positional_embedding", 2)
    _, text_dim = shape("text_projection", 2)
    _, vision_dim = shape("visual.proj", 2)
    if text_dim != vision_dim:
        raise ValueError(f"text_projection ({text_dim}) and visual.proj ({vision_dim}) project to different sizes.")
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=text_width,
        intermediate_size=shape("transformer.resblocks.0.mlp.c_fc.weight", 2)[0],
        projection_dim=text_dim,
        num_hidden_layers=num_layers("transformer.resblocks"),
        num_attention_heads=num_heads(text_width, "text"),
        max_position_embeddings=context_length,
        hidden_act=hidden_act,
        layer_norm_eps=OPENAI_LAYER_NORM_EPS,
        pad_token_id=0,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
    )
    vision_config = dict(
        hidden_size=vision_width,
        intermediate_size=shape("visual.transformer.resblocks.0.mlp.c_fc.weight", 2)[0],
        projection_dim=vision_dim,
        num_hidden_layers=num_layers("visual.transformer.resblocks"),
        num_attention_heads=num_heads(vision_width, "vision"),
        num_channels=num_channels,
        image_size=grid * patch_size,
        patch_size=patch_size,
        hidden_act=hidden_act,
        layer_norm_eps=OPENAI_LAYER_NORM_EPS,
    )
    return MosaicClipConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=text_dim,
        loss_type="siglip" if "logit_bias" in state_dict else "clip",
    )


def require_openai_compatible(config: MosaicClipConfig) -> None:
    """Raise unless the OpenAI forward (`openai_clip_logits`) computes what a model of `config` computes."""
    text, vision = config.text_config, config.vision_config
    problems = []
    if text.eos_token_id != text.vocab_size - 1:
        problems.append(
            f"eos_token_id={text.eos_token_id} is not the highest id {text.vocab_size - 1}, but OpenAI pools at "
            "the highest token id"
        )
    if text.hidden_act != vision.hidden_act or text.hidden_act not in OPENAI_ACTIVATIONS:
        problems.append(
            f"hidden_act is {text.hidden_act!r} (text) and {vision.hidden_act!r} (vision); the layout runs one of "
            f"{sorted(OPENAI_ACTIVATIONS)} in both towers"
        )
    if text.layer_norm_eps != OPENAI_LAYER_NORM_EPS or vision.layer_norm_eps != OPENAI_LAYER_NORM_EPS:
        problems.append(f"layer_norm_eps must be {OPENAI_LAYER_NORM_EPS} in both towers")
    if problems:
        raise ValueError(f"The config does not match the OpenAI / open_clip layout: {'; '.join(problems)}.")


def _require_consistent_metadata(state_dict: Mapping[str, torch.Tensor], config: MosaicClipConfig) -> None:
    """OpenAI's scalar metadata keys, when present, must agree with the config."""
    expected = {
        "input_resolution": config.vision_config.image_size,
        "context_length": config.text_config.max_position_embeddings,
        "vocab_size": config.text_config.vocab_size,
    }
    wrong = [
        f"{key}={state_dict[key].item()} (config: {value})"
        for key, value in expected.items()
        if key in state_dict and (state_dict[key].numel() != 1 or state_dict[key].item() != value)
    ]
    if wrong:
        raise ValueError(f"The state dict's metadata disagrees with the config: {', '.join(wrong)}.")


def _require_float_weights(state_dict: Mapping[str, torch.Tensor]) -> None:
    odd = [
        f"{key} ({tensor.dtype})"
        for key, tensor in state_dict.items()
        if key not in OPENAI_IGNORED_KEYS and tensor.dtype not in _FLOAT_DTYPES
    ]
    if odd:
        raise ValueError(f"Weights must be float32, float16 or bfloat16; got {', '.join(sorted(odd))}.")


def _openai_state_dict(model: MosaicClipModel) -> dict[str, torch.Tensor]:
    """The model's weights in the OpenAI layout, through the inverse of OPENAI_KEY_TABLE."""
    exported, unused = map_state_dict(model.state_dict(), invert(OPENAI_KEY_TABLE))
    if unused:
        raise ValueError(f"These MosaicClipModel tensors have no place in the OpenAI layout: {summarise_keys(unused)}.")
    return exported


def _check_openai_forward(model: MosaicClipModel, state_dict: Mapping[str, torch.Tensor]) -> None:
    """`model` (float32, eval) against the reference forward on the OpenAI-layout `state_dict`."""
    config = model.config
    input_ids, pixel_values = check_inputs(config)
    reference = openai_clip_logits(
        state_dict,
        input_ids,
        pixel_values,
        text_heads=config.text_config.num_attention_heads,
        vision_heads=config.vision_config.num_attention_heads,
        hidden_act=config.text_config.hidden_act,
    )
    with torch.no_grad():
        require_close(reference, _logits(model, input_ids, pixel_values), "the OpenAI reference forward")


def clip_from_openai(
    state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike, config: MosaicClipConfig | None = None
) -> MosaicClipModel:
    """An OpenAI / open_clip ViT state dict (a dict of tensors or a .safetensors file) -> MosaicClipModel.

    `config=None` infers it from the shapes (`infer_openai_config`, quick_gelu). Only the keys in
    OPENAI_IGNORED_KEYS may be left unconverted. Two checks, either of which makes this raise:
    converting the model back through the inverse key table must reproduce every source tensor exactly,
    and its logits on `check_inputs` must match `openai_clip_logits` on the source within LOGIT_ATOL
    (float32). Returns the model in eval mode, in the source's dtype (float32 when the source mixes dtypes)."""
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        state_dict = load_openai_state_dict(state_dict_or_path)
    else:
        state_dict = dict(state_dict_or_path)
    _require_float_weights(state_dict)
    config = infer_openai_config(state_dict) if config is None else config
    require_openai_compatible(config)
    _require_consistent_metadata(state_dict, config)
    model = _build(MosaicClipModel, config, state_dict, OPENAI_KEY_TABLE, "OpenAI / open_clip", OPENAI_IGNORED_KEYS)

    weights = {key: tensor for key, tensor in state_dict.items() if key not in OPENAI_IGNORED_KEYS}
    round_trip = _openai_state_dict(model)
    changed = sorted(
        key
        for key in set(weights) | set(round_trip)
        if key not in weights
        or key not in round_trip
        or not torch.equal(round_trip[key], weights[key].to(device="cpu", dtype=round_trip[key].dtype))
    )
    if changed:
        raise ValueError(f"Round-trip check failed: converting back does not reproduce {summarise_keys(changed)}.")
    logger.info("round trip back to the OpenAI layout reproduces all %d source tensors exactly", len(weights))
    _check_openai_forward(model, state_dict)

    source_dtypes = {tensor.dtype for tensor in weights.values()}
    return model.to(source_dtypes.pop() if len(source_dtypes) == 1 else torch.float32)


def clip_to_openai(model: MosaicClipModel) -> dict[str, torch.Tensor]:
    """MosaicClipModel -> OpenAI / open_clip state dict (with `logit_bias` for SigLIP-loss models).

    Checked against `openai_clip_logits` on `check_inputs` (float32, LOGIT_ATOL); refuses configs the
    layout cannot express (`require_openai_compatible`). Tensors that need no transform share memory
    with the model, as `state_dict()` does; all are contiguous, ready for safetensors.torch.save_file."""
    require_openai_compatible(model.config)
    exported = _openai_state_dict(model)
    logger.info(
        "mapping %d MosaicClipModel tensors to %d OpenAI-layout tensors",
        len(model.state_dict()), len(exported),
    )
    with _float32_eval(model) as checked:
        _check_openai_forward(checked, exported)
    return exported
