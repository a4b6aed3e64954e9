"""Writing a command's output without ever losing a user's file.

Everything is written into a staging folder beside the target (`.NAME.<8 hex>.mosaic-vlm-staging`), then put in
place by a rename, under a lock per output (`.NAME.mosaic-vlm-lock`, held with flock while the command runs and
removed at its end): a second run on the same output is refused with one line instead of racing the first.

At the end the target is looked at again. An output that was absent or empty takes the staging folder by one
`rename`, which the kernel refuses when the path now holds a file or a non-empty folder: then nothing is replaced,
and the result is kept beside it (`NAME.<8 hex>.mosaic-vlm-result`). Replacing an existing folder (`--overwrite`)
replaces only the folder that was there at the start (same folder, no new names in it) and exchanges the two paths
atomically (Linux `renameat2(RENAME_EXCHANGE)`), so a kill at any moment leaves either the old or the new folder at
the path. Where the exchange is not available, the old folder is first renamed to
`.NAME.<8 hex>.<inode of the new folder>.mosaic-vlm-retired`; the next run puts it back if the kill came between
the two renames, and deletes it only when the folder at the path is the new one (its inode is in the name).

A run removes only what it made: names that match its output's exact pattern (a neighbour `NAME.v2` has its own,
which never matches `NAME`'s), and only while it holds the output's lock. Outputs get the permissions the umask
gives.
"""

import ctypes
import dataclasses
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

STAGING_SUFFIX = ".mosaic-vlm-staging"
RETIRED_SUFFIX = ".mosaic-vlm-retired"
LOCK_SUFFIX = ".mosaic-vlm-lock"
RESULT_SUFFIX = ".mosaic-vlm-result"
_RENAME_NOREPLACE = 1  # linux/fs.h
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
logger = logging.getLogger(__name__)

# an input of a command: what names it (a flag, "image", "model") and its path
Input = tuple[str, str | os.PathLike]


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def require_apart(output: Path, inputs: Sequence[Input], flag: str = "--output") -> None:
    """Refuse an output that is one of `inputs`, holds one of them, or lies inside one of them (replacing it, or
    swapping a folder into it, would change or delete the input), however the paths are spelt."""
    target = _resolved(output)
    for name, source in inputs:
        path = _resolved(source)
        if path == target:
            raise ValueError(f"{flag} {output} is the input {source} ({name}); write the output somewhere else.")
        if target in path.parents:
            raise ValueError(f"{flag} {output} holds the input {source} ({name}); write the output somewhere else.")
        if path in target.parents:
            raise ValueError(f"{flag} {output} lies inside the input {source} ({name}); write the output elsewhere.")


def require_named(output: Path, flag: str = "--output") -> None:
    """Refuse an output path without a name of its own (``, `.`, `..`, the root): replacing it would replace the
    working folder or one above it."""
    name = Path(output).name
    if name in ("", ".", "..") or _resolved(output) == _resolved(output).parent:
        raise ValueError(f"{flag} {str(output)!r} names no folder of its own; pass the path of the output.")


def require_writable_output(
    output: Path, overwrite: bool, inputs: Sequence[Input | str | os.PathLike] = (), flag: str = "--output"
) -> None:
    """Refuse, before any work, an output folder that is an existing file, a non-empty folder without `overwrite`,
    or one of `inputs`, a folder holding one or a folder inside one (even with `overwrite`). `inputs` are
    (name, path) pairs or bare paths."""
    output = Path(output)
    require_named(output, flag)
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise ValueError(f"{flag} {output} is an existing file (or link); pass a folder path.")
    require_apart(output, [item if isinstance(item, tuple) else ("input", item) for item in inputs], flag)
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{flag} {output} exists and is not empty; pass --overwrite to replace it.")


def require_writable_file(output: Path, overwrite: bool, inputs: Sequence[Input] = (), flag: str = "--output") -> None:
    """Refuse, before any work, an output file that is a folder or a link, an existing file without `overwrite`,
    or one of `inputs` (or inside one of them), even with `overwrite`."""
    output = Path(output)
    require_named(output, flag)
    if output.is_symlink() or output.is_dir():
        raise ValueError(f"{flag} {output} is an existing folder (or link); pass a file path.")
    require_apart(output, inputs, flag)
    if output.exists() and not overwrite:
        raise ValueError(f"{flag} {output} exists; pass --overwrite to replace it.")


# ---------------------------------------------------------------------------------------------------- names


def _token() -> str:
    return secrets.token_hex(4)


def _staging_path(output: Path, token: str) -> Path:
    return output.parent / f".{output.name}.{token}{STAGING_SUFFIX}"


