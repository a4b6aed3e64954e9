"""The demo (the README's first command) in its shortened mode: every stage runs and reports."""

import json
import os
import subprocess
import sys
import time

import PIL.Image
import pytest
from processes import descendants, wait_until_gone

from mosaic_vlm.cli.main import main
from mosaic_vlm.cli.staging import STAGING_SUFFIX, clean_stale_staging, leftovers


def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    for stage in (
        "== 1. CLIP-style",
        "== 2. Fuyu-style",
        "== 3. V*'s two models finish",
        "== 4. V* guided visual search",
        "== 5. Save and reload",
    ):
        assert stage in out
    # the terminal shows bars and results; Trainer's log dicts and library warnings go to the stages' log files
    assert "{'loss'" not in out + captured.err and "{'train_runtime'" not in out + captured.err
    assert "Warning" not in captured.err
    assert "'train_runtime'" in (tmp_path / "logs" / "1-clip.log").read_text()
    for task in ("digits", "answer", "search"):  # V*'s background training logs there too, not in its model folders
        assert "'train_runtime'" in (tmp_path / "logs" / f"vstar-{task}.log").read_text(), task
    assert not list(tmp_path.glob("*/train.log"))
    report = (tmp_path / "report.md").read_text()
    for section in (
        "## 1. CLIP-style zero-shot",
        "## 2. Fuyu-style question answering",
        "## 3. V*'s two models",
        "## 4. V* guided visual search",
        "## 5. Save and reload",
        "## Where the time went",
    ):
        assert section in report
    assert "| astronaut |" in report and "held-out digits" in report and "direct **" in report
    # reloading through the Auto classes leaves the outputs unchanged
    assert report.count("| 0.0e+00 |") == 2
    # V*'s answering model trains in two stages: reading digits, then everything from there
    assert (tmp_path / "vstar-digits" / "model.safetensors").exists() and (
        tmp_path / "vstar" / "model.safetensors"
    ).exists()
    # the report shows: the accuracy chart beside the table, and every search picture
    assert '<img src="vstar-accuracy.png"' in report and PIL.Image.open(tmp_path / "vstar-accuracy.png").width > 100
    pictures = sorted((tmp_path / "traces").glob("*.png"))
    assert pictures and all(f"(traces/{picture.name})" in report for picture in pictures)
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["cpu_minutes"] >= timing["background_cpu_minutes"] > 0 and timing["wall_minutes"] > 0
    assert f"report: {tmp_path / 'report.md'}" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_demo_ends_its_background_training(tmp_path):
    """kill -9 of the demo once V*'s two trainings run: they end too, and the next run removes what it left."""
    command = [sys.executable, "-m", "mosaic_vlm.cli", "demo", "--quick", "--output-dir", str(tmp_path / "demo")]
    demo = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob(f".demo.*{STAGING_SUFFIX}/logs/vstar-search.log")):
            assert demo.poll() is None and time.monotonic() < deadline, "the demo did not start V*'s training"
            time.sleep(0.2)
        training = descendants(demo.pid)
        assert len(training) >= 2, training
        demo.kill()
        demo.wait()
        assert wait_until_gone(training) == [], "V*'s training outlived the demo"
    finally:
        demo.kill()
    assert len(leftovers(tmp_path / "demo")) == 1
    clean_stale_staging(tmp_path / "demo")  # what the next run does first
    assert os.listdir(tmp_path) in ([], [".demo.mosaic-vlm-lock"])
