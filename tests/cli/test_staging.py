"""Writes never lose data: a command's output is staged beside the target and renamed into place. The kill tests
stop a writer at every step (os._exit in a forked child, as a SIGKILL would) and check that the path holds the old
or the new folder, that the user's other files are untouched, and that the next run cleans up. The others: a run
cleans only its own output's leftovers (never a neighbour's such as NAME.v2), a file that appears in the output
during a run is kept and so is the result, permissions follow the umask, and real concurrent processes on one
output give one result and one refusal."""

import os
import shutil
from pathlib import Path

import pytest

from mosaic_vlm.cli import staging
from mosaic_vlm.cli.staging import (
    LOCK_SUFFIX,
    RESULT_SUFFIX,
    RETIRED_SUFFIX,
    STAGING_SUFFIX,
    OutputBusyError,
    OutputChangedError,
    clean_stale_staging,
    output_lock,
    save_file,
    staged_folder,
)


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
        with staging.staged_folder(output, overwrite=True) as folder:
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


def locks(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(LOCK_SUFFIX)]


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
        with staged_folder(root / "out", overwrite=True) as folder:
            (folder / "newer.txt").write_text("newer")
        assert contents(root / "out") == ["newer.txt"] and leftovers(root) == [] and not locks(root)
        assert (root / "user-file.txt").read_text() == "mine"
    assert step > 5  # every step was tried: folder made, file written, exchange or renames, removal


