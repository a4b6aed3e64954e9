"""The demo (the README's first command) in its shortened mode: every stage runs and reports."""

from mosaic_vlm.cli.main import main


def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for stage in ("== 1. CLIP-style", "== 2. Fuyu-style", "== 3. V* guided visual search", "== 4. Reload"):
        assert stage in out
    report = (tmp_path / "report.md").read_text()
    for section in (
        "## 1. CLIP-style zero-shot",
        "## 2. Fuyu-style question answering",
        "## 3. V* guided visual search",
        "## 4. Save and reload",
    ):
        assert section in report
    assert "| astronaut |" in report and "held-out digits" in report and "direct **" in report
    # reloading through the Auto classes leaves the outputs unchanged
    assert report.count("| 0.0e+00 |") == 2
    # V*'s answering model trains in two stages: reading digits, then everything from there
    assert (tmp_path / "vstar-digits" / "model.safetensors").exists() and (
        tmp_path / "vstar" / "model.safetensors"
    ).exists()
    pictures = sorted((tmp_path / "traces").glob("*.png"))
    assert pictures and f"![search](traces/{pictures[0].name})" in report
    assert f"report: {tmp_path / 'report.md'}" in out
