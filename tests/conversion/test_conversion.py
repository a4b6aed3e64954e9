import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from tiny import tiny_clip_config
from transformers import CLIPConfig, CLIPModel

from mosaic_vlm.cli import main as cli
from mosaic_vlm.conversion import (
    clip,
    clip_from_openai,
    clip_from_transformers,
    clip_to_openai,
    clip_to_transformers,
    infer_openai_config,
    openai_clip_logits,
)
from mosaic_vlm.conversion.state_dict_mapping import LOGIT_ATOL
from mosaic_vlm.modeling import MosaicClipModel

VOCAB = 128  # tiny_clip_config's vocabulary
# OpenAI pools at the highest token id, so models in that layout need EOS = vocab_size - 1.
OPENAI_TEXT = dict(eos_token_id=VOCAB - 1, bos_token_id=VOCAB - 2)
# Widths that are multiples of 64, so that heads = width // 64 can be inferred from shapes.
OPENAI_SHAPED_TOWER = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2)


def openai_config(**overrides):
    return tiny_clip_config(text_config=OPENAI_TEXT, **overrides)


def openai_shaped_config(**overrides):
    return tiny_clip_config(
        text_config={**OPENAI_TEXT, **OPENAI_SHAPED_TOWER, "pad_token_id": 0},
        vision_config=OPENAI_SHAPED_TOWER,
        **overrides,
    )


@torch.no_grad()
def randomised(model):
    """Noise on every parameter: biases and LayerNorm shifts become non-zero, so no mapping slip hides."""
    for parameter in model.parameters():
        parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def random_mosaic(config) -> MosaicClipModel:
    return randomised(MosaicClipModel(config))


def random_transformers_clip(config) -> CLIPModel:
    return randomised(CLIPModel(clip.config_to_transformers(config)))


def probe_inputs(config, texts=4, images=3):
    """Inputs other than the converters' own check input: shorter texts, other seed."""
    generator = torch.Generator().manual_seed(123)
    text, vision = config.text_config, config.vision_config
    input_ids = torch.randint(0, text.eos_token_id, (texts, 12), generator=generator)
    input_ids[torch.arange(texts), torch.arange(texts) + 5] = text.eos_token_id
    size = vision.image_size
    return input_ids, torch.randn(images, vision.num_channels, size, size, generator=generator)


@torch.no_grad()
def logits(model, inputs):
    input_ids, pixel_values = inputs
    return model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image


def assert_same_tensors(first: dict, second: dict):
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].dtype == second[key].dtype, key
        assert torch.equal(first[key], second[key]), key


# ----------------------------------------------------------------------------------------------- transformers


def test_transformers_to_mosaic_parity(tmp_path):
    source = random_transformers_clip(tiny_clip_config())
    source.save_pretrained(tmp_path / "clip")
    expected = logits(source, probe_inputs(source.config))
    source.train()
    for model_or_path in (source, tmp_path / "clip"):
        model = clip_from_transformers(model_or_path)
        assert isinstance(model, MosaicClipModel) and not model.training
        assert (logits(model, probe_inputs(model.config)) - expected).abs().max() <= LOGIT_ATOL
        assert_same_tensors(model.state_dict(), source.state_dict())
        assert model.config.text_config.eos_token_id == 3 and model.config.projection_dim == 16
    assert source.training  # checked in eval mode, then given back in its own mode


def test_transformers_legacy_eos_id_pools_at_the_highest_id():
    config = tiny_clip_config()
    clip_config = clip.config_to_transformers(config)
    clip_config.text_config.eos_token_id = 2  # pre-#24773 configs: CLIPModel pools at argmax(input_ids)
    source = randomised(CLIPModel(clip_config))
    model = clip_from_transformers(source)
    assert model.config.text_config.eos_token_id == VOCAB - 1
    inputs = probe_inputs(model.config)  # EOS = 127 is the highest id in every row
    assert (logits(model, inputs) - logits(source, inputs)).abs().max() <= LOGIT_ATOL


