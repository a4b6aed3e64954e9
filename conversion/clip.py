"""CLIP conversions between MosaicClipModel, transformers' CLIPModel and the OpenAI / open_clip state-dict layout.

Each conversion follows `state_dict_mapping` and runs on the engine in `streaming`: transformers' CLIPModel shares
our parameter names (no key table: a strict load and a logit check), the OpenAI layout has a key table
(`OPENAI_KEY_TABLE`) with the pure tensor functions below. From the OpenAI layout there is no source model to
run, so `openai_clip_logits` (a reference forward written with torch.nn.functional on the raw state dict) stands
in for it, and converting back must reproduce every source tensor exactly.

`CLIP_CONVERTERS` streams checkpoint files between every two layouts (what `mosaic-vlm convert` runs); the
`clip_from_*` / `clip_to_*` functions convert live models and state dicts in memory through the same key table,
plan, strict load and checks.
"""

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel

from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel

from .state_dict_mapping import KeyRule, TensorMap, invert, load_config_strictly, require_close, rule
from .streaming import (
    DEFAULT_MAX_SHARD_SIZE,
    Checkpoint,
    Converter,
    LazyCheckpoint,
    RoundedWeights,
    StateDictCheckpoint,
    as_checkpoint,
    convert_tensors,
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

CHECK_SEED = 0  # seed of the fixed check input (`check_inputs`)
CHECK_TEXTS, CHECK_IMAGES = 3, 2

# ---------------------------------------------------------------------------------------------------------
# Pure tensor functions of the OpenAI layout. Each takes the source tensors of one key-table row and returns
# its target tensors.


def transpose(projection: torch.Tensor) -> tuple[torch.Tensor]:
    """OpenAI applies projections as `x @ proj` with proj (width, dim); nn.Linear stores (dim, width)."""
    return (projection.t().contiguous(),)


def split_qkv(in_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """nn.MultiheadAttention's packed in_proj, rows [q; k; v]: weight (3w, w) -> 3 x (w, w), bias (3w,) -> 3 x (w,)."""
    if in_proj.shape[0] % 3:
        raise ValueError(
            f"A packed in_proj tensor needs a first dimension divisible by 3, got {tuple(in_proj.shape)}."
        )
    query, key, value = in_proj.chunk(3)
    return query, key, value


def join_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor]:
    """The inverse of `split_qkv`: q, k, v stacked along the output dimension."""
    return (torch.cat([query, key, value]),)


TRANSPOSE = TensorMap(transpose, transpose)
SPLIT_QKV = TensorMap(split_qkv, join_qkv)


# ---------------------------------------------------------------------------------------------------------
# Key tables.


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


def _logits(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    device = input_device(model)
    input_ids, pixel_values = inputs
    return model(input_ids=input_ids.to(device), pixel_values=pixel_values.to(device)).logits_per_image


def _verify(reference: nn.Module, converted: nn.Module, inputs, reference_name: str) -> None:
    """Every layer and the logits of `converted` against `reference` on the fixed `inputs`."""
    run = lambda model: _logits(model, inputs)  # noqa: E731
    verify_outputs(reference, converted, run, run, reference_name)


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
        logger.info(
            "legacy eos_token_id=2 (pooling at the highest id) mapped to eos_token_id=%d", text["eos_token_id"]
        )
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


def clip_from_transformers(model_or_path: CLIPModel | str | os.PathLike) -> MosaicClipModel:
    """transformers' CLIPModel (an instance, or a local save_pretrained folder) -> MosaicClipModel, in memory.

    The config is mapped field by field (see `config_from_transformers`), the weights load strictly by their
    shared names, and every layer and the logits of both models on `check_inputs` must agree within LOGIT_ATOL
    in float32, or this raises (a folder's model runs with its weights left on disk). Returns the model in eval
    mode, in the source's dtype and on its device."""
    source_config, checkpoint, source = source_of(model_or_path, CLIPConfig, CLIPModel)
    config = config_from_transformers(source_config)
    model = load_converted(MosaicClipModel, config, checkpoint, None, "transformers CLIPModel")
    with reference_model(source, CLIPModel, source_config) as reference:
        _verify(reference, model, check_inputs(config), "CLIPModel")
    return placed_like(model, source)


def clip_to_transformers(model: MosaicClipModel) -> CLIPModel:
    """MosaicClipModel -> transformers' CLIPModel, in memory, checked like `clip_from_transformers`.

    Refuses SigLIP-loss models (CLIPModel has no logit_bias). Patch dropout, a training-time option, has
    no CLIPModel counterpart and is dropped. Returns the model in eval mode, in the source's dtype and device."""
    exported = load_converted(
        CLIPModel,
        config_to_transformers(model.config),
        StateDictCheckpoint(model.state_dict()),
        None,
        "MosaicClipModel",
    )
    with reference_model(model) as reference:
        _verify(reference, exported, check_inputs(model.config), "MosaicClipModel")
    return placed_like(exported, model)


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
    weights = _Float32View(state_dict)  # read (and made float32) tensor by tensor, as the layers need them
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


class _Float32View(Mapping):
    """A state dict whose tensors are read (from a lazy checkpoint) and made float32 only when asked for."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self._state_dict = state_dict

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._state_dict[key].detach().float().cpu()

    def __iter__(self):
        return iter(self._state_dict)

    def __len__(self) -> int:
        return len(self._state_dict)


# keys only OpenAI's / open_clip's ResNet image towers (RN50, RN101, RN50x4, ...) have
_RESNET_KEYS = (
    "visual.layer1.0.conv1.weight",
    "visual.attnpool.positional_embedding",
    "visual.attnpool.c_proj.weight",
)


def require_vit_towers(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse a ResNet image tower by its keys, before anything else is read."""
    if any(key in state_dict for key in _RESNET_KEYS):
        raise ValueError(
            "This state dict has a ResNet image tower (RN50-style: visual.layer1..., visual.attnpool...); "
            "MosaicClipModel converts ViT towers only."
        )


def infer_openai_config(state_dict: Mapping[str, torch.Tensor], hidden_act: str = "quick_gelu") -> MosaicClipConfig:
    """The MosaicClipConfig of an OpenAI / open_clip ViT state dict, read from its shapes.

    Widths, layers, MLP sizes, patch size (conv1), image size (position grid), context length,
    vocabulary and projection size come from the tensors; heads = width // 64 as OpenAI builds them;
    EOS = vocab_size - 1 and BOS = vocab_size - 2 (OpenAI's <|endoftext|>, <|startoftext|>), pad 0
    (OpenAI's tokenize pads with 0); `logit_bias` present -> loss_type "siglip". The activation is not
    in the weights: quick_gelu for OpenAI's models, gelu for most open_clip models trained by LAION. Only the
    shapes are read (a lazy checkpoint's headers)."""
    require_vit_towers(state_dict)
    checkpoint = as_checkpoint(state_dict)

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        if key not in state_dict:
            raise ValueError(
                f"Cannot infer the config: the state dict has no {key!r}. Is it the OpenAI / open_clip ViT "
                "layout (keys like visual.conv1.weight, token_embedding.weight, without a 'module.' prefix)?"
            )
        if len(checkpoint.shape(key)) != ndim:
            raise ValueError(
                f"Cannot infer the config: {key} has shape {checkpoint.shape(key)}, expected {ndim} dims."
            )
        return checkpoint.shape(key)

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


def _openai_checkpoint(state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike) -> Checkpoint:
    """An OpenAI / open_clip state dict as a checkpoint: a mapping of tensors, or a .safetensors file read lazily.
    Pickled files (.pt, .bin) are refused: loading them can run arbitrary code."""
    if not isinstance(state_dict_or_path, (str, os.PathLike)):
        return as_checkpoint(state_dict_or_path)
    path = Path(state_dict_or_path)
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
    return LazyCheckpoint(path)


def _openai_config(checkpoint: Checkpoint, config: MosaicClipConfig | None, hidden_act: str = "quick_gelu"):
    """The config of an OpenAI-layout checkpoint (`config`, or inferred from its shapes), checked against it."""
    require_vit_towers(checkpoint)
    config = infer_openai_config(checkpoint, hidden_act) if config is None else config
    require_openai_compatible(config)
    _require_consistent_metadata(checkpoint, config)
    return config


def _openai_logits(state_dict: Mapping[str, torch.Tensor], config: MosaicClipConfig, inputs) -> torch.Tensor:
    return openai_clip_logits(
        state_dict, *inputs,
        text_heads=config.text_config.num_attention_heads, vision_heads=config.vision_config.num_attention_heads,
        hidden_act=config.text_config.hidden_act,
    )  # fmt: skip


OPENAI_REFERENCE = "the OpenAI reference forward"


def clip_from_openai(
    state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike, config: MosaicClipConfig | None = None
) -> MosaicClipModel:
    """An OpenAI / open_clip ViT state dict (a dict of tensors or a .safetensors file) -> MosaicClipModel, in memory.

    `config=None` infers it from the shapes (`infer_openai_config`, quick_gelu). Only the keys in
    OPENAI_IGNORED_KEYS may be left unconverted. Two checks, either of which makes this raise:
    converting every tensor back through the inverse key table must reproduce it exactly, and the model's
    logits on `check_inputs` must match `openai_clip_logits` on the source within LOGIT_ATOL (float32).
    Returns the model in eval mode, in the source's dtype (float32 when the source mixes dtypes)."""
    checkpoint = _openai_checkpoint(state_dict_or_path)
    config = _openai_config(checkpoint, config)
    model = load_converted(
        MosaicClipModel, config, checkpoint, OPENAI_KEY_TABLE, "OpenAI / open_clip",
        ignored=OPENAI_IGNORED_KEYS, round_trip=True,
    )  # fmt: skip
    inputs = check_inputs(config)
    require_close(_openai_logits(checkpoint, config, inputs), _logits(model, inputs), OPENAI_REFERENCE)
    return model.to(checkpoint.floating_dtype(ignored=OPENAI_IGNORED_KEYS))


def clip_to_openai(model: MosaicClipModel) -> dict[str, torch.Tensor]:
    """MosaicClipModel -> OpenAI / open_clip state dict (with `logit_bias` for SigLIP-loss models), in memory.

    Checked tensor by tensor back through the key table and against `openai_clip_logits` on `check_inputs`
    (float32, LOGIT_ATOL); refuses configs the layout cannot express (`require_openai_compatible`). Tensors
    that need no transform share memory with the model, as `state_dict()` does; all are contiguous, ready for
    safetensors.torch.save_file."""
    require_openai_compatible(model.config)
    table = invert(OPENAI_KEY_TABLE)
    exported = convert_tensors(
        StateDictCheckpoint(model.state_dict()), table, expected_shapes(MosaicClipModel, model.config, table),
        "MosaicClipModel", "the OpenAI layout", round_trip=True,
    )  # fmt: skip
    inputs = check_inputs(model.config)
    with reference_model(model) as reference:
        require_close(_logits(reference, inputs), _openai_logits(exported, model.config, inputs), "MosaicClipModel")
    return exported


# ---------------------------------------------------------------------------------------------------------
# Checkpoint files streamed between the layouts: `CLIP_CONVERTERS`, what `mosaic-vlm convert` runs.

LAYOUTS = ("transformers", "mosaic", "openai")
# CLIP image-processor settings that mean the same in transformers' CLIPImageProcessor and ours
_IMAGE_PROCESSOR_FIELDS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std", "do_convert_rgb",
)  # fmt: skip


def _model_of(layout: str, config: MosaicClipConfig):
    """(model class, its config) of a layout with a model class; None for the OpenAI state-dict layout."""
    if layout == "transformers":
        return CLIPModel, config_to_transformers(config)
    if layout == "mosaic":
        return MosaicClipModel, config
    return None


def _checkpoint_logits(layout: str, checkpoint: LazyCheckpoint, config, inputs, rounded_to=None) -> torch.Tensor:
    """`logits_per_image` of a checkpoint in `layout`, read as if stored in `rounded_to` when given: through its
    model class with the weights left on disk, or through `openai_clip_logits` for the OpenAI layout."""
    if layout == "openai":
        weights = checkpoint if rounded_to is None else RoundedWeights(checkpoint, rounded_to)
        return _openai_logits(weights, config, inputs)
    with reference_model(checkpoint, *_model_of(layout, config), rounded_to=rounded_to) as model:
        return _logits(model, inputs)


def _convert(
    source: Path,
    output: Path,
    *,
    source_layout: str,
    target_layout: str,
    activation: str | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> None:
    """Stream a CLIP checkpoint between the transformers and mosaic folder layouts and the OpenAI / open_clip
    state dict (a .safetensors file; written as OPENAI_WEIGHTS_NAME) into the folder `output`, one tensor at a
    time in the source dtype (or `dtype`). Checks, with the weights left on disk: every tensor through the key
    table and back, bit for bit; then every layer and the logits against the source model (the OpenAI layout:
    the logits against `openai_clip_logits`). From a transformers folder its tokenizer and image processor become
    our processor; OpenAI state dicts carry none. `activation`, for the OpenAI layout, which does not record it:
    one of OPENAI_ACTIVATIONS (quick_gelu when not given)."""
    processor = None
    if source_layout == "openai":
        if activation not in (None, *OPENAI_ACTIVATIONS):
            raise ValueError(f"activation= must be one of {sorted(OPENAI_ACTIVATIONS)}, got {activation!r}.")
        if activation is None:
            logger.warning(
                "The MLP activation cannot be read from OpenAI / open_clip weights: quick_gelu (OpenAI's) "
                "is assumed; most open_clip models trained by LAION need activation='gelu'."
            )
        checkpoint = _openai_checkpoint(source)
        config = _openai_config(checkpoint, None, activation or "quick_gelu")
    else:
        source_config = load_config_strictly(
            source, CLIPConfig if source_layout == "transformers" else MosaicClipConfig
        )
        config = config_from_transformers(source_config) if source_layout == "transformers" else source_config
        checkpoint = LazyCheckpoint(source)
        if source_layout == "transformers":
            processor = _processor_from_transformers_folder(source)
    if target_layout == "openai":
        require_openai_compatible(config)
    table = {"openai": OPENAI_KEY_TABLE}.get(source_layout) or (
        invert(OPENAI_KEY_TABLE) if target_layout == "openai" else None
    )
    target = _model_of(target_layout, config)
    if target is None:
        expected = expected_shapes(MosaicClipModel, config, table)
    else:
        expected = expected_shapes(*target)
        save_model_files(*target, output, dtype or checkpoint.floating_dtype())  # before the weights: it prunes files
        if processor is not None:
            processor.save_pretrained(output)
    files = stream_tensors(
        checkpoint,
        output,
        table,
        expected,
        f"{source_layout} CLIP ({source})",
        f"the {target_layout} layout",
        ignored=OPENAI_IGNORED_KEYS if source_layout == "openai" else (),
        dtype=dtype,
        max_shard_size=max_shard_size if target is not None else 2**62,
        round_trip=True,
    )
    if target is None:
        os.rename(files[0], output / OPENAI_WEIGHTS_NAME)
    converted = LazyCheckpoint(output / OPENAI_WEIGHTS_NAME if target is None else output)
    inputs, source_model = check_inputs(config), _model_of(source_layout, config)
    if source_model is not None and target is not None:
        with (
            reference_model(checkpoint, *source_model, rounded_to=dtype) as reference,
            reference_model(converted, *target) as converted_model,
        ):
            _verify(reference, converted_model, inputs, source_model[0].__name__)
    else:  # one side is the OpenAI layout: the logits, through its reference forward
        reference_name = OPENAI_REFERENCE if source_layout == "openai" else source_model[0].__name__
        reference_logits = _checkpoint_logits(source_layout, checkpoint, config, inputs, rounded_to=dtype)
        require_close(reference_logits, _checkpoint_logits(target_layout, converted, config, inputs), reference_name)
    if target is not None and processor is None:
        logger.warning(
            "No processor was written (%s carries none). Add one to the output folder before "
            "`mosaic-vlm zero-shot`: MosaicClipProcessor(image_processor=MosaicClipImageProcessor(...), "
            "tokenizer=<the tokenizer the model was trained with>).save_pretrained(folder).",
            source,
        )


CLIP_CONVERTERS: dict[tuple[str, str], Converter] = {
    (source, target): Converter("clip", source, target, ("activation",) if source == "openai" else (), _convert)
    for source in LAYOUTS
    for target in LAYOUTS
    if source != target
}
"""(source layout, target layout) -> its streaming converter: every two of LAYOUTS, both ways."""


def _processor_from_transformers_folder(folder: Path):
    """Our processor from the tokenizer and CLIP image-processor settings saved in a transformers folder, or
    None when the folder has no tokenizer."""
    from transformers import AutoTokenizer

    from mosaic_vlm.processing import MosaicClipImageProcessor, MosaicClipProcessor

    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"The tokenizer in {folder} cannot be read: {error}") from error
    settings = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (folder / name).is_file():
            saved = json.loads((folder / name).read_text())
            settings = saved.get("image_processor", saved)
            break
    image_processor = MosaicClipImageProcessor(
        **{key: settings[key] for key in _IMAGE_PROCESSOR_FIELDS if key in settings}
    )
    return MosaicClipProcessor(image_processor=image_processor, tokenizer=tokenizer)