def test_a_failed_block_leaves_the_old_folder_and_no_staging(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "out", overwrite=True) as folder:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("the conversion failed")
    assert contents(tmp_path / "out") == ["old.txt"] and leftovers(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_output_permissions_follow_the_umask(tmp_path, umask):
    """Whatever mode a writer gave its files (safetensors 0.8 writes 0o600), the output's follow the umask."""
    previous = os.umask(umask)
    try:
        with staged_folder(tmp_path / "out") as folder:
            (folder / "file.txt").write_text("x")
            os.close(os.open(folder / "private.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))
            (folder / "sub").mkdir(mode=0o700)
            (folder / "sub" / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(folder / "sub" / "run.sh", 0o700)
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    for name in ("file.txt", "private.safetensors"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "out" / "sub" / "run.sh").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_file_is_saved_whole_or_not_at_all(tmp_path):
    output = tmp_path / "search.png"
    output.write_bytes(b"old picture")

    def half_then_fail(path):
        path.write_bytes(b"half a pic")
        raise RuntimeError("the drawing failed")

    with pytest.raises(RuntimeError):
        save_file(output, half_then_fail, overwrite=True)
    assert output.read_bytes() == b"old picture" and leftovers(tmp_path) == []
    pid = os.fork()
    if pid == 0:  # killed (no cleanup) after writing half the new file
        save_file(output, lambda path: (path.write_bytes(b"half a pic"), os._exit(9)), overwrite=True)
    os.waitpid(pid, 0)
    assert output.read_bytes() == b"old picture" and len(leftovers(tmp_path)) == 1
    with pytest.raises(ValueError, match="exists; pass --overwrite"):  # an existing file needs overwrite=True
        save_file(output, lambda path: path.write_bytes(b"new picture"))
    save_file(output, lambda path: path.write_bytes(b"new picture"), overwrite=True)
    assert output.read_bytes() == b"new picture" and leftovers(tmp_path) == [] and not locks(tmp_path)


# ----------------------------------------------------------------------------- neighbours, late files, concurrent runs


@pytest.mark.parametrize(
    "output, neighbour",
    [("m", "m.v2"), ("m", "m.01234567"), ("m", "m-2"), ("m", "mm"), ("m.v2", "m"), ("m.01234567", "m")],
)
def test_cleanup_touches_only_its_own_outputs_leftovers(tmp_path, output, neighbour):
    """A run on `output` removes what runs on `output` left, never a neighbour's: not its live staging folder, not
    its retired folder (after a kill between the fallback's two renames, the only copy of its old output)."""
    theirs = {
        f".{neighbour}.01234567{STAGING_SUFFIX}": "live",  # a concurrent run's staging, tokens all digits
        f".{neighbour}.89abcdef.4242{RETIRED_SUFFIX}": "old",
    }
    for name, text in theirs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "file.txt").write_text(text)
    (tmp_path / f".{output}.fedcba98{STAGING_SUFFIX}").mkdir()  # its own, from a killed run
    with staged_folder(tmp_path / output) as folder:
        (folder / "new.txt").write_text("new")
    assert contents(tmp_path / output) == ["new.txt"]
    assert sorted(leftovers(tmp_path)) == sorted(theirs) and not locks(tmp_path)
    assert all((tmp_path / name / "file.txt").read_text() == text for name, text in theirs.items())


@pytest.mark.parametrize("start", ["absent", "empty", "old-overwritten"])
def test_a_file_that_appears_in_the_output_during_the_run_is_kept_and_so_is_the_result(tmp_path, start):
    output = tmp_path / "out"
    if start != "absent":
        output.mkdir()
    if start == "old-overwritten":
        (output / "old.txt").write_text("old")
    with (
        pytest.raises(OutputChangedError, match=r"changed while this run worked .* the new result is kept in"),
        staged_folder(output, overwrite=start == "old-overwritten") as folder,
    ):
        (folder / "model.txt").write_text("new")
        output.mkdir(exist_ok=True)
        (output / "notes.txt").write_text("mine")  # the user drops a file into the output meanwhile
    assert (output / "notes.txt").read_text() == "mine"
    kept = [path for path in tmp_path.iterdir() if RESULT_SUFFIX in path.name]
    assert len(kept) == 1 and contents(kept[0]) == ["model.txt"], kept
    assert leftovers(tmp_path) == [] and not locks(tmp_path)


def test_an_overwritten_output_replaced_by_another_folder_meanwhile_is_kept(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    with pytest.raises(OutputChangedError, match="another folder"), staged_folder(output, overwrite=True) as folder:
        (folder / "model.txt").write_text("new")
        os.rename(output, tmp_path / "moved")
        output.mkdir()
        (output / "old.txt").write_text("someone else's")  # the same names, another folder
    assert (output / "old.txt").read_text() == "someone else's" and contents(tmp_path / "moved") == ["old.txt"]


def test_a_file_that_appears_at_a_picture_path_is_kept(tmp_path):
    output = tmp_path / "search.png"

    def write_then_someone_writes_there(path):
        path.write_bytes(b"new picture")
        output.write_bytes(b"a user's picture")

    with pytest.raises(OutputChangedError, match="a file appeared"):
        save_file(output, write_then_someone_writes_there)
    assert output.read_bytes() == b"a user's picture"
    kept = [path for path in tmp_path.iterdir() if RESULT_SUFFIX in path.name]
    assert [path.read_bytes() for path in kept] == [b"new picture"] and kept[0].suffix == ".png"


def test_a_retired_folder_goes_only_where_its_replacement_is_not(tmp_path, caplog):
    """After a kill between the fallback's renames the old folder waits under its retired name, which holds the
    inode of the folder meant to replace it: it comes back when the path is empty, is kept when something else
    is there, and is deleted only when the path holds that replacement."""
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    retired = tmp_path / f".out.0123abcd.1{RETIRED_SUFFIX}"  # no folder here has inode 1
    os.rename(output, retired)
    output.mkdir()
    (output / "mine.txt").write_text("a folder the user made meanwhile")
    with caplog.at_level("WARNING"):
        clean_stale_staging(output)
    assert contents(retired) == ["old.txt"] and contents(output) == ["mine.txt"]
    assert "both are kept" in caplog.text
    shutil.rmtree(output)
    clean_stale_staging(output)
    assert contents(output) == ["old.txt"] and leftovers(tmp_path) == []


HOLD_THE_OUTPUT = """
import sys
from pathlib import Path
from mosaic_vlm.cli.staging import staged_folder
with staged_folder(Path(sys.argv[1])) as folder:
    (folder / "first.txt").write_text("first")
    print(folder, flush=True)
    sys.stdin.readline()  # works until told to finish
"""


def test_a_second_run_on_an_output_is_refused_while_the_first_works(tmp_path, clip_processor, capsys):
    """Two real processes: while one writes `out`, a command on `out` is refused in one line and leaves the
    first's staging folder alone; once the first is done, a second run needs --overwrite."""
    import subprocess
    import sys

    import torch
    from tiny import tiny_clip_config

    from mosaic_vlm.cli.main import main
    from mosaic_vlm.modeling import MosaicClipModel

    torch.manual_seed(0)
    MosaicClipModel(tiny_clip_config()).save_pretrained(tmp_path / "model")
    clip_processor.save_pretrained(tmp_path / "model")
    output = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_OUTPUT, str(output)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        staging = first.stdout.readline().strip()
        assert staging.endswith(STAGING_SUFFIX), staging
        argv = [
            "convert",
            "--from",
            "mosaic",
            "--to",
            "transformers",
            str(tmp_path / "model"),
            "--output",
            str(output),
        ]
        assert main(argv) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert f"is being written by another mosaic-vlm run (process {first.pid})" in error[-1], error
        with pytest.raises(OutputBusyError), output_lock(output):
            pass
        assert contents(Path(staging)) == ["first.txt"]  # the first run's work is untouched
        first.stdin.write("\n")
        first.stdin.close()
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
    assert contents(output) == ["first.txt"] and leftovers(tmp_path) == [] and not locks(tmp_path)
    assert main(argv) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert contents(output) == ["first.txt"]


@pytest.mark.slow
def test_two_commands_started_together_on_one_new_output_give_one_result(tmp_path, clip_processor):
    """Two real `convert` runs started at once on the same new output: one writes it, the other is refused in one
    line (the output is being written, or exists by the time it looks); never two results, one silently lost."""
    import subprocess
    import sys

    import torch
    from tiny import tiny_clip_config

    from mosaic_vlm.modeling import MosaicClipModel

    torch.manual_seed(0)
    MosaicClipModel(tiny_clip_config()).save_pretrained(tmp_path / "model")
    clip_processor.save_pretrained(tmp_path / "model")
    model, output = tmp_path / "model", tmp_path / "out"
    argv = ["convert", "--from", "mosaic", "--to", "transformers", str(model), "-o", str(output)]
    runs = [
        subprocess.Popen([sys.executable, "-m", "mosaic_vlm.cli", *argv], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = sorted((run.wait(timeout=300), run.stderr.read()) for run in runs)
    assert [code for code, _ in results] == [0, 2], results
    error = [line for line in results[1][1].splitlines() if " error: " in line]
    assert len(error) == 1 and any(
        reason in error[0]
        for reason in ("is being written by another mosaic-vlm run", "exists and is not empty", "changed while")
    ), error
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert sorted(os.listdir(tmp_path)) == ["model", "out"]
