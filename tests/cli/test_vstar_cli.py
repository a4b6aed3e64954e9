"""`mosaic-vlm vstar` and `mosaic-vlm bench vstar` with any answering model folder (ours, transformers' LLaVA) and
any scorer folder (fuyu: ours; clip: ours, transformers' CLIP; detector: transformers' OWL-ViT), each a tiny random
model saved with save_pretrained; the printed search and table are the Python API's on the same models."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save_file
from tiny import tiny_clip_config, tiny_llava, tiny_owl_detector, tiny_vstar_fuyu, write_vstar_bench
from transformers import CLIPProcessor, OwlViTProcessor, pipeline
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mosaic_vlm.cli.main import main
from mosaic_vlm.conversion import clip_to_transformers
from mosaic_vlm.modeling import MosaicClipModel
from mosaic_vlm.vstar import (
    ClipScorer,
    DetectorScorer,
    FuyuScorer,
    SearchConfig,
    evaluate_vstar_bench,
    load_vstar_bench,
    searched_targets,
    visual_search,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer, clip_processor):
    """Saved folders: fuyu (ours), llava (transformers'), clip (transformers' CLIPModel), mosaic-clip (ours), owlvit
    (transformers' detector); a photo and a V*Bench release folder."""
    root = tmp_path_factory.mktemp("vstar_cli")
    fuyu, fuyu_processor = tiny_vstar_fuyu()
    llava, llava_processor, _, _ = tiny_llava()
    torch.manual_seed(0)
    ours_clip = MosaicClipModel(tiny_clip_config())
    pil = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    owlvit, owl_pil = tiny_owl_detector("owlvit", tokenizer)
    folders = {
        "fuyu": (fuyu, fuyu_processor),
        "llava": (llava, llava_processor),
        "clip": (clip_to_transformers(ours_clip), CLIPProcessor(image_processor=pil, tokenizer=tokenizer)),
        "mosaic-clip": (ours_clip, clip_processor),
        "owlvit": (owlvit, OwlViTProcessor(image_processor=owl_pil, tokenizer=tokenizer)),
    }
    for name, (model, processor) in folders.items():
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(root / "photo.png")
    write_vstar_bench(root / "bench")
    return root


def loaded(folder, auto_class: str):
    import transformers

    import mosaic_vlm.modeling  # noqa: F401  (registers ours)

    model = getattr(transformers, auto_class).from_pretrained(folder).eval()
    return model, transformers.AutoProcessor.from_pretrained(folder)


def saved_detector(folder) -> DetectorScorer:
    """A DetectorScorer on the zero-shot detection pipeline of a saved detector folder."""
    model, processor = loaded(folder, "AutoModelForZeroShotObjectDetection")
    return DetectorScorer(
        pipeline(
            "zero-shot-object-detection",
            model=model,
            tokenizer=processor.tokenizer,
            image_processor=processor.image_processor,
        )
    )


def printed_search(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("target "))


def expected_line(result, target: str) -> str:
    where = f"box {result.box}" if result.found else "not found"
    return f"target {target!r}: {where}, score {result.score:.2f}, {result.num_calls} scorer calls"


def test_llava_answers_and_a_transformers_clip_scores_the_search(folders, tmp_path, capsys):
    output = tmp_path / "search.png"
    argv = ["vstar", "--model", str(folders / "llava"), str(folders / "photo.png"), "what colour is the cup?"]
    argv += ["--targets", "cup", "--scorer", f"clip:{folders / 'clip'}", "--min-size", "100", "--max-calls", "10"]
    argv += ["--max-new-tokens", "3", "--output", str(output)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("answer: ") and f"search picture: {output}" in lines
    image = PIL.Image.open(folders / "photo.png").convert("RGB")
    scorer = ClipScorer(*loaded(folders / "clip", "AutoModel"))
    result = visual_search(image, "cup", scorer, SearchConfig(min_size=100, max_calls=10))
    assert printed_search(lines) == expected_line(result, "cup")
    assert PIL.Image.open(output).height > image.height  # the picture: the photo with caption and legend


def test_an_owlvit_detector_scores_the_search_for_our_fuyu(folders, tmp_path, capsys):
    argv = ["vstar", str(folders / "fuyu"), str(folders / "photo.png"), "what colour is the cup?", "--targets", "cup"]
    argv += ["--scorer", f"detector:{folders / 'owlvit'}", "--min-size", "100", "--max-calls", "8"]
    argv += ["--max-new-tokens", "2", "--output", str(tmp_path / "search.png")]
    assert main(argv) == 0
    image = PIL.Image.open(folders / "photo.png").convert("RGB")
    result = visual_search(image, "cup", saved_detector(folders / "owlvit"), SearchConfig(min_size=100, max_calls=8))
    assert printed_search(capsys.readouterr().out.splitlines()) == expected_line(result, "cup")


def test_our_clip_and_our_fuyu_as_scorers(folders, tmp_path, capsys):
    base = ["vstar", str(folders / "fuyu"), str(folders / "photo.png"), "what?", "--targets", "cat"]
    base += ["--min-size", "100", "--max-calls", "6", "--max-new-tokens", "2"]
    image = PIL.Image.open(folders / "photo.png").convert("RGB")
    search = SearchConfig(min_size=100, max_calls=6)
    assert main([*base, "--scorer", f"clip:{folders / 'mosaic-clip'}", "--output", str(tmp_path / "a.png")]) == 0
    result = visual_search(image, "cat", ClipScorer(*loaded(folders / "mosaic-clip", "AutoModel")), search)
    assert printed_search(capsys.readouterr().out.splitlines()) == expected_line(result, "cat")
    # fuyu:FOLDER, --search-model FOLDER and no scorer at all (ours scores its own search): the same search
    fuyu = FuyuScorer(*loaded(folders / "fuyu", "AutoModelForCausalLM"))
    expected = expected_line(visual_search(image, "cat", fuyu, search), "cat")
    for index, extra in enumerate(
        (["--scorer", f"fuyu:{folders / 'fuyu'}"], ["--search-model", str(folders / "fuyu")], [])
    ):
        assert main([*base, *extra, "--output", str(tmp_path / f"f{index}.png")]) == 0
        assert printed_search(capsys.readouterr().out.splitlines()) == expected


@pytest.mark.parametrize(
    "arguments, message",
    [
        ("vstar {w}/llava {w}/photo.png q --targets cup", "needs --scorer KIND:PATH for a 'llava' answering model"),
        ("vstar {w}/photo.png q --targets cup", "name the answering model once"),
        ("vstar {w}/fuyu {w}/photo.png q --model {w}/fuyu", "name the answering model once"),
        ("vstar {w}/clip {w}/photo.png q", "holds a 'clip' model, which is not one"),
        ("vstar {w}/mosaic-clip {w}/photo.png q", "vstar needs an image-text-to-text model folder"),
        ("vstar {w}/fuyu {w}/photo.png q --scorer clip:{w}/owlvit", "needs a CLIP or SigLIP model folder"),
        ("vstar {w}/fuyu {w}/photo.png q --scorer detector:{w}/clip", "needs a zero-shot object detector"),
        ("vstar {w}/fuyu {w}/photo.png q --scorer detector:{w}/fuyu", "needs a zero-shot object detector"),
        ("vstar {w}/fuyu {w}/photo.png q --scorer fuyu:{w}/llava", "holds a 'llava' model, not a mosaic-vlm one"),
        ("vstar {w}/fuyu {w}/photo.png q --scorer clip:{w}/clip --max-cell 50", "a clip scorer has none"),
        (
            "vstar {w}/fuyu {w}/photo.png q --scorer fuyu:{w}/fuyu --search-model {w}/fuyu",
            "--search-model is --scorer fuyu:FOLDER; give one of them",
        ),
        ("vstar {w}/fuyu {w}/photo.png q --scorer clip:{w}/none", "none is not a saved model folder"),
        ("vstar {w}/no-template {w}/photo.png q --scorer clip:{w}/clip", "has no chat template"),
        ("vstar {w}/remote {w}/photo.png q --scorer clip:{w}/clip", "pass --trust-remote-code to allow that"),
        ("vstar {w}/fuyu {w}/photo.png q --scorer clip:{w}/clip --output {w}/clip/x.png", "lies inside the input"),
        ("bench vstar --bench-dir {w} --model {w}/fuyu", "is not a V*Bench folder"),
        ("bench vstar --bench-dir {w}/bench --model {w}/fuyu --limit 0", "--limit must be at least 1"),
        ("bench --quick vstar --bench-dir {w}/bench --model {w}/fuyu", "--quick sizes bench's own report"),
        ("bench vstar --bench-dir {w}/bench --model {w}/fuyu --output {w}/bench/out", "lies inside the input"),
        ("bench vstar --bench-dir {w}/bench --model {w}/llava", "needs --scorer KIND:PATH"),
        ("vstar {w}/fuyu {w}/photo.png q --max-calls 0", "max_calls must be at least 1"),
        ("bench vstar --bench-dir {w}/bench --model {w}/fuyu --conf-low 0.9", "conf_low <= conf_high"),
    ],
)
def test_wrong_folders_and_flags_are_one_line(folders, tmp_path, capsys, arguments, message):
    shutil.copytree(folders, tmp_path / "w")
    work = tmp_path / "w"
    shutil.copytree(work / "llava", work / "no-template")
    (work / "no-template" / "chat_template.jinja").unlink()
    shutil.copytree(work / "llava", work / "remote")
    config = json.loads((work / "remote" / "config.json").read_text())
    (work / "remote" / "config.json").write_text(json.dumps({**config, "model_type": "my_own_llava"}))
    before = sorted(path for path in work.rglob("*"))
    assert main(arguments.format(w=work).split()) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error
    assert sorted(path for path in work.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    "arguments, message",
    [
        ("vstar a b c --scorer owl:x", "is not KIND:PATH with KIND one of fuyu, clip, detector"),
        ("vstar a b c --scorer clip", "is not KIND:PATH"),
        ("vstar a b c --scorer clip:a --scorer clip:b", "--scorer: given more than once"),
    ],
)
def test_a_scorer_flag_of_the_wrong_form_is_a_usage_error(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments.split())
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


REMOTE_CONFIG = """from transformers import LlavaConfig


class MyLlavaConfig(LlavaConfig):
    model_type = "my_own_llava"
"""
REMOTE_MODEL = """from transformers import LlavaForConditionalGeneration

from .configuration_my_llava import MyLlavaConfig


class MyLlava(LlavaForConditionalGeneration):
    config_class = MyLlavaConfig
"""


def test_a_remote_code_model_answers_only_with_trust_remote_code(folders, tmp_path, capsys):
    folder = shutil.copytree(folders / "llava", tmp_path / "my-llava")
    # the weights under the model's own names (transformers renames LLaVA's older saved names for 'llava' alone)
    model, _ = loaded(folder, "AutoModelForImageTextToText")
    save_file(model.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "configuration_my_llava.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_my_llava.py").write_text(REMOTE_MODEL)
    config = json.loads((folder / "config.json").read_text())
    auto_map = {
        "AutoConfig": "configuration_my_llava.MyLlavaConfig",
        "AutoModelForImageTextToText": "modeling_my_llava.MyLlava",
    }
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "my_own_llava", "auto_map": auto_map}))
    argv = ["vstar", str(folder), str(folders / "photo.png"), "what?", "--targets", "cup", "--max-new-tokens", "2"]
    argv += ["--scorer", f"clip:{folders / 'clip'}", "--min-size", "100", "--max-calls", "4"]
    argv += ["--output", str(tmp_path / "search.png")]
    assert main(argv) == 2
    assert "which transformers does not know" in capsys.readouterr().err
    assert not (tmp_path / "search.png").exists()
    assert main([*argv, "--trust-remote-code"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("answer: ") and (tmp_path / "search.png").is_file()
    # with the folder's code but no auto_map entry for an image-text-to-text model: one line
    del auto_map["AutoModelForImageTextToText"]
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "my_own_llava", "auto_map": auto_map}))
    assert main([*argv, "--trust-remote-code", "--overwrite"]) == 2
    assert "maps no AutoModelForImageTextToText to the folder's code" in capsys.readouterr().err


