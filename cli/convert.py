"""`convert`: checkpoints between the transformers, OpenAI / open_clip and mosaic layouts."""

import argparse
import logging
from pathlib import Path

import safetensors.torch
from mosaic_vlm.conversion.clip import (
    OPENAI_WEIGHTS_NAME,
    clip_from_openai,
    clip_from_transformers,
    clip_to_openai,
    clip_to_transformers,
    infer_openai_config,
    load_openai_state_dict,
)
from mosaic_vlm.conversion.fuyu import FUYU_8B_NEWLINE_TOKEN_ID, fuyu_from_transformers, fuyu_to_transformers
from mosaic_vlm.conversion.state_dict_mapping import LOGIT_ATOL, load_folder_strictly
from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel, MosaicFuyuConfig, MosaicFuyuForCausalLM

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

Every conversion compares the logits of the converted model with the source on a fixed input (float32,
max abs difference of logits_per_image <= {LOGIT_ATOL:.0e}) and writes nothing if they differ. Output is
written to a staging folder beside --output and renamed into place at the end, so a failed or killed run
leaves no partial folder; --overwrite swaps the new folder in atomically and never replaces a file, the
input, or a folder holding the input. mosaic folders load strictly: another family's folder, or missing,
extra or mis-shaped weights, are refused.
OpenAI / open_clip weights are read from .safetensors only; convert pickles (.pt, .bin) first.
"""


def add_convert_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a CLIP checkpoint between the transformers, OpenAI / open_clip and mosaic layouts",
        description="Convert a CLIP checkpoint, check its logits against the source, and write it.",
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
        default=FUYU_8B_NEWLINE_TOKEN_ID,
        help="--model fuyu --from transformers: id of the image-newline token, which FuyuConfig does not record "
        f"(default {FUYU_8B_NEWLINE_TOKEN_ID}, adept/fuyu-8b's |NEWLINE|)",
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
    require_writable_output(args.output, args.overwrite, inputs=[args.input])

    if args.model == "fuyu":
        return run_convert_fuyu(args)
    logger.info("loading %s (%s)", args.input, args.source)
    if args.source == "mosaic":
        model = load_folder_strictly(args.input, MosaicClipConfig, MosaicClipModel)
    elif args.source == "transformers":
        model = clip_from_transformers(args.input)
    else:
        state_dict = load_openai_state_dict(args.input)
        config = infer_openai_config(state_dict, hidden_act=args.activation or "quick_gelu")
        model = clip_from_openai(state_dict, config)

    if args.target == "openai":
        converted = clip_to_openai(model)
    elif args.target == "transformers":
        converted = clip_to_transformers(model)
    else:
        converted = model

    logger.info("writing %s", args.output)
    with staged_folder(args.output) as folder:
        if args.target == "openai":
            safetensors.torch.save_file(converted, folder / OPENAI_WEIGHTS_NAME, metadata={"format": "pt"})
        else:
            converted.save_pretrained(folder)
    logger.info("done: %s", args.output)


def run_convert_fuyu(args: argparse.Namespace) -> None:
    """Fuyu: transformers FuyuForCausalLM folder <-> MosaicFuyuForCausalLM folder."""
    if (args.source, args.target) not in (("transformers", "mosaic"), ("mosaic", "transformers")):
        raise ValueError("--model fuyu converts --from transformers --to mosaic, or --from mosaic --to transformers.")
    logger.info("loading %s (%s)", args.input, args.source)
    if args.source == "transformers":
        converted = fuyu_from_transformers(args.input, image_newline_token_id=args.newline_token_id)
    else:
        converted = fuyu_to_transformers(load_folder_strictly(args.input, MosaicFuyuConfig, MosaicFuyuForCausalLM))
    logger.info("writing %s", args.output)
    with staged_folder(args.output) as folder:
        converted.save_pretrained(folder)
    logger.info("done: %s", args.output)
