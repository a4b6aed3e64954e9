"""The `mosaic-vlm` command line (also `python -m mosaic_vlm.conversion`).

Each subcommand is one function that adds its parser to the subparsers and sets `handler`, a function
of the parsed arguments; list it in COMMANDS. Handlers raise ValueError / OSError for bad input, which
`main` prints as one line and answers with exit code 2.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import safetensors.torch

from mosaic_vlm.modeling import MosaicClipModel, MosaicFuyuForCausalLM

from .clip import (
    LOGIT_ATOL,
    OPENAI_WEIGHTS_NAME,
    clip_from_openai,
    clip_from_transformers,
    clip_to_openai,
    clip_to_transformers,
    infer_openai_config,
    load_openai_state_dict,
)
from .commands import (
    add_ask_command,
    add_bench_command,
    add_demo_command,
    add_pull_command,
    add_push_command,
    add_train_command,
    add_vstar_command,
    add_zero_shot_command,
)
from .fuyu import FUYU_8B_NEWLINE_TOKEN_ID, fuyu_from_transformers, fuyu_to_transformers

PROGRAM = "mosaic-vlm"
USAGE_ERROR = 2
logger = logging.getLogger("mosaic_vlm.conversion")

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
written to a temporary folder beside --output and renamed at the end, so a failed run leaves no folder.
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
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    parser.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> None:
    if args.source == args.target:
        raise ValueError(f"--from and --to are both {args.source!r}; there is nothing to convert.")
    if args.activation is not None and args.source != "openai":
        raise ValueError("--activation applies only to --from openai; the transformers config records it.")
    require_free_output(args.output, args.overwrite)

    if args.model == "fuyu":
        return run_convert_fuyu(args)
    logger.info("loading %s (%s)", args.input, args.source)
    if args.source == "mosaic":
        model = MosaicClipModel.from_pretrained(load_mosaic_folder(args.input))
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


def load_mosaic_folder(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a mosaic-vlm save_pretrained folder (no config.json).")
    return path


def run_convert_fuyu(args: argparse.Namespace) -> None:
    """Fuyu: transformers FuyuForCausalLM folder <-> MosaicFuyuForCausalLM folder."""
    if (args.source, args.target) not in (("transformers", "mosaic"), ("mosaic", "transformers")):
        raise ValueError("--model fuyu converts --from transformers --to mosaic, or --from mosaic --to transformers.")
    logger.info("loading %s (%s)", args.input, args.source)
    if args.source == "transformers":
        converted = fuyu_from_transformers(args.input, image_newline_token_id=args.newline_token_id)
    else:
        converted = fuyu_to_transformers(MosaicFuyuForCausalLM.from_pretrained(load_mosaic_folder(args.input)))
    logger.info("writing %s", args.output)
    with staged_folder(args.output) as folder:
        converted.save_pretrained(folder)
    logger.info("done: %s", args.output)


def require_free_output(output: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, or a non-empty folder without --overwrite, before any work."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; pass a folder path.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"--output {output} exists and is not empty; pass --overwrite to replace it.")


@contextmanager
def staged_folder(output: Path) -> Iterator[Path]:
    """A fresh folder beside `output` that replaces `output` only when the block succeeds; removed otherwise."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        yield staging
        if output.exists():
            # rename the old folder away first: os.replace cannot replace a non-empty folder
            retired = staging.with_suffix(".old")
            os.replace(output, retired)
            try:
                os.replace(staging, output)
            except OSError:
                os.replace(retired, output)
                raise
            shutil.rmtree(retired)
        else:
            os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


@contextmanager
def progress_to_stderr() -> Iterator[None]:
    """Step lines of the converters (logger `mosaic_vlm.conversion`) on stderr while a command runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROGRAM}: %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


COMMANDS = (
    add_convert_command,
    add_zero_shot_command,
    add_ask_command,
    add_vstar_command,
    add_train_command,
    add_push_command,
    add_pull_command,
    add_bench_command,
    add_demo_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Tools for mosaic-vlm checkpoints. Run a command with --help for its options."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits with 2 itself on bad usage)."""
    args = build_parser().parse_args(argv)
    with progress_to_stderr():
        try:
            args.handler(args)
        except (ValueError, OSError) as error:
            message = " ".join(str(error).split())  # one line, whatever the exception text holds
            print(f"{PROGRAM} {args.command}: error: {message}", file=sys.stderr)
            return USAGE_ERROR
    return 0
