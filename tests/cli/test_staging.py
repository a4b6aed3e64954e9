"""Writes never lose data: a command's output is staged beside the target and renamed into place. Each test
kills a writer at every step (os._exit in a forked child, as a SIGKILL would) and checks that the path holds
the old or the new folder, that the user's other files are untouched, and that the next run cleans up."""

import os
import shutil

import pytest

from mosaic_vlm.cli import staging
from mosaic_vlm.cli.staging import RETIRED_SUFFIX, STAGING_SUFFIX, clean_stale_staging, save_file, staged_folder


def write_killed_at(output, kill_at: int, exchange: bool) -> bool:
    """In a forked child: replace `output` with a folder holding new.txt, dying (os._exit, no cleanup, as a
    SIGKILL) before its `kill_at`-th step: a folder made, a file written, an exchange, a rename or a removal.
    Returns whether the child finished."""
    pid = os.fork()
    if pid == 0:
        steps = 0

        def step(function):
            def killed_before(*args, **kwargs):
                nonlocal steps
                steps += 1
                if steps == kill_at:
                    os._exit(9)
                return function(*args, **kwargs)

            return killed_before

        staging.os.mkdir = step(os.mkdir)
        staging.os.rename = step(os.rename)
        staging.shutil.rmtree = step(shutil.rmtree)
        staging._exchange = step(staging._exchange if exchange else lambda first, second: False)
        with staging.staged_folder(output) as folder:
            step(lambda: None)()
            (folder / "new.txt").write_text("new")
            step(lambda: None)()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 9)
    return os.WEXITSTATUS(status) == 0


def contents(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def leftovers(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith((STAGING_SUFFIX, RETIRED_SUFFIX))]


@pytest.mark.parametrize("exchange", ["exchange", "two-renames"])
def test_a_kill_at_any_step_leaves_the_old_or_the_new_folder(tmp_path, exchange):
    step, finished = 0, False
    while not finished:
        step += 1
        root = tmp_path / f"kill{step}"
        (root / "out").mkdir(parents=True)
        (root / "out" / "old.txt").write_text("old")
        (root / "user-file.txt").write_text("mine")
        finished = write_killed_at(root / "out", step, exchange == "exchange")
        if (root / "out").exists():
            assert contents(root / "out") in (["old.txt"], ["new.txt"]), (step, contents(root / "out"))
        else:  # only between the two renames of the fallback: the old folder waits beside it, and comes back
            assert exchange == "two-renames" and len(leftovers(root)) >= 1, step
            clean_stale_staging(root / "out")
            assert contents(root / "out") == ["old.txt"]
        # the next run cleans what the killed one left and writes the new folder
        with staged_folder(root / "out") as folder:
            (folder / "newer.txt").write_text("newer")
        assert contents(root / "out") == ["newer.txt"] and leftovers(root) == []
        assert (root / "user-file.txt").read_text() == "mine"
    assert step > 5  # every step was tried: folder made, file written, exchange or renames, removal


def test_a_failed_block_leaves_the_old_folder_and_no_staging(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "out") as folder:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("the conversion failed")
    assert contents(tmp_path / "out") == ["old.txt"] and leftovers(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_output_permissions_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with staged_folder(tmp_path / "out") as folder:
            (folder / "file.txt").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "out" / "file.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_file_is_saved_whole_or_not_at_all(tmp_path):
    output = tmp_path / "search.png"
    output.write_bytes(b"old picture")

    def half_then_fail(path):
        path.write_bytes(b"half a pic")
        raise RuntimeError("the drawing failed")

    with pytest.raises(RuntimeError):
        save_file(output, half_then_fail)
    assert output.read_bytes() == b"old picture" and leftovers(tmp_path) == []
    pid = os.fork()
    if pid == 0:  # killed (no cleanup) after writing half the new file
        save_file(output, lambda path: (path.write_bytes(b"half a pic"), os._exit(9)))
    os.waitpid(pid, 0)
    assert output.read_bytes() == b"old picture" and len(leftovers(tmp_path)) == 1
    save_file(output, lambda path: path.write_bytes(b"new picture"))
    assert output.read_bytes() == b"new picture" and leftovers(tmp_path) == []
