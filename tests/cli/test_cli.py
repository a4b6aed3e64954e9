"""The mosaic-vlm command line end to end on tiny models: output, errors and exit codes."""

import os
import subprocess
import sys

import PIL.Image
import pytest
import torch
from tiny import tiny_clip_config

from mosaic_vlm.cli.main import main
from mosaic_vlm.modeling import MosaicClipModel
from mosaic_vlm.processing import mosaic_processing_common


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory, clip_processor):
    folder = tmp_path_factory.mktemp("cli_clip")
    torch.manual_seed(0)
    MosaicClipModel(tiny_clip_config()).save_pretrained(folder)
    clip_processor.save_pretrained(folder)
    return folder


def test_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "mosaic_vlm.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("convert", "zero-shot", "ask", "vstar", "train", "push", "pull", "bench", "demo"):
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
        (["ask", "{model}", "/no/such.png", "what?"], "Image file '/no/such.png' does not exist"),
        (["ask", "{model}", "{image}", "what?"], "ask needs a Fuyu-style decoder model folder; "),
        (["vstar", "{model}", "{image}", "what?"], "vstar needs an image-text-to-text model folder"),
        (["vstar", "{model}", "{image}", "what?", "--output", "search.jpg"], "--output must name a .png file"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(clip_folder, photo_file, capsys, arguments, message):
    arguments = [
        argument.replace("{model}", str(clip_folder)).replace("{image}", str(photo_file)) for argument in arguments
    ]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert message in error[-1] and error[-1].startswith("mosaic-vlm")


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory, photos):
    path = tmp_path_factory.mktemp("photo") / "coffee.png"
    PIL.Image.fromarray(photos["coffee"]).save(path)
    return path