def test_bench_vstar_prints_and_writes_the_papers_table(folders, tmp_path, capsys):
    output = tmp_path / "report"
    argv = ["bench", "vstar", "--bench-dir", str(folders / "bench"), "--model", str(folders / "llava")]
    argv += ["--scorer", f"detector:{folders / 'owlvit'}", "--min-size", "40", "--max-calls", "6"]
    argv += ["--annotated", "--output", str(output)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = (output / "vstar-bench.md").read_text()
    assert table in printed
    assert "| answered from | direct_attributes | relative_position | overall |" in table
    report = json.loads((output / "vstar-bench.json").read_text())
    assert list(report["rows"]) == ["whole image", "V*", "annotated boxes"]
    # the same figures as the Python API on the same models and search
    model, processor = loaded(folders / "llava", "AutoModelForImageTextToText")
    questions = load_vstar_bench(folders / "bench")
    search = SearchConfig(min_size=40, max_calls=6)
    found, calls = searched_targets(questions, saved_detector(folders / "owlvit"), search, progress=False)
    direct = evaluate_vstar_bench(model, processor, questions, progress=False)
    vstar = evaluate_vstar_bench(model, processor, questions, searches=found, progress=False)
    for name, expected in (("whole image", direct), ("V*", vstar)):
        row = report["rows"][name]
        assert {key: row[key] for key in row} == {key: expected[key] for key in row}
        cells = " | ".join(f"{100 * row[key]:.1f}%" for key in ("direct_attributes", "relative_position", "overall"))
        assert f"| {name} | {cells} |" in table
    assert report["scorer_calls_per_question"] == sum(calls) / len(calls)
    assert [entry["scorer_calls"] for entry in report["questions"]] == calls
    assert [entry["chosen"]["V*"] for entry in report["questions"]] == [
        question.options[choice] for question, choice in zip(questions, vstar["chosen"])
    ]
    # --limit: the first question of each category
    assert main([*argv[:-1], str(tmp_path / "limited"), "--limit", "1"]) == 0
    limited = json.loads((tmp_path / "limited" / "vstar-bench.json").read_text())
    assert [entry["image"] for entry in limited["questions"]] == ["sa_1.jpg", "sa_3.jpg"]
