"""The `mosaic-vlm` command line (also `python -m mosaic_vlm.cli`).

Each subcommand is one function that adds its parser to the subparsers and sets `handler`, a function
of the parsed arguments; list it in COMMANDS. Handlers raise ValueError / OSError for bad input, which
`main` prints as one line and answers with exit code 2.
"""

import argparse
import importlib.util
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .convert import PROGRAM, add_convert_command
from .hub import add_pull_command, add_push_command
from .inference import add_ask_command, add_vstar_command, add_zero_shot_command
from .jobs import add_bench_command, add_demo_command, add_train_command

USAGE_ERROR = 2
# What `pip install mosaic-vlm` leaves out and the `demo` extra brings: the recipes' data sets, the demo and the
# benchmarks need them (import name -> distribution)
NEEDS_DEMO_EXTRA = ("train", "bench", "demo")  # checked before they start anything
DEMO_EXTRA_MODULES = {
    "datasets": "datasets",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "matplotlib": "matplotlib",
}
logger = logging.getLogger("mosaic_vlm")


@contextmanager
def progress_to_stderr() -> Iterator[None]:
    """Step lines of the package's loggers (`mosaic_vlm.*`) on stderr while a command runs."""
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
    missing = [name for module, name in DEMO_EXTRA_MODULES.items() if importlib.util.find_spec(module) is None]
    if args.command in NEEDS_DEMO_EXTRA and missing:
        print(
            f"{PROGRAM} {args.command}: error: this command needs {', '.join(missing)}, which the core install "
            "leaves out; install the demo extra: pip install 'mosaic-vlm[demo]'",
            file=sys.stderr,
        )
        return USAGE_ERROR
    with progress_to_stderr():
        try:
            args.handler(args)
        except (ValueError, OSError) as error:
            message = " ".join(str(error).split())  # one line, whatever the exception text holds
            print(f"{PROGRAM} {args.command}: error: {message}", file=sys.stderr)
            return USAGE_ERROR
    return 0
