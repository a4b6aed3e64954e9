"""`mosaic-vlm convert` on checkpoint files as real releases ship them: sharded safetensors folders, bf16 weights,
fuyu-8b's file layout, tokenizers and image processors beside the weights; and what breaks them."""

import json

import pytest
import torch
from safetensors import safe_open
from tiny import convert_argv, tiny_clip_config
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor, CLIPModel, FuyuConfig, FuyuForCausalLM

from mosaic_vlm.cli.main import main
from mosaic_vlm.conversion import clip as clip_conversion
from mosaic_vlm.conversion.streaming import WEIGHTS_INDEX_NAME, ShardedWriter
from mosaic_vlm.processing import train_bpe_tokenizer
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS, IMAGE_NEWLINE_TOKEN, IMAGE_TOKEN

TEXTS = ["What digit is this?", "a photo of the digit seven", "yes", "no", "seven"] * 5


def file_tensors(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def fuyu_source(tmp_path_factory):
    """A transformers Fuyu folder as adept/fuyu-8b ships one: bf16 shards in its file layout, a tokenizer with
    its special tokens, and FuyuImageProcessor settings."""
    from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

    folder = tmp_path_factory.mktemp("fuyu-source")
    tokenizer = train_bpe_tokenizer(
        TEXTS, vocab_size=120, model_max_length=256, extra_special_tokens=list(FUYU_SPECIAL_TOKENS)
    )
    config = FuyuConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                     "num_attention_heads": 4, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        patch_size=8, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )  # fmt: skip
    torch.manual_seed(0)
    FuyuForCausalLM(config).to(torch.bfloat16).save_pretrained(folder, max_shard_size="100KB")
    tokenizer.save_pretrained(folder)
    FuyuImageProcessorPil(size={"height": 64, "width": 64}, patch_size={"height": 8, "width": 8}).save_pretrained(
        folder
    )
    return folder, tokenizer