def _retired_path(output: Path, token: str, inode: int) -> Path:
    return output.parent / f".{output.name}.{token}.{inode}{RETIRED_SUFFIX}"


def _result_path(output: Path, token: str) -> Path:
    """Where a result is kept when the output changed under the run: visible, beside the output."""
    return output.with_name(f"{output.stem}.{token}{RESULT_SUFFIX}{output.suffix}")


def _lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}{LOCK_SUFFIX}"


@dataclasses.dataclass(frozen=True)
class Leftover:
    path: Path
    retired_inode: int | None  # the inode of the folder that replaced a retired one; None for a staging path


def leftovers(output: Path) -> list[Leftover]:
    """What runs on `output` left beside it, matched by the exact names they make: `.NAME.<8 hex>` and the
    staging suffix, or `.NAME.<8 hex>.<digits>` and the retired suffix; never another output's (`NAME.v2`)."""
    pattern = re.compile(
        rf"\.{re.escape(output.name)}\.[0-9a-f]{{8}}"
        rf"(?:{re.escape(STAGING_SUFFIX)}|\.(?P<inode>[0-9]+){re.escape(RETIRED_SUFFIX)})"
    )
    try:
        names = os.listdir(output.parent)
    except FileNotFoundError:
        return []
    found = []
    for name in sorted(names):
        match = pattern.fullmatch(name)
        if match:
            inode = match.group("inode")
            found.append(Leftover(output.parent / name, int(inode) if inode else None))
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_staging(output: Path) -> None:
    """Undo what a killed earlier run on `output` left beside it (call it holding `output_lock`): its staging
    folders and files are removed; a retired old folder goes back to `output` when nothing took its place, is
    removed when the run's new folder did (same inode), and is otherwise left where it is, with a warning."""
    for leftover in leftovers(output):
        if leftover.retired_inode is None:
            _remove(leftover.path)
        elif not os.path.lexists(output):
            os.rename(leftover.path, output)
        elif os.lstat(output).st_ino == leftover.retired_inode:
            shutil.rmtree(leftover.path, ignore_errors=True)
        else:
            logger.warning(
                "%s holds the folder that was at %s before a killed run, and something else is there now: "
                "both are kept; move or delete it yourself.",
                leftover.path,
                output,
            )


# ---------------------------------------------------------------------------------------------------- the lock


class OutputBusyError(OSError):
    """Another run holds the output's lock."""


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold `output`'s lock (flock on `.NAME.mosaic-vlm-lock` beside it, which says the holder's process id) for
    the block; refuse with OutputBusyError when another process holds it. The lock file is removed at the end
    (a kill leaves it, unlocked: the next run takes it over)."""
    path = _lock_path(output)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            os.close(descriptor)
            by = f" (process {holder})" if holder.isdigit() else ""
            raise OutputBusyError(
                f"{output} is being written by another mosaic-vlm run{by}; wait for it to end, or write elsewhere."
            ) from None
        try:  # the holder before us may have removed the file once done: the lock must be on the file at the path
            same = os.path.samestat(os.fstat(descriptor), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        Path(path).unlink(missing_ok=True)  # while still held: a waiting run then retries on a fresh file
        os.close(descriptor)


# ---------------------------------------------------------------------------------------------------- renames


def _renameat2(first: Path, second: Path, flags: int) -> bool:
    """renameat2(2); False where the system or the file system does not offer it (or these flags)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), flags)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step; False where the system or file system cannot."""
    return _renameat2(first, second, _RENAME_EXCHANGE)


def _rename_no_replace(source: Path, target: Path) -> None:
    """Rename a file to `target` unless `target` exists (FileExistsError then), in one atomic step."""
    if _renameat2(source, target, _RENAME_NOREPLACE):
        return
    os.link(source, target)  # fails with FileExistsError where something is at target; never replaces it
    os.unlink(source)


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """What a folder at the output was when the run started: which folder, and its names."""

    device: int
    inode: int
    names: frozenset[str]


def _snapshot(output: Path, flag: str) -> _Snapshot | None:
    if not os.path.lexists(output):
        return None
    if output.is_symlink() or not output.is_dir():
        raise ValueError(f"{flag} {output} is an existing file (or link); pass a folder path.")
    status = os.stat(output)
    return _Snapshot(status.st_dev, status.st_ino, frozenset(os.listdir(output)))


class OutputChangedError(ValueError):
    """The output changed while the run worked: it was left alone and the result kept beside it."""


def _keep_result(staging: Path, output: Path, token: str, what: str) -> None:
    kept = _result_path(output, token)
    os.rename(staging, kept)
    raise OutputChangedError(
        f"{output} changed while this run worked ({what}): it is left as it is, and the new result is kept in "
        f"{kept}; move it where you want it."
    )


def _put_in_place(staging: Path, output: Path, token: str, before: _Snapshot | None) -> None:
    """Move the finished staging folder to `output`: onto an absent or empty folder by one rename (which fails on
    anything else), over the folder `before` by an exchange (only if it is still that folder, with no new names);
    otherwise keep the result beside `output` and raise OutputChangedError."""
    if before is None or not before.names:
        try:
            os.rename(staging, output)  # the kernel replaces only an absent path or an empty folder
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EBUSY):
                raise
            found = "something appeared at it" if before is None else "files appeared in it"
            _keep_result(staging, output, token, found)
        return
    now = None if not os.path.lexists(output) else os.lstat(output)
    if now is None:  # removed meanwhile: put the new folder there, unless something appears first
        _put_in_place(staging, output, token, None)
        return
    if output.is_symlink() or (now.st_dev, now.st_ino) != (before.device, before.inode):
        _keep_result(staging, output, token, "another folder or file took its place")
    added = sorted(set(os.listdir(output)) - before.names)
    if added:
        _keep_result(staging, output, token, f"new files in it: {', '.join(added[:5])}")
    if _exchange(staging, output):
        shutil.rmtree(staging)  # the old folder, now at the staging path
        return
    retired = _retired_path(output, token, os.stat(staging).st_ino)
    os.rename(output, retired)
    os.rename(staging, output)
    shutil.rmtree(retired)


def follow_umask(root: Path, folder_mode: int) -> None:
    """Give every folder under `root` (itself included) `folder_mode` (0o777 less the umask) and every file 0o666
    less the umask (0o777 for one that was executable): some writers make their files private (safetensors 0.8
    writes 0o600), and an output gets the permissions the umask gives, like any file the user makes."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, folder_mode)
        else:
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, (0o777 if executable else 0o666) & folder_mode)


