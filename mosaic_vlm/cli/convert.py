"""`convert`: checkpoints between the transformers, OpenAI / open_clip and mosaic layouts."""

import argparse
import logging
from pathlib import Path

from mosaic_vlm.conversion.clip import OPENAI_WEIGHTS_NAME
from mosaic_vlm.conversion.fuyu import FUYU_8B_NEWLINE_TOKEN_ID
from mosaic_vlm.conversion.state_dict_mapping import LOGIT_ATOL
from mosaic_vlm.conversion.streaming import DEFAULT_MAX_SHARD_SIZE, DTYPES, parse_size
from mosaic_vlm.families import FAMILIES, Family
from mosaic_vlm.processing.fuyu_special_tokens import IMAGE_NEWLINE_TOKEN

from .inputs import (
    check_processor_files,
    load_config_at_door,
    read_weight_headers,
    require_layers_fit_weights,
    require_weights_fit_config,
)
from .staging import require_writable_output, staged_folder

PROGRAM = "mosaic-vlm"
logger = logging.getLogger(__name__)

# the flags that carry a family's own converter options: flag -> (its argparse dest, the converters' option name)
OPTION_FLAGS = {
    "--activation": ("activation", "activation"),
    "--newline-token-id": ("newline_token_id", "image_newline_token_id"),
}


def supported_pairs(family: Family, separator: str = ", ") -> str:
    """The conversions of `family` as flags: '--from transformers --to mosaic, ...'."""
    return separator.join(f"--from {source} --to {target}" for source, target in sorted(family.converters))


def layout_arrows(family: Family) -> str:
    """The conversions of `family`, compact: 'mosaic -> openai|transformers, ...'."""
    targets: dict[str, list[str]] = {}
    for source, target in sorted(family.converters):
        targets.setdefault(source, []).append(target)
    return ", ".join(f"{source} -> {'|'.join(names)}" for source, names in targets.items())


def where_option_applies(option: str) -> str:
    """The conversions whose converter takes `option`, as flags: '--model clip --from openai (--to mosaic or ...)'."""
    places: dict[tuple[str, str], list[str]] = {}
    for name, family in sorted(FAMILIES.items()):
        for (source, target), converter in sorted(family.converters.items()):
            if option in converter.options:
                places.setdefault((name, source), []).append(target)
    return " or ".join(
        f"--model {name} --from {source} (--to {' or '.join(targets)})" for (name, source), targets in places.items()
    )


CONVERT_EXAMPLES = f"""\
examples:
  # transformers CLIPModel folder -> MosaicClipModel folder (save_pretrained layout)
  {PROGRAM} convert --from transformers --to mosaic path/to/clip-vit-base-patch32 --output clip-b32-mosaic

  # OpenAI / open_clip state dict -> transformers CLIPModel folder
  {PROGRAM} convert --from openai --to transformers ViT-B-32.safetensors --output clip-b32-hf

  # open_clip model trained with GELU (most LAION models) -> MosaicClipModel
  {PROGRAM} convert --from openai --to mosaic --activation gelu open_clip_model.safetensors --output laion-b32

  # a mosaic-vlm CLIP folder -> transformers CLIPModel folder
  {PROGRAM} convert --from mosaic --to transformers clip-b32-mosaic --output clip-b32-hf

  # transformers FuyuForCausalLM folder (e.g. adept/fuyu-8b) -> MosaicFuyuForCausalLM folder, and back
  {PROGRAM} convert --model fuyu --from transformers --to mosaic fuyu-8b --output fuyu-8b-mosaic
  {PROGRAM} convert --model fuyu --from mosaic --to transformers fuyu-8b-mosaic --output fuyu-8b-hf

  # transformers CLIPModel -> OpenAI / open_clip state dict (writes {OPENAI_WEIGHTS_NAME})
  {PROGRAM} convert --from transformers --to openai path/to/clip-folder --output clip-openai

Conversions stream: tensors are read one by one from safetensors (a file, a folder, or a sharded folder with
model.safetensors.index.json) and written in the input's dtype (or --dtype) into shards of --max-shard-size,
so memory never holds a whole model. Then both models run a fixed input with their weights left on disk:
every layer's output and the logits (float32, max abs difference <= {LOGIT_ATOL:.0e}) must match the source,
and Fuyu's greedy tokens too; otherwise nothing is written. Every key is checked first: unused, missing or
mis-shaped tensors, or a folder of another model type, are refused. From a transformers folder the tokenizer
and image processor become the mosaic processor; an OpenAI state dict carries none (the conversion says how
to add one). Output is written to a staging folder beside --output and renamed into place at the end, so a
failed or killed run leaves no partial folder; --overwrite swaps the new folder in atomically and never
replaces a file, the input, a folder holding the input or a folder inside it. Weights are read from
.safetensors only; convert pickles (.pt, .bin) first. An input folder is checked before any model is built: its
config and processor files (types, sizes, classes that need no remote code), a shard index that names only files
beside it, and layer counts and (for --from mosaic) every tensor's shape against the weights' headers.
"""