def test_fuyu_streams_both_ways_keeping_shards_dtype_and_every_bit(fuyu_source, tmp_path, capsys):
    source, tokenizer = fuyu_source
    assert (source / WEIGHTS_INDEX_NAME).is_file()  # the source is sharded
    mosaic = tmp_path / "mosaic"
    argv = convert_argv("fuyu", "transformers", "mosaic", source, mosaic)
    assert main([*argv, "--max-shard-size", "60KB"]) == 0
    log = capsys.readouterr().err
    assert "every one of 3 layers matches FuyuForCausalLM" in log and "greedy generation of 6 tokens matches" in log
    index = json.loads((mosaic / WEIGHTS_INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1 and all(
        path.stat().st_size < 200_000 for path in mosaic.glob("*.safetensors")
    )
    written = file_tensors(mosaic)
    assert {tensor.dtype for tensor in written.values()} == {torch.bfloat16}
    model = AutoModelForCausalLM.from_pretrained(mosaic)  # strict, our class, the folder's own config
    assert model.config.image_newline_token_id == tokenizer.convert_tokens_to_ids(IMAGE_NEWLINE_TOKEN)
    assert (mosaic / "processor_config.json").is_file()
    # the converted folder speaks chat: AutoProcessor loads the template saved beside it
    assert AutoProcessor.from_pretrained(mosaic).chat_template == (mosaic / "chat_template.jinja").read_text()

    back = tmp_path / "back"
    assert (
        main(["convert", "--model", "fuyu", "--from", "mosaic", "--to", "transformers", str(mosaic), "-o", str(back)])
        == 0
    )
    original, returned = file_tensors(source), file_tensors(back)
    assert sorted(original) == sorted(
        returned
    )  # fuyu-8b's file layout: language_model.model.*, language_model.lm_head
    assert all(torch.equal(original[key], returned[key]) for key in original)
    reloaded = FuyuForCausalLM.from_pretrained(back)
    assert torch.equal(reloaded.lm_head.weight, FuyuForCausalLM.from_pretrained(source).lm_head.weight)


def test_a_converted_fuyu_folder_answers_with_mosaic_vlm_ask(fuyu_source, photo_file, tmp_path, capsys):
    source, _ = fuyu_source
    output = tmp_path / "ready"
    assert (
        main(
            ["convert", "--model", "fuyu", "--from", "transformers", "--to", "mosaic", str(source), "-o", str(output)]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["ask", str(output), str(photo_file), "What digit is this?", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip() != ""


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory, photos):
    import PIL.Image

    path = tmp_path_factory.mktemp("photo") / "coffee.png"
    PIL.Image.fromarray(photos["coffee"]).save(path)
    return path


def test_clip_from_a_transformers_folder_writes_the_processor_and_ranks_labels(
    clip_processor, photo_file, tmp_path, capsys
):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    source = tmp_path / "clip-hf"
    torch.manual_seed(0)
    reference = CLIPModel(clip_conversion.config_to_transformers(tiny_clip_config()))
    reference.save_pretrained(source)
    clip_processor.tokenizer.save_pretrained(source)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(source)
    output = tmp_path / "clip-mosaic"
    assert (
        main(
            [
                "convert",
                "--from",
                "transformers",
                "--to",
                "mosaic",
                str(source),
                "-o",
                str(output),
                "--dtype",
                "float16",
            ]
        )
        == 0
    )
    assert {tensor.dtype for tensor in file_tensors(output).values()} == {torch.float16}
    assert type(AutoModel.from_pretrained(output)).__name__ == "MosaicClipModel"
    capsys.readouterr()
    assert main(["zero-shot", str(output), str(photo_file), "--labels", "a cup of coffee", "a photo of a cat"]) == 0
    assert "a cup of coffee" in capsys.readouterr().out


def test_an_openai_state_dict_without_activation_warns(tmp_path, capsys):
    import safetensors.torch

    from mosaic_vlm.modeling import MosaicClipModel

    config = tiny_clip_config(
        text_config={
            "eos_token_id": 127,
            "bos_token_id": 126,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_attention_heads": 2,
        },
        vision_config={"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2},
    )
    torch.manual_seed(0)
    path = tmp_path / "open_clip_model.safetensors"
    safetensors.torch.save_file(clip_conversion.clip_to_openai(MosaicClipModel(config)), path)
    assert main(["convert", "--from", "openai", "--to", "mosaic", str(path), "-o", str(tmp_path / "out")]) == 0
    log = capsys.readouterr().err
    assert "activation cannot be read from OpenAI / open_clip weights" in log and "No processor was written" in log


def break_first_shard(folder):
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-64])


def drop_a_shard(folder):
    sorted(folder.glob("model-*.safetensors"))[-1].unlink()


def make_float64(folder):
    import safetensors.torch

    shard = sorted(folder.glob("model-*.safetensors"))[0]
    tensors = {key: tensor.double() for key, tensor in safetensors.torch.load_file(shard).items()}
    safetensors.torch.save_file(tensors, shard, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "damage, message",
    [
        (break_first_shard, "is not a readable safetensors file (truncated or corrupted?)"),
        (drop_a_shard, "The shard index names model-"),
        (make_float64, "weights must be float32, float16 or bfloat16"),
    ],
    ids=["truncated-shard", "missing-shard", "float64"],
)
def test_broken_sources_are_one_clear_error_and_no_output(fuyu_source, tmp_path, capsys, damage, message):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(fuyu_source[0], source)
    damage(source)
    argv = convert_argv("fuyu", "transformers", "mosaic", source, tmp_path / "out")
    assert main(argv) == 2
    assert message in error_line(capsys)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["source"]


def test_a_wrong_layer_is_named_and_nothing_is_written(fuyu_source, tmp_path, capsys, monkeypatch):
    real_add = ShardedWriter.add

    def corrupt_layer_one(self, key, tensor):
        real_add(
            self,
            key,
            tensor * 1.01 if key.startswith("model.language_model.layers.1.mlp.dense_4h_to_h.weight") else tensor,
        )

    monkeypatch.setattr(ShardedWriter, "add", corrupt_layer_one)
    argv = convert_argv("fuyu", "transformers", "mosaic", fuyu_source[0], tmp_path / "out")
    assert main(argv) == 2
    assert "Layer check failed at model.language_model.layers.1:" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []
