"""The mosaic-vlm command line end to end on tiny models: output, errors and exit codes."""

import subprocess
import sys

import PIL.Image
import pytest
import torch
from conftest import tiny_clip_config

from mosaic_vlm.conversion.cli import main
from mosaic_vlm.modeling import MosaicClipModel


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory, clip_processor):
    folder = tmp_path_factory.mktemp("cli_clip")
    torch.manual_seed(0)
    MosaicClipModel(tiny_clip_config()).save_pretrained(folder)
    clip_processor.save_pretrained(folder)
    return folder


def test_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "mosaic_vlm.conversion", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("convert", "zero-shot", "train", "push", "pull", "bench", "demo"):
        assert command in result.stdout


def test_zero_shot_prints_a_ranked_table(clip_folder, photos, tmp_path, capsys):
    image = tmp_path / "cat.png"
    PIL.Image.fromarray(photos["cat"]).save(image)
    assert main(["zero-shot", str(clip_folder), str(image), "--labels", "a photo of a cat", "a photo of a dog"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{image}:"
    scores = [float(line.split()[1]) for line in lines[1:]]
    assert len(scores) == 2 and scores[0] >= scores[1] and abs(sum(scores) - 1) < 2e-3


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["zero-shot", "/no/such/model", "x.png", "--labels", "a", "b"], "is not a saved model folder"),
        (["zero-shot", "{model}", "/no/such.png", "--labels", "a", "b"], "image file(s) not found"),
        (["zero-shot", "{model}", "/no/such.png", "--labels", "a"], "at least two candidate labels"),
        (["push", "/no/such/model", "me/repo"], "is not a saved model folder"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(clip_folder, capsys, arguments, message):
    arguments = [argument.replace("{model}", str(clip_folder)) for argument in arguments]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert message in error[-1] and error[-1].startswith("mosaic-vlm")


def test_train_runs_the_clip_recipe(tmp_path, capsys):
    code = main(["train", "clip", "--output_dir", str(tmp_path), "--max_steps", "3", "--save_strategy", "no",
                 "--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"])
    assert code == 0
    assert "held-out digits" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors").is_file()


def test_bench_quick_writes_json_markdown_and_chart(tmp_path, capsys):
    import json

    assert main(["bench", "--quick", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    cases = report["results"]["bench_clip"]["cases"]
    assert {case["case"].split(" (")[0] for case in cases} >= {"image encode fp32", "text encode fp32"}
    assert all(case["ratio"] > 0 for case in cases)
    table = (tmp_path / "report.md").read_text()
    assert "| benchmark | case | ours ms | reference ms | ratio |" in table and "torch threads" in table
    assert PIL.Image.open(tmp_path / "ratios.png").size[0] > 100
