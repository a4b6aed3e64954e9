"""`push` and `pull`: a saved folder to the Hub, and a Hub repository into a folder.

Every Hub call runs with a connect and a read timeout (`hub_timeouts`): huggingface_hub's own client waits forever
on calls that pass no timeout, so the limits are set on each request its client sends; a call that runs past one
is one error naming which.
"""

import argparse
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .inputs import folder_family, load_folder_strictly, load_processor
from .staging import require_writable_output, staged_folder

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the Hub
READ_TIMEOUT = 60.0  # seconds the Hub may stay silent on an open connection (also for each write)


def add_timeout_arguments(parser) -> None:
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up connecting to the Hub after this long (default {CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=READ_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when the Hub sends or takes nothing for this long (default {READ_TIMEOUT:g})",
    )


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
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the processor's files name classes only their own code provides (runs that code)",
    )
    add_timeout_arguments(parser)
    parser.set_defaults(handler=run_push)


def run_push(args: argparse.Namespace) -> None:
    push_folder(
        args.model,
        args.repo_id,
        revision=args.revision,
        private=args.private,
        trust_remote_code=args.trust_remote_code,
        timeouts=(args.connect_timeout, args.read_timeout),
    )


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    trust_remote_code: bool = False,
    timeouts: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
) -> str:
    """Push the saved model in `folder` (loaded strictly) and its processor, if it has one, to `repo_id` (a bare
    name goes under your account) with a model card; returns the full repository id."""
    from huggingface_hub import create_branch, create_repo

    family = folder_family(folder)
    model = load_folder_strictly(folder, family.config_class, family.model_class)
    has_processor = (folder / "processor_config.json").is_file()
    processor = load_processor(folder, family, trust_remote_code) if has_processor else None
    logger.info("pushing %s to %s%s", folder, repo_id, f" (branch {revision})" if revision else "")
    with hub_timeouts(*timeouts), hub_errors(f"pushing to {repo_id!r}", timeouts):
        repo_id = create_repo(repo_id, private=private, exist_ok=True, token=token).repo_id
        if revision is not None:  # the branch starts from main; main itself is not touched
            create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        model.push_to_hub(repo_id, revision=revision, token=token)
        if processor is not None:
            processor.push_to_hub(repo_id, revision=revision, token=token)
    logger.info("done: %s", repo_id)
    return repo_id


def _timeout_name(error: BaseException) -> str | None:
    """Which timeout ended a call ("connect", "read", "write", "pool"), read from `error` or what it wraps."""
    import httpx2  # huggingface_hub's HTTP client

    kinds = {httpx2.ConnectTimeout: "connect", httpx2.ReadTimeout: "read", httpx2.WriteTimeout: "write"}
    kinds[httpx2.PoolTimeout] = "pool"
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for kind, name in kinds.items():
            if isinstance(error, kind):
                return name
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def hub_timeouts(connect: float = CONNECT_TIMEOUT, read: float = READ_TIMEOUT) -> Iterator[None]:
    """Every request huggingface_hub's client sends in the block has at most `connect` seconds to connect and
    `read` seconds of silence while reading or writing (a request's own, shorter limits are kept)."""
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http as hub_http  # the default factory, wrapped below

    for value, flag in ((connect, "--connect-timeout"), (read, "--read-timeout")):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a positive number of seconds, got {value}.")
    limits = {"connect": connect, "read": read, "write": read, "pool": connect}

    def clamp(request) -> None:
        timeout = dict(request.extensions.get("timeout") or {})
        for name, limit in limits.items():
            given = timeout.get(name)
            timeout[name] = limit if given is None else min(given, limit)
        request.extensions = {**request.extensions, "timeout": timeout}

    def client_factory() -> httpx2.Client:
        client = hub_http.default_client_factory()
        hooks = client.event_hooks
        client.event_hooks = {**hooks, "request": [*hooks.get("request", []), clamp]}
        return client

    set_client_factory(client_factory)
    try:
        yield
    finally:
        set_client_factory(hub_http.default_client_factory)


@contextmanager
def hub_errors(action: str, timeouts: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT)) -> Iterator[None]:
    """huggingface_hub's errors as one clear ValueError (the user named something wrong) or OSError (the Hub); a
    call that ran past one of `timeouts` (connect, read; as given to `hub_timeouts`) says which."""
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
    except (EntryNotFoundError, HfHubHTTPError, httpx2.HTTPError, RuntimeError) as error:
        timeout = _timeout_name(error)
        if timeout is not None:
            kind = "connect" if timeout in ("connect", "pool") else "read"
            seconds = timeouts[0] if kind == "connect" else timeouts[1]
            raise OSError(
                f"{action}: the Hub at {constants.ENDPOINT} ran past the {timeout} timeout ({seconds:g} s); try "
                f"again later or raise --{kind}-timeout"
            ) from error
        if isinstance(error, LocalEntryNotFoundError):  # huggingface_hub's answer when it cannot connect
            raise OSError(f"{action}: the Hub at {constants.ENDPOINT} did not answer") from error
        if isinstance(error, EntryNotFoundError):
            raise ValueError(f"{action}: a file is missing on the Hub: {error}") from error
        if isinstance(error, RuntimeError):
            # huggingface_hub closes its shared HTTP client when a connection fails; downloads still running in
            # other threads then fail with this message
            if "client has been closed" not in str(error):
                raise
            raise OSError(f"{action} at {constants.ENDPOINT} broke off: the connection failed") from error
        raise OSError(f"{action} at {constants.ENDPOINT} broke off: {type(error).__name__}: {error}") from error
    except AttributeError as error:
        # the same closed client, met by a download thread retrying after a failed connection: huggingface_hub
        # (2.4) then calls a method of its client, now None, while handling the connection error
        if not isinstance(error.__context__, httpx2.HTTPError):
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
    add_timeout_arguments(parser)
    parser.set_defaults(handler=run_pull)


def run_pull(args: argparse.Namespace) -> None:
    from huggingface_hub import snapshot_download

    require_writable_output(args.output, args.overwrite)
    logger.info("downloading %s", args.repo_id)
    action = f"pulling {args.repo_id!r}" + (f" at {args.revision!r}" if args.revision else "")
    timeouts = (args.connect_timeout, args.read_timeout)
    with hub_timeouts(*timeouts), hub_errors(action, timeouts):
        with staged_folder(args.output, overwrite=args.overwrite) as staging:  # no partial folder if it breaks off
            snapshot_download(args.repo_id, revision=args.revision, local_dir=staging)
    logger.info("done: %s", args.output)