def _umask_folder_mode(folder: Path) -> int:
    """The mode a folder made with mkdir(0o777) got: 0o777 less the umask (read without changing the umask)."""
    return os.stat(folder).st_mode & 0o777


@contextmanager
def staged_folder(output: Path, *, overwrite: bool = False, flag: str = "--output") -> Iterator[Path]:
    """A fresh folder beside `output` that takes `output`'s place only when the block succeeds, and is removed
    otherwise. Holds `output`'s lock for the block (OutputBusyError if another run holds it). Without `overwrite`
    the output must be absent or an empty folder, at the start and at the end; with it, the folder there at the
    start is replaced, provided it is still that folder and nothing was added to it. When the output changed under
    the run, nothing is replaced: the result is kept beside it and OutputChangedError says where."""
    output = Path(output)
    require_named(output, flag)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output):
        clean_stale_staging(output)
        before = _snapshot(output, flag)
        if before is not None and before.names and not overwrite:
            raise ValueError(f"{flag} {output} exists and is not empty; pass --overwrite to replace it.")
        token = _token()
        staging = _staging_path(output, token)
        os.mkdir(staging)  # mode 0o777 less the umask, as any folder the user makes
        folder_mode = _umask_folder_mode(staging)
        try:
            yield staging
            follow_umask(staging, folder_mode)
            _put_in_place(staging, output, token, before)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


def save_file(output: Path, write: Callable[[Path], None], *, overwrite: bool = False, flag: str = "--output") -> None:
    """`write(path)` writes a file into a staging file beside `output`, which then takes `output`'s place by a
    rename: a kill at any moment leaves the old file or the new one, never part of one; the next call removes the
    staging file a killed one left. Holds `output`'s lock meanwhile. Without `overwrite` an existing file is
    refused, at the start and at the end (a file that appeared meanwhile is kept, and the new one beside it)."""
    output = Path(output)
    require_named(output, flag)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output):
        clean_stale_staging(output)
        if output.is_symlink() or output.is_dir():
            raise ValueError(f"{flag} {output} is an existing folder (or link); pass a file path.")
        if output.exists() and not overwrite:
            raise ValueError(f"{flag} {output} exists; pass --overwrite to replace it.")
        token = _token()
        staging = _staging_path(output, token)
        try:
            write(staging)
            if overwrite:
                os.replace(staging, output)
            else:
                try:
                    _rename_no_replace(staging, output)
                except FileExistsError:
                    _keep_result(staging, output, token, "a file appeared at it")
        finally:
            staging.unlink(missing_ok=True)  # gone already after a successful rename