@pytest.fixture(scope="module")
def fuyu_folder(tmp_path_factory):
    from tiny import FUYU_TEXTS, FUYU_TOKENS, tiny_fuyu_model

    from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(
        FUYU_TEXTS * 5, vocab_size=120, model_max_length=256, extra_special_tokens=FUYU_TOKENS
    )
    processor = MosaicFuyuProcessor(
        MosaicFuyuImageProcessor(patch_size=16, size={"height": 64, "width": 64}), tokenizer
    )
    folder = tmp_path_factory.mktemp("cli_fuyu")
    model = tiny_fuyu_model(processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def test_ask_prints_the_answer_with_boxes_in_image_pixels(fuyu_folder, photo_file, capsys):
    folder, model, processor = fuyu_folder
    image = PIL.Image.open(photo_file)
    assert (
        main(
            [
                "ask",
                str(folder),
                str(photo_file),
                "what digit is this?",
                "--box",
                "10",
                "20",
                "100",
                "300",
                "--max-new-tokens",
                "5",
            ]
        )
        == 0
    )
    inputs = processor(images=image, text="what digit is this? <box>10, 20, 100, 300</box>")
    expected = processor.post_process_image_text_to_text(
        model.generate(**inputs, max_new_tokens=5, do_sample=False), image_sizes=[(image.height, image.width)]
    )[0]
    assert capsys.readouterr().out.strip() == expected
    assert main(["ask", str(folder), str(photo_file), "describe it", "--box", "10", "20", "900", "300"]) == 2
    assert "lies outside the 400x600" in capsys.readouterr().err


def test_vstar_prints_the_answer_and_saves_the_search_picture(fuyu_folder, photo_file, tmp_path, capsys):
    folder, model, processor = fuyu_folder
    output = tmp_path / "pictures" / "search.png"
    argv = ["vstar", str(folder), str(photo_file), "describe it", "--targets", "cat", "--min-size", "100"]
    argv += ["--max-calls", "12", "--output", str(output), "--max-new-tokens", "3"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("answer: ")
    assert lines[1].startswith("target 'cat': ") and "scorer calls" in lines[1]
    calls = int(lines[1].split(" scorer calls")[0].split()[-1])
    assert 1 <= calls <= 12
    assert lines[2] == f"search picture: {output}"
    # the photo with a caption above and a legend below (the crops the answerer saw, if any, to its right)
    picture, photo = PIL.Image.open(output), PIL.Image.open(photo_file)
    assert picture.width >= photo.width and picture.height > photo.height
    # the picture is there now: writing it again needs --overwrite
    assert main(argv) == 2
    assert "search.png exists; pass --overwrite to replace it" in capsys.readouterr().err
    argv.append("--overwrite")
    # the same folder as a separate search model: the same search, scored through --search-model
    assert main([*argv, "--search-model", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == lines[:2]
    # --max-cell reaches the scorer: the printed search is the API's search with that scorer
    from mosaic_vlm.vstar import FuyuScorer, SearchConfig, visual_search

    assert main([*argv, "--max-cell", "50"]) == 0
    image = PIL.Image.open(photo_file).convert("RGB")
    result = visual_search(
        image, "cat", FuyuScorer(model, processor, max_cell=50), SearchConfig(min_size=100, max_calls=12)
    )
    where = f"box {result.box}" if result.found else "not found"
    assert (
        capsys.readouterr().out.splitlines()[1]
        == f"target 'cat': {where}, score {result.score:.2f}, {result.num_calls} scorer calls"
    )
    assert main(["vstar", str(folder), str(photo_file), "what?", "--search-model", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.slow
def test_train_runs_the_clip_recipe(tmp_path, capsys):
    code = main(
        [
            "train",
            "clip",
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "3",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]
    )
    assert code == 0
    assert "held-out digits" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.slow
def test_bench_quick_writes_json_markdown_and_chart(tmp_path, capsys, monkeypatch):
    import json
    import tempfile

    # the temp folder, empty, here and in every process the bench starts: V*'s models train under --output
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    report_folder = tmp_path / "report"
    assert main(["bench", "--quick", "--output", str(report_folder)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["report", "tmp"] and os.listdir(tmp_path / "tmp") == []
    assert (report_folder / "vstar-models" / "vstar-search" / "model.safetensors").is_file()
    report = json.loads((report_folder / "report.json").read_text())
    cases = report["results"]["bench_clip"]["cases"]
    assert {case["case"].split(" (")[0] for case in cases} >= {"image encode fp32", "text encode fp32"}
    assert all(case["ratio"] > 0 for case in cases)
    table = (report_folder / "report.md").read_text()
    assert "| benchmark | case | ours | reference | unit | ratio |" in table and "torch threads" in table
    assert set(report["results"]) == {
        "bench_clip", "bench_fuyu_processing", "bench_fuyu_model", "bench_fast_inference", "bench_vstar",
        "bench_conversion_memory",
    }  # fmt: skip
    fast = report["results"]["bench_fast_inference"]["cases"]
    routes = ["eager", "static+compile", "int8 weight-only", "int8 dynamic"]
    routes = [f"Fuyu decode {route} (ms/token)" for route in routes] + [
        "CLIP image encode eager",
        "CLIP image encode compile",
    ]
    assert sorted(case["case"] for case in fast) == sorted(f"{route} vs transformers eager" for route in routes)
    assert all(case["ours_ms"] > 0 and case["ratio"] > 0 for case in fast)
    memory = report["results"]["bench_conversion_memory"]["cases"]
    # the streaming converters only: the removed in-memory ones' figures are a record in the README
    assert len(memory) == 4 and all(case["ours"] > 0 and case["reference"] is None for case in memory)
    assert "| bench_vstar | scorer calls per search (V* vs exhaustive scan) |" in table
    assert PIL.Image.open(report_folder / "ratios.png").size[0] > 100


# ------------------------------------------------------------------------------------- your files are never lost


def user_tree(root):
    """Every file under `root` with its bytes: what a user owns there."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(
    "output, overwrite, message",
    [
        ("{input}", True, "is the input"),  # the input itself, even with --overwrite
        ("{parent}", True, "holds the input"),  # a folder holding the input
        ("{file}", True, "is an existing file"),
        ("{busy}", False, "exists and is not empty; pass --overwrite"),
    ],
    ids=["input", "parent-of-input", "file", "non-empty"],
)
def test_convert_refuses_outputs_that_would_lose_files(clip_folder, tmp_path, capsys, output, overwrite, message):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(clip_folder, work / "model")
    (work / "notes.txt").write_text("mine")
    (work / "busy").mkdir()
    (work / "busy" / "keep.txt").write_text("mine too")
    before = user_tree(tmp_path)
    output = output.format(input=work / "model", parent=work, file=work / "notes.txt", busy=work / "busy")
    argv = ["convert", "--from", "mosaic", "--to", "transformers", str(work / "model"), "--output", output]
    assert main([*argv, *(["--overwrite"] if overwrite else [])]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert user_tree(tmp_path) == before


def test_convert_reads_mosaic_folders_strictly(clip_folder, fuyu_folder, tmp_path, capsys):
    import safetensors.torch

    argv = ["convert", "--from", "mosaic", "--to", "transformers"]
    assert main([*argv, str(fuyu_folder[0]), "--output", str(tmp_path / "a")]) == 2
    assert "holds a 'mosaic_fuyu' model; expected a 'mosaic_clip' one" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json",):
        (broken / name).write_bytes((clip_folder / name).read_bytes())
    weights = safetensors.torch.load_file(clip_folder / "model.safetensors")
    weights["extra.weight"] = weights.pop("logit_scale")
    safetensors.torch.save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    assert main([*argv, str(broken), "--output", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err  # the weights' headers are checked against the config at the door
    assert "do not fit its config.json (MosaicClipModel)" in error and "no place for: extra.weight" in error
    assert "missing tensors: logit_scale" in error
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "template, message",
    [("a photo", "must hold '{}' once"), ("a {x}", "is not a template"), ("{} and {}", "is not a template")],
)
def test_zero_shot_templates_need_one_label_field(clip_folder, photo_file, capsys, template, message):
    argv = ["zero-shot", str(clip_folder), str(photo_file), "--labels", "cat", "dog", "--template", template]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_huge_image_is_one_clear_error(clip_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mosaic_processing_common, "MAX_IMAGE_PIXELS", 1000)  # the pixel limit, made small
    image = tmp_path / "big.png"
    PIL.Image.new("RGB", (100, 100)).save(image)
    assert main(["zero-shot", str(clip_folder), str(image), "--labels", "cat", "dog"]) == 2
    assert "has 10000 pixels, more than MAX_IMAGE_PIXELS = 1000" in capsys.readouterr().err


def modes(root) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_mode & 0o777 for path in sorted(root.rglob("*"))}


def test_outputs_follow_the_umask(clip_folder, tmp_path):
    """Every file of a converted folder is 0644 under umask 022 (safetensors 0.8 writes its files 0600)."""
    previous = os.umask(0o022)
    try:
        argv = ["convert", "--from", "mosaic", "--to", "transformers", str(clip_folder), "-o", str(tmp_path / "a")]
        assert main(argv) == 0
    finally:
        os.umask(previous)
    found = modes(tmp_path / "a")
    assert "model.safetensors" in found
    assert all(mode == (0o755 if (tmp_path / "a" / name).is_dir() else 0o644) for name, mode in found.items()), found
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755


# writes the folder at argv[1] converted into argv[2] under a file-size limit of argv[3] bytes
CONVERT_UNDER_A_LIMIT = """
import resource, sys
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from mosaic_vlm.cli.main import main
raise SystemExit(main(["convert", "--from", "mosaic", "--to", "transformers", sys.argv[1], "--output", sys.argv[2]]))
"""


def test_a_file_size_limit_while_writing_weights_is_one_line_and_leaves_nothing(clip_folder, tmp_path):
    weights = (clip_folder / "model.safetensors").stat().st_size
    others = max(path.stat().st_size for path in clip_folder.iterdir() if path.name != "model.safetensors")
    limit = (weights + others) // 2
    assert others < limit < weights  # the config and tokenizer fit under the limit, the weights do not
    result = subprocess.run(
        [sys.executable, "-c", CONVERT_UNDER_A_LIMIT, str(clip_folder), str(tmp_path / "out"), str(limit)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if " error: " in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "a file grew past the file-size limit (ulimit -f) (EFBIG); nothing was put in place" in errors[0]
    assert "Traceback" not in result.stderr and os.listdir(tmp_path) == []


def test_a_full_disk_while_writing_weights_is_one_line_and_leaves_nothing(clip_folder, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def disk_full(*args, **kwargs):  # what safetensors raises when the disk fills up under it
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    argv = ["convert", "--from", "mosaic", "--to", "transformers", str(clip_folder), "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if " error: " in line]
    assert len(errors) == 1 and "writing failed: the disk is full (ENOSPC); nothing was put in place" in errors[0]
    assert os.listdir(tmp_path) == []


def test_the_conversion_memory_benchmark_works_under_the_report_folder(tmp_path, monkeypatch):
    """bench writes nothing outside --output: the report gives the conversion memory benchmark a scratch folder
    under the report's, where it makes its checkpoints and which it removes when it ends (checkpoints and
    measurements stubbed here: only the places count)."""
    import tempfile

    from mosaic_vlm.benchmarks import conversion_memory, report

    used = []

    def make_checkpoints(folder, quick):
        used.append(folder)
        for family in ("fuyu", "clip"):
            (folder / family).mkdir()
        return {"fuyu": folder / "fuyu", "clip": folder / "clip"}

    def no_temp_folder(*args, **kwargs):
        raise AssertionError("the benchmark used the system's temp folder")

    class OneByte:
        def __init__(self, path):
            self.nbytes = 1

    monkeypatch.setattr(conversion_memory, "make_checkpoints", make_checkpoints)
    monkeypatch.setattr(conversion_memory, "measure", lambda *args: used.append(args[2]) or {"rss": 1, "anon": 1})
    monkeypatch.setattr("mosaic_vlm.conversion.streaming.LazyCheckpoint", OneByte)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_temp_folder)
    _, full, quick = report.BENCHMARKS["bench_conversion_memory"]
    entry = conversion_memory.run_conversion_memory_benchmark
    monkeypatch.setattr(report, "BENCHMARKS", {"bench_conversion_memory": (entry, full, quick)})
    report.write_report(tmp_path / "report", quick=True)
    scratch = tmp_path / "report" / report.SCRATCH_FOLDER
    assert len(used) == 3 and all(scratch in [path, *path.parents] for path in used), used
    assert not scratch.exists() and os.listdir(tmp_path) == ["report"]
    assert sorted(os.listdir(tmp_path / "report")) == ["ratios.png", "report.json", "report.md"]
