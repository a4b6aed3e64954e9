"""The `mosaic-vlm` command line (also `python -m mosaic_vlm.cli`).

Each subcommand is one function that adds its parser to the subparsers and sets `handler`, a function
of the parsed arguments; list it in COMMANDS. Handlers raise ValueError / OSError for bad input, which
`main` prints as one line and answers with exit code 2; so is a weights file that cannot be written (a full
disk, a file-size limit: the limit's signal is ignored, so that the write fails instead of killing the process).
Flags are taken whole (never abbreviated); one that names a file or folder, at most once.
"""

import argparse
import errno
import importlib.util
import logging
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from .convert import PROGRAM, add_convert_command
from .hub import add_pull_command, add_push_command
from .inference import add_ask_command, add_zero_shot_command
from .jobs import add_bench_command, add_demo_command, add_train_command
from .vstar import add_vstar_command

USAGE_ERROR = 2
# What `pip install mosaic-vlm` leaves out and the `demo` extra brings: the recipes' data sets, the demo and the
# benchmarks need them (import name -> distribution); a command that does sets `needs_demo_extra`, checked before it
# starts anything
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


class StrictArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser (and so each subcommand's) that takes no abbreviated flag (`--out` is not `--output`)
    and refuses a flag naming a file or folder (`type=Path`, or a type marked `names_path`) given twice
    (`--output a --output b`) instead of keeping the last."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        tokens = sys.argv[1:] if args is None else list(args)
        flags = {
            flag: action
            for action in self._actions
            if action.type is Path or getattr(action.type, "names_path", False)
            for flag in action.option_strings
        }
        counts = Counter()
        for token in tokens[: tokens.index("--")] if "--" in tokens else tokens:
            action = flags.get(token.partition("=")[0]) if token.startswith("-") else None
            if action is not None:
                counts[action.dest] += 1
                if counts[action.dest] == 2:
                    self.error(f"argument {'/'.join(action.option_strings)}: given more than once; name one path")
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = StrictArgumentParser(
        prog=PROGRAM, description="Tools for mosaic-vlm checkpoints. Run a command with --help for its options."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


# where a write fails for want of room, the error's text holds one of these (safetensors reports Rust's io errors)
_NO_ROOM = {
    errno.ENOSPC: ("No space left on device", "StorageFull", "code: 28,"),
    errno.EFBIG: ("File too large", "FileTooLarge", "code: 27,"),
}


def write_error_message(error: Exception) -> str | None:
    """One line for a write that failed for want of room (disk full, file-size limit), else None."""
    text = str(error)
    for code, marks in _NO_ROOM.items():
        if getattr(error, "errno", None) == code or any(mark in text for mark in marks):
            reason = "the disk is full" if code == errno.ENOSPC else "a file grew past the file-size limit (ulimit -f)"
            return f"writing failed: {reason} ({errno.errorcode[code]}); nothing was put in place. {text}"
    return None


@contextmanager
def write_failures_as_errors() -> Iterator[None]:
    """A file-size limit fails the write (EFBIG) instead of killing the process with SIGXFSZ."""
    previous = None
    if hasattr(signal, "SIGXFSZ"):
        try:
            previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except ValueError:  # not the main thread: signals are left as they are
            previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGXFSZ, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits with 2 itself on bad usage)."""
    args = build_parser().parse_args(argv)
    missing = [name for module, name in DEMO_EXTRA_MODULES.items() if importlib.util.find_spec(module) is None]
    if getattr(args, "needs_demo_extra", False) and missing:
        print(
            f"{PROGRAM} {args.command}: error: this command needs {', '.join(missing)}, which the core install "
            "leaves out; install the demo extra: pip install 'mosaic-vlm[demo]'",
            file=sys.stderr,
        )
        return USAGE_ERROR
    with progress_to_stderr(), write_failures_as_errors():
        try:
            args.handler(args)
        except (ValueError, OSError, SafetensorError) as error:
            message = write_error_message(error) or str(error)
            if isinstance(error, SafetensorError) and message == str(error):
                message = f"a weights file cannot be read or written: {message}"
            message = " ".join(message.split())  # one line, whatever the exception text holds
            command = " ".join(filter(None, (args.command, getattr(args, "suite", None))))  # bench vstar
            print(f"{PROGRAM} {command}: error: {message}", file=sys.stderr)
            return USAGE_ERROR
    return 0
