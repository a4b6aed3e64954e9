"""`push` and `pull`: a saved folder to the Hub, and a Hub repository into a folder."""

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .inputs import folder_family, load_folder_strictly
from .staging import require_writable_output, staged_folder

logger = logging.getLogger(__name__)


def add_push_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="push a saved model folder to the Hub",
        description="Push a saved model (and its processor, if the folder has one) to the Hub with a model card.",
        epilog="example:\n  mosaic-vlm push out/clip-digits you/clip-digits --revision main",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="a saved model folder")
    parser.add_argument("repo_id", help="Hub repository, e.g. you/clip-digits")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.set_defaults(handler=run_push)


def run_push(args: argparse.Namespace) -> None:
    from huggingface_hub import create_branch, create_repo
    from transformers import AutoProcessor

    family = folder_family(args.model)
    model = load_folder_strictly(args.model, family.config_class, family.model_class)
    logger.info("pushing %s to %s%s", args.model, args.repo_id, f" (branch {args.revision})" if args.revision else "")
    with hub_errors(f"pushing to {args.repo_id!r}"):
        create_repo(args.repo_id, private=args.private, exist_ok=True)
        if args.revision is not None:  # the branch starts from main; main itself is not touched
            create_branch(args.repo_id, branch=args.revision, exist_ok=True)
        model.push_to_hub(args.repo_id, revision=args.revision)
        if (args.model / "processor_config.json").is_file():
            AutoProcessor.from_pretrained(args.model).push_to_hub(args.repo_id, revision=args.revision)
    logger.info("done: %s", args.repo_id)


@contextmanager
def hub_errors(action: str) -> Iterator[None]:
    """huggingface_hub's errors as one clear ValueError (the user named something wrong) or OSError (the Hub)."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except RepositoryNotFoundError as error:
        raise ValueError(f"{action}: the repository is not on the Hub at {constants.ENDPOINT}") from error
    except RevisionNotFoundError as error:
        raise ValueError(f"{action}: the revision is not in the repository") from error
    except LocalEntryNotFoundError as error:  # huggingface_hub's answer when it cannot connect
        raise OSError(f"{action}: the Hub at {constants.ENDPOINT} did not answer") from error
    except EntryNotFoundError as error:
        raise ValueError(f"{action}: a file is missing on the Hub: {error}") from error
    except (HfHubHTTPError, httpx2.HTTPError) as error:
        raise OSError(f"{action} at {constants.ENDPOINT} broke off: {type(error).__name__}: {error}") from error
    except RuntimeError as error:
        # huggingface_hub closes its shared HTTP client when a connection fails; downloads still running in other
        # threads then fail with this message
        if "client has been closed" not in str(error):
            raise
        raise OSError(f"{action} at {constants.ENDPOINT} broke off: the connection failed") from error


def add_pull_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="download a model repository from the Hub into a folder",
        description="Download every file of a Hub model repository (at a branch, tag or commit) into a folder.",
        epilog="example:\n  mosaic-vlm pull you/clip-digits --output clip-digits --revision v1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("repo_id", help="Hub repository, e.g. you/clip-digits")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder to download into (created)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it is a non-empty folder")
    parser.add_argument("--revision", default=None, help="branch, tag or commit sha (default: main)")
    parser.set_defaults(handler=run_pull)


def run_pull(args: argparse.Namespace) -> None:
    from huggingface_hub import snapshot_download

    require_writable_output(args.output, args.overwrite)
    logger.info("downloading %s", args.repo_id)
    with hub_errors(f"pulling {args.repo_id!r}" + (f" at {args.revision!r}" if args.revision else "")):
        with staged_folder(args.output) as staging:  # no partial folder if the download breaks off
            snapshot_download(args.repo_id, revision=args.revision, local_dir=staging)
    logger.info("done: %s", args.output)
