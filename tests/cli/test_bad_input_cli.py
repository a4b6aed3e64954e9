"""Hostile input at the command line's door, a row per case: inputs named in any spelling, odd flags, and folders
whose files are of the wrong types, absurd sizes, outside their folder or asking for remote code. Every row is
refused in one line with exit code 2, before any work, and leaves every file where it was."""

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import FUYU_TEXTS, FUYU_TOKENS, tiny_clip_config, tiny_fuyu_model

from mosaic_vlm.cli.main import main
from mosaic_vlm.modeling import MosaicClipModel
from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor, train_bpe_tokenizer


@pytest.fixture(scope="module")
def folders(tmp_path_factory, clip_processor):
    """A tiny CLIP folder, a tiny Fuyu folder and a photo, to copy into each row's work folder."""
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    MosaicClipModel(tiny_clip_config()).save_pretrained(root / "clip")
    clip_processor.save_pretrained(root / "clip")
    tokenizer = train_bpe_tokenizer(
        FUYU_TEXTS * 5, vocab_size=120, model_max_length=256, extra_special_tokens=FUYU_TOKENS
    )
    processor = MosaicFuyuProcessor(
        MosaicFuyuImageProcessor(patch_size=16, size={"height": 64, "width": 64}), tokenizer
    )
    tiny_fuyu_model(processor).save_pretrained(root / "fuyu")
    processor.save_pretrained(root / "fuyu")
    PIL.Image.new("RGB", (64, 48), "white").save(root / "photo.png")
    return root


