"""Writing a command's output folder without ever losing a user's file.

Everything is written into a staging folder beside the target (`.NAME.<random>.mosaic-vlm-staging`), then put
in place by a rename. Replacing an existing folder (`--overwrite`) exchanges the two paths atomically
(Linux `renameat2(RENAME_EXCHANGE)`), so a kill at any moment leaves either the old or the new folder at the
path. Where the exchange is not available, the old folder is first renamed to `.NAME.<random>.mosaic-vlm-retired`
and the next run puts it back if the kill came between the two renames. A command deletes only folders it
made itself (those two suffixes); output folders get the permissions the umask gives.
"""

import ctypes
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

STAGING_SUFFIX = ".mosaic-vlm-staging"
RETIRED_SUFFIX = ".mosaic-vlm-retired"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def require_writable_output(
    output: Path, overwrite: bool, inputs: Sequence[Path] = (), flag: str = "--output"
) -> None:
    """Refuse, before any work, an output that is an existing file, a non-empty folder without `overwrite`, or one
    of `inputs` or a folder holding one of them (even with `overwrite`: replacing it would delete the input)."""
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise ValueError(f"{flag} {output} is an existing file (or link); pass a folder path.")
    target = output.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source == target or target in source.parents:
            raise ValueError(f"{flag} {output} holds the input {source}; write the output somewhere else.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{flag} {output} exists and is not empty; pass --overwrite to replace it.")


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step; False where the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, f"cannot exchange {first} and {second}: {os.strerror(code)}")


def _ours(output: Path, suffix: str) -> list[Path]:
    return sorted(output.parent.glob(f".{output.name}.*{suffix}"))


def clean_stale_staging(output: Path) -> None:
    """Undo what a killed earlier run left beside `output`: its staging folders are removed; a retired old
    folder goes back to `output` when nothing took its place, and is removed when the new one did."""
    for staging in _ours(output, STAGING_SUFFIX):
        shutil.rmtree(staging, ignore_errors=True)
    for retired in _ours(output, RETIRED_SUFFIX):
        if output.exists():
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(retired, output)


def _sibling(output: Path, suffix: str) -> Path:
    return output.parent / f".{output.name}.{secrets.token_hex(4)}{suffix}"


@contextmanager
def staged_folder(output: Path) -> Iterator[Path]:
    """A fresh folder beside `output` that takes `output`'s place only when the block succeeds (an existing
    `output` is replaced: check `require_writable_output` first); removed otherwise."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(output)
    staging = _sibling(output, STAGING_SUFFIX)
    os.mkdir(staging)  # mode 0o777 less the umask, as any folder the user makes
    try:
        yield staging
        if not output.exists():
            os.rename(staging, output)
        elif _exchange(staging, output):
            shutil.rmtree(staging)  # the old folder, now at the staging path
        else:
            retired = _sibling(output, RETIRED_SUFFIX)
            os.rename(output, retired)
            os.rename(staging, output)
            shutil.rmtree(retired)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


def save_file(output: Path, write: Callable[[Path], None]) -> None:
    """`write(path)` writes a file into a staging file beside `output`, which then replaces `output` by a rename:
    a kill at any moment leaves the old file or the new one, never part of one; the next call removes the
    staging file a killed one left."""
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in _ours(output, STAGING_SUFFIX):
        if stale.is_file():
            stale.unlink()
    staging = _sibling(output, STAGING_SUFFIX)
    try:
        write(staging)
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)  # gone already after a successful rename