def add_convert_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a CLIP or Fuyu checkpoint between the transformers, OpenAI / open_clip and mosaic layouts",
        description="Convert a checkpoint as a stream, check every layer and the logits against the source, and "
        "write it.",
        epilog=CONVERT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "input",
        type=Path,
        help="--from transformers or mosaic: a save_pretrained folder (sharded or not); --from openai: a "
        ".safetensors state dict",
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=("transformers", "openai", "mosaic"),
        help="layout of the input (mosaic: a mosaic-vlm save_pretrained folder, to export it)",
    )
    conversions = "; ".join(f"{name}: {layout_arrows(family)}" for name, family in sorted(FAMILIES.items()))
    parser.add_argument(
        "--model",
        choices=sorted(FAMILIES),
        default="clip",
        help=f"model family (default clip) and its conversions: {conversions}",
    )
    parser.add_argument(
        "--newline-token-id",
        type=int,
        default=None,
        help="--model fuyu --from transformers: id of the image-newline token, which FuyuConfig does not record "
        f"(default: the source tokenizer's {IMAGE_NEWLINE_TOKEN}, else {FUYU_8B_NEWLINE_TOKEN_ID}, adept/fuyu-8b's)",
    )
    parser.add_argument(
        "--to",
        dest="target",
        required=True,
        choices=("mosaic", "transformers", "openai"),
        help="layout to write: mosaic and transformers write a save_pretrained folder, openai writes "
        f"{OPENAI_WEIGHTS_NAME} into the output folder",
    )
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--activation",
        choices=("quick_gelu", "gelu"),
        help="--from openai only: the MLP activation, which the weights do not record (default quick_gelu, as "
        "in OpenAI's models; most open_clip models trained by LAION use gelu)",
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="dtype of the written weights (default: the input's)"
    )
    parser.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"largest weight file of a written folder, e.g. 500MB or 5GB (default {DEFAULT_MAX_SHARD_SIZE}); larger "
        "folders are sharded with model.safetensors.index.json",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output if it is a non-empty folder (never a file, the input, or a folder holding the input)",
    )
    parser.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> None:
    if args.source == args.target:
        raise ValueError(f"--from and --to are both {args.source!r}; there is nothing to convert.")
    family = FAMILIES[args.model]
    if (args.source, args.target) not in family.converters:
        raise ValueError(
            f"--model {args.model} converts {supported_pairs(family, ' or ')}; "
            f"not --from {args.source} --to {args.target}."
        )
    converter = family.converters[(args.source, args.target)]
    options = {}
    for flag, (dest, option) in OPTION_FLAGS.items():
        if getattr(args, dest) is None:
            continue
        if option not in converter.options:
            raise ValueError(f"{flag} applies only to {where_option_applies(option)}.")
        options[option] = getattr(args, dest)
    parse_size(args.max_shard_size)
    require_writable_output(args.output, args.overwrite, inputs=[("input", args.input)])
    check_input(args.input, family, args.source)
    dtype = DTYPES[args.dtype] if args.dtype else None
    logger.info("converting %s (%s) to the %s layout", args.input, args.source, args.target)
    with staged_folder(args.output, overwrite=args.overwrite) as folder:
        converter(args.input, folder, dtype=dtype, max_shard_size=args.max_shard_size, **options)
    logger.info("done: %s", args.output)


def source_config_class(family: Family, layout: str):
    """The config class of a folder in `layout`: the family's own, or transformers' (CLIPConfig, FuyuConfig)."""
    if layout == "mosaic":
        return family.config_class
    from transformers import CLIPConfig, FuyuConfig

    return {"clip": CLIPConfig, "fuyu": FuyuConfig}[family.name]


def check_input(path: Path, family: Family, layout: str) -> None:
    """What the converter will read, checked at the door: a readable safetensors file (--from openai), or a folder
    whose config and processor files are sound and whose weights' headers fit its config."""
    if layout == "openai" or not path.is_dir():
        if path.exists():
            read_weight_headers(path, "input")
        return
    config = load_config_at_door(path, source_config_class(family, layout))
    if layout == "mosaic":
        require_weights_fit_config(path, config, family.model_class)
    else:  # the converter checks every key and shape against the model built from this config
        require_layers_fit_weights(config, read_weight_headers(path, "input"), path / "config.json")
    check_processor_files(path, family if layout == "mosaic" else None)
