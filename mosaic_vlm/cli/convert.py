"""`convert`: checkpoints between the transformers, OpenAI / open_clip and mosaic layouts."""

import argparse
import logging
from pathlib import Path

from mosaic_vlm.conversion.clip import OPENAI_WEIGHTS_NAME, convert_clip_checkpoint
from mosaic_vlm.conversion.fuyu import FUYU_8B_NEWLINE_TOKEN_ID, convert_fuyu_checkpoint
from mosaic_vlm.conversion.state_dict_mapping import LOGIT_ATOL
from mosaic_vlm.conversion.streaming import DEFAULT_MAX_SHARD_SIZE, DTYPES, parse_size
from mosaic_vlm.processing.fuyu_special_tokens import IMAGE_NEWLINE_TOKEN

from .staging import require_writable_output, staged_folder

PROGRAM = "mosaic-vlm"
logger = logging.getLogger(__name__)

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
replaces a file, the input, or a folder holding the input. Weights are read from .safetensors only; convert
pickles (.pt, .bin) first.
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
        help="--from transformers: a CLIPModel save_pretrained folder; --from openai: a .safetensors state dict",
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=("transformers", "openai", "mosaic"),
        help="layout of the input (mosaic: a mosaic-vlm save_pretrained folder, to export it)",
    )
    parser.add_argument(
        "--model", choices=("clip", "fuyu"), default="clip", help="model family (fuyu: transformers <-> mosaic only)"
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
    if args.activation is not None and args.source != "openai":
        raise ValueError("--activation applies only to --from openai; the transformers config records it.")
    if args.model == "fuyu" and "openai" in (args.source, args.target):
        raise ValueError("--model fuyu converts --from transformers --to mosaic, or --from mosaic --to transformers.")
    if args.model == "clip" and args.newline_token_id is not None:
        raise ValueError("--newline-token-id applies only to --model fuyu.")
    parse_size(args.max_shard_size)
    require_writable_output(args.output, args.overwrite, inputs=[args.input])
    dtype = DTYPES[args.dtype] if args.dtype else None
    logger.info("converting %s (%s) to the %s layout", args.input, args.source, args.target)
    with staged_folder(args.output) as folder:
        if args.model == "fuyu":
            convert_fuyu_checkpoint(
                args.input,
                folder,
                to=args.target,
                image_newline_token_id=args.newline_token_id,
                dtype=dtype,
                max_shard_size=args.max_shard_size,
            )
        else:
            convert_clip_checkpoint(
                args.input,
                folder,
                source_layout=args.source,
                target_layout=args.target,
                activation=args.activation,
                dtype=dtype,
                max_shard_size=args.max_shard_size,
            )
    logger.info("done: %s", args.output)