def test_transformers_half_precision_keeps_the_dtype():
    source = random_transformers_clip(tiny_clip_config()).to(torch.bfloat16)
    model = clip_from_transformers(source)
    assert model.dtype == torch.bfloat16
    assert_same_tensors(model.state_dict(), source.state_dict())


def test_transformers_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clip_from_transformers(tmp_path / "nowhere")
    random_mosaic(tiny_clip_config()).save_pretrained(tmp_path / "mosaic")
    with pytest.raises(ValueError, match="'mosaic_clip' model; expected a 'clip' one"):
        clip_from_transformers(tmp_path / "mosaic")
    source = random_transformers_clip(tiny_clip_config())
    source.save_pretrained(tmp_path / "pickled")
    (tmp_path / "pickled" / "model.safetensors").unlink()
    torch.save(source.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights are read only from safetensors"):
        clip_from_transformers(tmp_path / "pickled")
    with pytest.raises(TypeError, match="CLIPModel"):
        clip_from_transformers(random_mosaic(tiny_clip_config()))
    clip_config = clip.config_to_transformers(tiny_clip_config())
    clip_config.text_config.eos_token_id = [3, 4]
    with pytest.raises(ValueError, match="pools at one EOS id"):
        clip_from_transformers(CLIPModel(clip_config))


def test_mosaic_to_transformers_parity():
    model = random_mosaic(tiny_clip_config())
    exported = clip_to_transformers(model)
    assert isinstance(exported, CLIPModel)
    inputs = probe_inputs(model.config)
    assert (logits(exported, inputs) - logits(model, inputs)).abs().max() <= LOGIT_ATOL
    assert_same_tensors(clip_from_transformers(exported).state_dict(), model.state_dict())
    assert exported.config.text_config.eos_token_id == 3


def test_mosaic_to_transformers_refuses_what_clip_cannot_express():
    with pytest.raises(ValueError, match="no logit_bias"):
        clip_to_transformers(random_mosaic(tiny_clip_config(loss_type="siglip")))
    with pytest.raises(ValueError, match="eos_token_id=2"):
        clip_to_transformers(random_mosaic(tiny_clip_config(text_config=dict(eos_token_id=2, bos_token_id=1))))


@pytest.mark.parametrize(
    "weight, message",
    [
        ("text_model.embeddings.token_embedding.weight", "Layer check failed at text_model.encoder.layers.0: .* by "),
        ("logit_scale", "Logit check failed: .* by [0-9.e+-]+ .*The conversion is refused"),
    ],
    ids=["a layer", "the logits only"],
)
def test_check_refuses_a_corrupted_conversion(monkeypatch, weight, message):
    real_load = clip.load_converted

    def corrupting_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        with torch.no_grad():
            model.get_parameter(weight).mul_(1.5)
        return model

    monkeypatch.setattr(clip, "load_converted", corrupting_load)
    with pytest.raises(ValueError, match=message):
        clip_from_transformers(random_transformers_clip(tiny_clip_config()))


# ------------------------------------------------------------------------------------------ OpenAI / open_clip


def test_openai_layout_keys_and_shapes():
    exported = clip_to_openai(random_mosaic(openai_config()))
    modules = ("ln_1", "attn.out_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
    block = [f"{name}.{wb}" for name in modules for wb in ("weight", "bias")]
    block += ["attn.in_proj_weight", "attn.in_proj_bias"]
    expected_keys = {
        "visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
        "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias",
        "token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection",
        "logit_scale",
        *(f"{tower}transformer.resblocks.{n}.{name}" for tower in ("", "visual.") for n in (0, 1) for name in block),
    }  # fmt: skip
    assert set(exported) == expected_keys
    assert exported["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * 32, 32)
    assert exported["transformer.resblocks.1.attn.in_proj_bias"].shape == (3 * 32,)
    assert exported["visual.proj"].shape == exported["text_projection"].shape == (32, 16)  # (width, dim)
    assert exported["visual.conv1.weight"].shape == (32, 3, 8, 8)
    assert exported["visual.positional_embedding"].shape == (1 + 4 * 4, 32)
    assert all(tensor.is_contiguous() for tensor in exported.values())


def test_openai_round_trip_is_bit_exact_and_matches_the_reference():
    config = openai_config()
    model = random_mosaic(config)
    exported = clip_to_openai(model)
    restored = clip_from_openai(exported, config)
    assert_same_tensors(restored.state_dict(), model.state_dict())
    assert_same_tensors(clip_to_openai(restored), exported)
    inputs = probe_inputs(config)
    reference = openai_clip_logits(exported, *inputs, text_heads=4, vision_heads=4)
    assert (logits(restored, inputs) - reference).abs().max() <= LOGIT_ATOL


def test_openai_reference_agrees_with_transformers():
    """The reference forward, on weights exported from transformers' CLIPModel, gives CLIPModel's logits."""
    config = openai_config()
    source = random_transformers_clip(config)
    exported = clip_to_openai(clip_from_transformers(source))
    inputs = probe_inputs(config)
    reference = openai_clip_logits(exported, *inputs, text_heads=4, vision_heads=4)
    assert (reference - logits(source, inputs)).abs().max() <= LOGIT_ATOL


@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_openai_config_inferred_from_shapes_equals_the_original(loss_type):
    config = openai_shaped_config(loss_type=loss_type)
    exported = clip_to_openai(random_mosaic(config))
    assert ("logit_bias" in exported) == (loss_type == "siglip")
    assert infer_openai_config(exported).to_dict() == config.to_dict()
    assert clip_from_openai(exported).config.to_dict() == config.to_dict()
    assert infer_openai_config(exported, hidden_act="gelu").text_config.hidden_act == "gelu"


def test_openai_siglip_keeps_logit_bias():
    config = openai_config(loss_type="siglip")
    model = random_mosaic(config)
    with torch.no_grad():
        model.logit_bias.fill_(-3.5)
    exported = clip_to_openai(model)
    assert exported["logit_bias"].item() == -3.5
    restored = clip_from_openai(exported, config)
    assert restored.logit_bias.item() == -3.5
    inputs = probe_inputs(config)
    reference = openai_clip_logits(exported, *inputs, text_heads=4, vision_heads=4)
    assert (logits(restored, inputs) - reference).abs().max() <= LOGIT_ATOL
    without_bias = openai_clip_logits(
        {k: v for k, v in exported.items() if k != "logit_bias"}, *inputs, text_heads=4, vision_heads=4
    )
    assert torch.allclose(reference - without_bias, torch.full_like(reference, -3.5))


def test_openai_ignores_only_the_listed_non_weight_keys():
    config = openai_shaped_config()
    exported = clip_to_openai(random_mosaic(config))
    released = {
        **exported,
        "attn_mask": torch.full((24, 24), float("-inf")).triu(1),
        "input_resolution": torch.tensor(32),
        "context_length": torch.tensor(24),
        "vocab_size": torch.tensor(VOCAB),
    }
    assert_same_tensors(clip_from_openai(released).state_dict(), clip_from_openai(exported).state_dict())
    with pytest.raises(ValueError, match=r"input_resolution=224 \(config: 32\)"):
        clip_from_openai({**released, "input_resolution": torch.tensor(224)})
    assert set(clip.OPENAI_IGNORED_KEYS) == {"attn_mask", "input_resolution", "context_length", "vocab_size"}


def test_openai_strict_load_lists_unused_and_missing_keys():
    config = openai_config()
    exported = clip_to_openai(random_mosaic(config))
    broken = {**exported, "visual.extra.weight": torch.zeros(3), "transformer.resblocks.7.ln_1.weight": torch.ones(32)}
    del broken["transformer.resblocks.1.attn.in_proj_bias"]
    del broken["visual.ln_post.weight"]
    with pytest.raises(ValueError) as error:
        clip_from_openai(broken, config)
    message = str(error.value)
    assert "unused source keys: visual.extra.weight" in message
    assert "source tensors the model has no place for: text_model.encoder.layers.[7].layer_norm1.weight" in message
    assert "missing target keys: text_model.encoder.layers.[1].self_attn.k_proj.bias" in message
    assert "vision_model.post_layernorm.weight" in message
    prefixed = {f"module.{key}": tensor for key, tensor in exported.items()}
    with pytest.raises(ValueError, match="no 'visual.conv1.weight'.*'module.' prefix"):
        clip_from_openai(prefixed)
    with pytest.raises(ValueError, match=r"unused source keys: module\.ln_final\.bias"):
        clip_from_openai(prefixed, config)
    with pytest.raises(ValueError, match="shape mismatches .*visual_projection.weight"):
        clip_from_openai({**exported, "visual.proj": torch.zeros(32, 8)}, config)


def test_openai_refuses_configs_the_layout_cannot_express():
    with pytest.raises(ValueError, match="eos_token_id=3 is not the highest id 127"):
        clip_to_openai(random_mosaic(tiny_clip_config()))
    exported = clip_to_openai(random_mosaic(openai_config()))
    with pytest.raises(ValueError, match="width 32 is not a multiple of 64"):
        clip_from_openai(exported)
    with pytest.raises(ValueError, match="layer_norm_eps"):
        clip_from_openai(exported, openai_config(vision_config=dict(layer_norm_eps=1e-6)))


def test_openai_round_trip_check_refuses_a_broken_split(monkeypatch):
    def key_query_swapped(in_proj):
        query, key, value = in_proj.chunk(3)
        return key, query, value

    def swapped_join(query, key, value):
        return (torch.cat([key, query, value]),)

    def with_split(tensors):
        return tuple(
            dataclasses.replace(row, tensors=tensors) if row.tensors == clip.SPLIT_QKV else row
            for row in clip.OPENAI_KEY_TABLE
        )

    exported = clip_to_openai(random_mosaic(openai_config()))
    split_only_broken = with_split(clip.TensorMap(key_query_swapped, clip.join_qkv))
    swapped_both_ways = with_split(clip.TensorMap(key_query_swapped, swapped_join))
    monkeypatch.setattr(clip, "OPENAI_KEY_TABLE", split_only_broken)
    with pytest.raises(ValueError, match=r"Round-trip check failed: .*resblocks\.0\.attn\.in_proj_weight"):
        clip_from_openai(exported, openai_config())
    # The round trip is exact when q and k are swapped both ways, but the reference forward tells.
    monkeypatch.setattr(clip, "OPENAI_KEY_TABLE", swapped_both_ways)
    with pytest.raises(ValueError, match="Logit check failed: .*OpenAI reference forward"):
        clip_from_openai(exported, openai_config())


def test_openai_dtypes_and_files(tmp_path):
    config = openai_config()
    exported = {key: tensor.to(torch.bfloat16) for key, tensor in clip_to_openai(random_mosaic(config)).items()}
    safetensors.torch.save_file(exported, tmp_path / "clip.safetensors")
    model = clip_from_openai(tmp_path / "clip.safetensors", config)
    assert model.dtype == torch.bfloat16
    assert_same_tensors(clip_to_openai(model), exported)
    torch.save(exported, tmp_path / "clip.pt")
    with pytest.raises(ValueError, match="not a .safetensors file.*save_file"):
        clip_from_openai(tmp_path / "clip.pt", config)
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        clip_from_openai(tmp_path / "corrupt.safetensors", config)
    with pytest.raises(ValueError, match="must be float32, float16 or bfloat16; got logit_scale"):
        clip_from_openai({**exported, "logit_scale": torch.tensor(3)}, config)


@pytest.mark.slow
def test_vit_b32_shapes_through_every_layout():
    """transformers' default CLIPConfig (ViT-B/32) with random weights: transformers -> mosaic -> OpenAI ->
    mosaic with the config inferred from shapes -> transformers, logits compared with the source."""
    source = CLIPModel(CLIPConfig()).eval()
    model = clip_from_transformers(source)
    exported = clip_to_openai(model)
    assert exported["visual.conv1.weight"].shape == (768, 3, 32, 32)
    restored = clip_from_openai(exported)
    inferred, original = restored.config.to_dict(), model.config.to_dict()
    assert inferred["text_config"].pop("pad_token_id") == 0 and original["text_config"].pop("pad_token_id") == 1
    assert inferred == original
    back = clip_to_transformers(restored)
    assert_same_tensors(back.state_dict(), source.state_dict())
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 49407, (2, 20), generator=generator)
    input_ids[:, -1] = 49407
    inputs = (input_ids, torch.randn(1, 3, 224, 224, generator=generator))
    assert (logits(restored, inputs) - logits(source, inputs)).abs().max() <= LOGIT_ATOL


# --------------------------------------------------------------------------------------------------------- CLI


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def leftovers(folder) -> list[str]:
    return sorted(
        path.name
        for path in folder.iterdir()
        if "mosaic-vlm-staging" in path.name or "mosaic-vlm-retired" in path.name
    )


@pytest.fixture
def openai_file(tmp_path):
    model = random_mosaic(openai_shaped_config())
    safetensors.torch.save_file(clip_to_openai(model), tmp_path / "model.safetensors")
    return tmp_path / "model.safetensors", model


def test_cli_openai_to_mosaic_and_transformers(openai_file, tmp_path, capsys):
    path, model = openai_file
    assert cli.main(["convert", "--from", "openai", "--to", "mosaic", str(path), "--output", str(tmp_path / "m")]) == 0
    stderr = capsys.readouterr().err
    for step in (
        "converting",
        "wrote 78 tensors",
        "round trip",
        "against the OpenAI reference forward: max |diff|",
        "done",
    ):
        assert step in stderr, step
    assert_same_tensors(MosaicClipModel.from_pretrained(tmp_path / "m").state_dict(), model.state_dict())

    argv = ["convert", "--from", "openai", "--to", "transformers", str(path), "-o", str(tmp_path / "out" / "hf")]
    assert cli.main(argv) == 0
    assert_same_tensors(CLIPModel.from_pretrained(tmp_path / "out" / "hf").state_dict(), model.state_dict())
    assert leftovers(tmp_path) == leftovers(tmp_path / "out") == []


def test_cli_transformers_to_openai_and_activation(tmp_path):
    source = random_transformers_clip(openai_shaped_config())
    source.save_pretrained(tmp_path / "hf")
    argv = ["convert", "--from", "transformers", "--to", "openai", str(tmp_path / "hf"), "-o", str(tmp_path / "oa")]
    assert cli.main(argv) == 0
    written = safetensors.torch.load_file(tmp_path / "oa" / clip.OPENAI_WEIGHTS_NAME)
    assert_same_tensors(written, clip_to_openai(clip_from_transformers(source)))

    weights, output = tmp_path / "oa" / clip.OPENAI_WEIGHTS_NAME, tmp_path / "gelu"
    argv = ["convert", "--from", "openai", "--to", "mosaic", "--activation", "gelu", str(weights), "-o", str(output)]
    assert cli.main(argv) == 0
    assert MosaicClipModel.from_pretrained(output).config.vision_config.hidden_act == "gelu"


@pytest.mark.parametrize("case", ["missing path", "corrupt file", "pickle", "wrong keys", "same layout", "activation"])
def test_cli_bad_input_exits_2_with_one_line_and_no_output(case, openai_file, tmp_path, capsys):
    path, _ = openai_file
    source, extra = "openai", []
    if case == "missing path":
        path = tmp_path / "missing.safetensors"
    elif case == "corrupt file":
        path = tmp_path / "corrupt.safetensors"
        path.write_bytes(b"\x00" * 3)
    elif case == "pickle":
        path = tmp_path / "model.bin"
        torch.save(safetensors.torch.load_file(tmp_path / "model.safetensors"), path)
    elif case == "wrong keys":
        path = tmp_path / "renamed.safetensors"
        weights = safetensors.torch.load_file(tmp_path / "model.safetensors")
        weights["visual.ln_pre.gamma"] = weights.pop("visual.ln_pre.weight")
        safetensors.torch.save_file(weights, path)
    elif case == "same layout":
        extra = ["--to", "openai"]
    elif case == "activation":
        source, extra = "transformers", ["--activation", "gelu"]
    output = tmp_path / "converted"
    argv = ["convert", "--from", source, "--to", "mosaic", *extra, str(path), "--output", str(output)]
    assert cli.main(argv) == 2
    [line] = error_lines(capsys.readouterr().err)
    expected = {
        "missing path": "missing.safetensors does not exist",
        "corrupt file": "not a readable safetensors file",
        "pickle": "not a .safetensors file",
        "wrong keys": "unused source keys: visual.ln_pre.gamma; missing target keys: vision_model.pre_layrnorm.weight",
        "same layout": "nothing to convert",
        "activation": "--activation applies only to --model clip --from openai (--to mosaic or transformers)",
    }[case]
    assert line.startswith("mosaic-vlm convert: error: ") and expected in line
    assert not output.exists() and leftovers(tmp_path) == []


def test_cli_failure_while_writing_leaves_no_folder(openai_file, tmp_path, monkeypatch, capsys):
    path, _ = openai_file
    random_transformers_clip(openai_shaped_config()).save_pretrained(tmp_path / "hf")

    def disk_full():
        raise OSError(28, "No space left on device")

    def half_written_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        disk_full()

    def half_written_folder(self, folder, *args, **kwargs):
        (Path(folder) / "config.json").write_text("{")
        disk_full()

    monkeypatch.setattr(safetensors.torch, "save_file", half_written_file)
    monkeypatch.setattr(MosaicClipModel, "save_pretrained", half_written_folder)
    output = tmp_path / "new" / "converted"
    for argv in (
        ["--from", "transformers", "--to", "openai", str(tmp_path / "hf")],
        ["--from", "openai", "--to", "mosaic", str(path)],
    ):
        assert cli.main(["convert", *argv, "--output", str(output)]) == 2
        assert "No space left on device" in error_lines(capsys.readouterr().err)[0]
        assert not output.exists() and leftovers(output.parent) == []


def test_cli_output_folder_is_replaced_only_with_overwrite(openai_file, tmp_path, capsys):
    path, model = openai_file
    output = tmp_path / "converted"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    argv = ["convert", "--from", "openai", "--to", "mosaic", str(path), "-o", str(output)]
    assert cli.main(argv) == 2
    assert "exists and is not empty; pass --overwrite" in error_lines(capsys.readouterr().err)[0]
    assert (output / "keep.txt").read_text() == "precious"
    assert cli.main([*argv, "--overwrite"]) == 0
    assert not (output / "keep.txt").exists() and (output / "config.json").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_cli_usage():
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["convert", "--from", "caffe", "--to", "mosaic", "x", "-o", "y"])
    assert exit_info.value.code == 2
    result = subprocess.run(
        [sys.executable, "-m", "mosaic_vlm.cli", "convert", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for text in ("--from {transformers,openai,mosaic}", "--to {mosaic,transformers,openai}", "--output", "examples:"):
        assert text in result.stdout