@pytest.fixture
def work(folders, tmp_path):
    """The row's work folder: clip/, fuyu/, photo.png, an earlier training output out/ (with a checkpoint and a
    V* digit stage in it), a user's non-empty folder busy/ and an existing picture search.png."""
    for name in ("clip", "fuyu"):
        shutil.copytree(folders / name, tmp_path / name)
    shutil.copy(folders / "photo.png", tmp_path / "photo.png")
    for name in ("out/checkpoint-1", "out/vstar-digits", "busy"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-1" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "out" / "vstar-digits" / "config.json").write_text("{}")
    (tmp_path / "busy" / "config.json").write_text('{"mine": true}')
    (tmp_path / "search.png").write_bytes(b"an older picture")
    return tmp_path


def tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        return stop.code


@dataclass(frozen=True)
class Row:
    id: str
    argv: str  # the command line, {w} standing for the work folder
    message: str  # found in the one error line
    edit: object = None  # edits the work folder first: a function of it


def edit_json(name: str, change):
    def edit(work: Path) -> None:
        path = work / name
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return edit


def write(name: str, text: str):
    return lambda work: (work / name).write_text(text)


def evil_code(work: Path, folder: str) -> None:
    """A module in the folder that leaves a mark when it runs."""
    (work / folder / "evil.py").write_text(f"open({str(work / 'RAN')!r}, 'w').write('ran')\nclass Evil: pass\n")


def remote_config(work: Path) -> None:
    evil_code(work, "clip")
    data = {"model_type": "evil", "auto_map": {"AutoConfig": "evil.Evil", "AutoModel": "evil.Evil"}}
    (work / "clip" / "config.json").write_text(json.dumps(data))


def remote_processor(work: Path) -> None:
    evil_code(work, "clip")
    change = {"processor_class": "Evil", "auto_map": {"AutoProcessor": "evil.Evil"}}
    edit_json("clip/processor_config.json", lambda c: c.update(change))(work)


def remote_tokenizer(work: Path) -> None:
    evil_code(work, "clip")
    change = {"tokenizer_class": "Evil", "auto_map": {"AutoTokenizer": ["evil.Evil", None]}}
    edit_json("clip/tokenizer_config.json", lambda c: c.update(change))(work)


def shard_index(name: str):
    """clip/'s weights behind a shard index that names `name` ({w}: the work folder) for one tensor, a copy of
    which waits outside the folder."""

    def edit(work: Path) -> None:
        weights = load_file(work / "clip" / "model.safetensors")
        (work / "clip" / "model.safetensors").unlink()
        save_file(weights, work / "clip" / "model-00001-of-00001.safetensors", metadata={"format": "pt"})
        weight_map = dict.fromkeys(weights, "model-00001-of-00001.safetensors")
        weight_map["logit_scale"] = name.format(w=work)
        index = {"metadata": {}, "weight_map": weight_map}
        (work / "clip" / "model.safetensors.index.json").write_text(json.dumps(index))
        save_file({"logit_scale": weights["logit_scale"]}, work / "outside.safetensors", metadata={"format": "pt"})

    return edit


def config(**changes):
    return edit_json("clip/config.json", lambda c: c.update(changes))


def text_config(**changes):
    return edit_json("clip/config.json", lambda c: c["text_config"].update(changes))


def vision_config(**changes):
    return edit_json("clip/config.json", lambda c: c["vision_config"].update(changes))


def image_settings(**changes):
    return edit_json("clip/processor_config.json", lambda c: c["image_processor"].update(changes))


def tokenizer_settings(**changes):
    return edit_json("clip/tokenizer_config.json", lambda c: c.update(changes))


ZERO_SHOT = "zero-shot {w}/clip {w}/photo.png --labels a b"
CONVERT = "convert --from mosaic --to transformers {w}/clip --output {w}/converted"
VSTAR = "vstar {w}/fuyu {w}/photo.png what --targets digit"
TRAIN_CLIP = "train --overwrite clip --output_dir {w}/out"
TRAIN_VSTAR = "train --overwrite vstar --output_dir {w}/out"
CHECKPOINT = "{w}/out/checkpoint-1"

ROWS = [
    # 1. every input of train, however spelt: the output may not be, hold or lie inside one
    Row("resume-equals", TRAIN_CLIP + " --resume_from_checkpoint=" + CHECKPOINT,
        r"holds the input .*checkpoint-1 \(--resume_from_checkpoint\)"),
    Row("resume-space", TRAIN_CLIP + " --resume_from_checkpoint " + CHECKPOINT, "holds the input"),
    Row("resume-dashes", "train clip --overwrite --resume-from-checkpoint {w}/out/checkpoint-1 --output-dir={w}/out",
        "holds the input"),
    Row("init-from", TRAIN_VSTAR + " --init_from {w}/out/vstar-digits", r"holds the input .*digits \(--init_from\)"),
    Row("init-from-dotted", TRAIN_VSTAR + " --init_from={w}/busy/../out/./vstar-digits", "holds the input"),
    Row("output-is-init", "train vstar --init_from {w}/out/vstar-digits --output_dir {w}/out/vstar-digits",
        "is the input"),
    Row("output-the-working-folder", "train --overwrite clip --output_dir=.", "names no folder of its own"),
    Row("output-above-the-working-folder", CONVERT.replace("{w}/converted", "..") + " --overwrite",
        "names no folder of its own"),
    Row("output-inside-checkpoint", "train clip --resume_from_checkpoint {w}/out/checkpoint-1 --output_dir "
        "{w}/out/checkpoint-1/run", "lies inside the input"),
    # 2. vstar's pictures: never the photo or a model's file; an existing picture only with --overwrite
    Row("vstar-output-is-the-photo", VSTAR + " --output {w}/photo.png --overwrite", "is the input"),
    Row("vstar-output-in-the-model", VSTAR + " --output {w}/fuyu/search.png --overwrite", "lies inside the input"),
    Row("vstar-existing-picture", VSTAR + " --output {w}/search.png", "search.png exists; pass --overwrite"),
    Row("vstar-numbered-sibling", "vstar {w}/fuyu {w}/photo.png what --targets a b --output {w}/pic.png",
        "pic-1.png exists; pass --overwrite", write("pic-1.png", "mine")),
    Row("vstar-sibling-of-unnamed-targets", "vstar {w}/fuyu {w}/photo.png what --output {w}/pic.png",
        "pic-7.png exists; pass --overwrite", write("pic-7.png", "mine")),
    # 6. flags taken whole, and once
    Row("train-abbreviated-output", "train clip --output_d {w}/busy", "needs --output_dir"),
    Row("train-abbreviated-beside-output", "train clip --output_dir {w}/new --max_step 3", "not used"),
    Row("train-output-twice", "train clip --output_dir {w}/a --output_dir {w}/b", "given more than once"),
    Row("train-output-twice-spelt-apart", "train clip --output_dir {w}/a --output-dir={w}/b", "given more than once"),
    Row("convert-abbreviated-output", CONVERT.replace("--output", "--out"), "required: --output"),
    Row("convert-output-twice", CONVERT + " -o {w}/other", "given more than once"),
    Row("vstar-search-model-twice", VSTAR + " --search-model {w}/fuyu --search-model {w}/clip", "more than once"),
    Row("train-init-from-twice", TRAIN_VSTAR + "-new --init_from {w}/fuyu --init_from={w}/clip", "more than once"),
    Row("pull-abbreviated-overwrite", "pull me/model --output {w}/busy --overwr", "unrecognized arguments"),
    Row("demo-abbreviated-output-dir", "demo --output {w}/busy", "unrecognized arguments"),
    Row("vstar-output-twice", VSTAR + " --output {w}/a.png --output {w}/b.png", "given more than once"),
    Row("vstar-scorer-twice", VSTAR + " --scorer clip:{w}/clip --scorer=clip:{w}/clip", "given more than once"),
    Row("vstar-model-twice", VSTAR + " --model {w}/fuyu", "name the answering model once"),
    Row("vstar-output-in-the-scorer", VSTAR + " --scorer clip:{w}/clip --output {w}/clip/s.png",
        "lies inside the input"),
    Row("bench-vstar-output-twice", "bench --output {w}/a vstar --bench-dir {w}/busy --model {w}/fuyu --output {w}/b",
        "given more than once"),
    Row("bench-vstar-output-is-the-model", "bench vstar --bench-dir {w}/busy --model {w}/fuyu --output {w}/fuyu "
        "--overwrite", "is the input"),
    Row("bench-vstar-not-a-release", "bench vstar --bench-dir {w}/busy --model {w}/fuyu --output {w}/new",
        r"is not a V\*Bench folder"),
    # 5. config files of the wrong types or absurd sizes: refused before a layer is built
    Row("config-width-as-text", ZERO_SHOT, "expected int, got str", text_config(hidden_size="32")),
    Row("config-layers-fractional", ZERO_SHOT, "expected int, got float", vision_config(num_hidden_layers=2.5)),
    Row("config-tower-a-number", ZERO_SHOT, "vision_config must be an object", config(vision_config=5)),
    Row("config-tower-a-list", ZERO_SHOT, "text_config must be an object", config(text_config=[1, 2])),
    Row("config-not-json", ZERO_SHOT, "is not a readable JSON file", write("clip/config.json", "{nope")),
    Row("config-a-list", ZERO_SHOT, "must hold a JSON object", write("clip/config.json", "[1, 2]")),
    Row("config-negative-layers", ZERO_SHOT, "num_hidden_layers", text_config(num_hidden_layers=-1)),
    Row("config-absurd-layers", ZERO_SHOT, "num_hidden_layers = 10000000, but the weights hold only",
        text_config(num_hidden_layers=10**7)),
    Row("config-absurd-vocabulary", ZERO_SHOT, "shapes that differ: .*embed", text_config(vocab_size=10**10)),
    Row("config-absurd-width", ZERO_SHOT, "do not fit its config.json",
        vision_config(hidden_size=2**20, intermediate_size=2**20)),
    Row("convert-absurd-layers", CONVERT, "the weights hold only", text_config(num_hidden_layers=10**7)),
    # 5. tokenizer and processor files of the wrong types and sizes
    Row("tokenizer-length-as-text", ZERO_SHOT, "model_max_length must be a positive whole number",
        tokenizer_settings(model_max_length="24")),
    Row("tokenizer-pad-a-number", ZERO_SHOT, "pad_token must be a string", tokenizer_settings(pad_token=5)),
    Row("tokenizer-config-a-list", ZERO_SHOT, "must hold a JSON object", write("clip/tokenizer_config.json", "[]")),
    Row("tokenizer-json-without-model", ZERO_SHOT, "is not a tokenizers file",
        write("clip/tokenizer.json", '{"version": 3}')),
    Row("tokenizer-json-model-a-list", ZERO_SHOT, "is not a tokenizers file",
        edit_json("clip/tokenizer.json", lambda c: c.update(model=[1]))),
    Row("tokenizer-json-vocabulary-as-text", ZERO_SHOT, "cannot be read by the tokenizers library",
        edit_json("clip/tokenizer.json", lambda c: c["model"].update(vocab="x"))),
    Row("image-mean-two-values", ZERO_SHOT, "image_mean must be a number or a list of 1 or 3",
        image_settings(image_mean=[0.5, 0.5])),
    Row("image-mean-as-text", ZERO_SHOT, "image_mean must be", image_settings(image_mean="x")),
    Row("image-size-as-text", ZERO_SHOT, "size must be a positive whole number", image_settings(size="big")),
    Row("image-size-absurd", ZERO_SHOT, "at most MAX_IMAGE_PIXELS",
        image_settings(crop_size={"height": 10**6, "width": 10**6})),
    Row("image-crop-negative", ZERO_SHOT, "crop_size must be a positive",
        image_settings(crop_size={"height": -1, "width": 32})),
    Row("image-resample-unknown", ZERO_SHOT, "resample must be one of PIL's", image_settings(resample=99)),
    Row("image-rescale-as-text", ZERO_SHOT, "rescale_factor must be a positive number",
        image_settings(rescale_factor="a")),
    Row("processor-config-a-list", ZERO_SHOT, "must hold a JSON object", write("clip/processor_config.json", "[1]")),
    # 6. no remote code by the back door, and no file outside the folder
    Row("remote-code-config", ZERO_SHOT, "holds a 'evil' model, not a mosaic-vlm one", remote_config),
    Row("remote-code-config-convert", CONVERT, "holds a 'evil' model; expected a 'mosaic_clip' one", remote_config),
    Row("remote-code-processor", ZERO_SHOT, "names 'Evil'; a CLIP-style dual encoder folder has a MosaicClipProcessor",
        remote_processor),
    Row("remote-code-tokenizer", ZERO_SHOT, "names the tokenizer class 'Evil'", remote_tokenizer),
    Row("remote-code-tokenizer-push", "push {w}/clip me/model", "names the tokenizer class 'Evil'", remote_tokenizer),
    Row("shard-outside-the-folder", ZERO_SHOT, "names the file '../outside.safetensors', outside its folder",
        shard_index("../outside.safetensors")),
    Row("shard-absolute-path", CONVERT, "outside its folder", shard_index("{w}/outside.safetensors")),
    Row("shard-absolute-path-push", "push {w}/clip me/model", "outside its folder",
        shard_index("{w}/outside.safetensors")),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_hostile_input_is_refused_in_one_line_and_touches_nothing(work, row, capsys, monkeypatch):
    import builtins

    def no_prompt(*args):
        raise AssertionError(f"the command line prompted: {args}")

    monkeypatch.setattr(builtins, "input", no_prompt)  # it never asks whether to run a folder's code
    if row.edit is not None:
        row.edit(work)
    before = tree(work)
    assert run_cli(row.argv.format(w=work).split()) == 2
    error = [line for line in capsys.readouterr().err.strip().splitlines() if " error: " in line]
    assert len(error) == 1 and re.search(row.message, error[0]), error
    assert tree(work) == before and not (work / "RAN").exists()
