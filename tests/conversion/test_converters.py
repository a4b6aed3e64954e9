"""The converter table: one entry per (family, source layout, target layout), each called the same way, each
declaring the family options it takes; and library errors that name library arguments, never CLI flags."""

import ast
import inspect
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from tiny import NEWLINE, tiny_clip_config, tiny_fuyu_config

import mosaic_vlm.conversion
from mosaic_vlm.conversion import CLIP_CONVERTERS, DEFAULT_MAX_SHARD_SIZE, FUYU_CONVERTERS, Converter, clip
from mosaic_vlm.families import FAMILIES
from mosaic_vlm.modeling import MosaicClipModel, MosaicFuyuForCausalLM

ALL_CONVERTERS = [converter for family in FAMILIES.values() for converter in family.converters.values()]
OPENAI_SHAPED = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2)  # heads = width // 64


def file_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:
        with safe_open(file, framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


def test_every_family_and_pair_that_works_has_one_entry():
    assert sorted(CLIP_CONVERTERS) == sorted(
        (source, target) for source in clip.LAYOUTS for target in clip.LAYOUTS if source != target
    )
    assert sorted(FUYU_CONVERTERS) == [("mosaic", "transformers"), ("transformers", "mosaic")]
    assert FAMILIES["clip"].converters is CLIP_CONVERTERS and FAMILIES["fuyu"].converters is FUYU_CONVERTERS
    for name, family in FAMILIES.items():
        for (source, target), converter in family.converters.items():
            assert isinstance(converter, Converter)
            assert (converter.family, converter.source_layout, converter.target_layout) == (name, source, target)


def test_every_entry_has_the_same_signature_and_declares_its_options():
    parameters = inspect.signature(Converter.__call__).parameters
    assert list(parameters) == ["self", "source", "output", "dtype", "max_shard_size", "options"]
    assert parameters["dtype"].default is None and parameters["max_shard_size"].default == DEFAULT_MAX_SHARD_SIZE
    assert parameters["options"].kind is inspect.Parameter.VAR_KEYWORD
    declared = {(c.family, c.source_layout, c.target_layout): c.options for c in ALL_CONVERTERS if c.options}
    assert declared == {
        ("clip", "openai", "mosaic"): ("activation",),
        ("clip", "openai", "transformers"): ("activation",),
        ("fuyu", "transformers", "mosaic"): ("image_newline_token_id",),
    }
    for converter in ALL_CONVERTERS:  # each declared option is a keyword the entry's function takes
        function_parameters = inspect.signature(converter.function).parameters
        assert set(converter.options) <= set(function_parameters)
        assert {"source_layout", "target_layout", "dtype", "max_shard_size"} <= set(function_parameters)


@pytest.fixture(scope="module")
def clip_layouts(tmp_path_factory) -> dict[str, Path]:
    """The same random CLIP in each layout: a mosaic folder, a transformers folder and an OpenAI file."""
    folder = tmp_path_factory.mktemp("clip-layouts")
    config = tiny_clip_config(
        text_config={"eos_token_id": 127, "bos_token_id": 126, **OPENAI_SHAPED}, vision_config=OPENAI_SHAPED
    )
    torch.manual_seed(0)
    model = MosaicClipModel(config).eval()
    model.save_pretrained(folder / "mosaic")
    clip.clip_to_transformers(model).save_pretrained(folder / "transformers")
    safetensors.torch.save_file(clip.clip_to_openai(model), folder / "openai.safetensors")
    return {
        "mosaic": folder / "mosaic",
        "transformers": folder / "transformers",
        "openai": folder / "openai.safetensors",
    }


@pytest.fixture(scope="module")
def fuyu_layouts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fuyu-layouts")
    torch.manual_seed(0)
    MosaicFuyuForCausalLM(tiny_fuyu_config()).save_pretrained(folder / "mosaic")
    FUYU_CONVERTERS["mosaic", "transformers"](folder / "mosaic", folder / "transformers")
    return {"mosaic": folder / "mosaic", "transformers": folder / "transformers"}


def written_tensors(output: Path, layout: str) -> dict[str, torch.Tensor]:
    return file_tensors(output / clip.OPENAI_WEIGHTS_NAME if layout == "openai" else output)


@pytest.mark.parametrize("pair", sorted(CLIP_CONVERTERS), ids="->".join)
def test_every_clip_entry_runs_with_the_shared_signature_bit_for_bit(pair, clip_layouts, tmp_path):
    source, target = pair
    options = {"activation": "quick_gelu"} if source == "openai" else {}
    CLIP_CONVERTERS[pair](clip_layouts[source], tmp_path / "out", dtype=None, max_shard_size="1GB", **options)
    written, expected = written_tensors(tmp_path / "out", target), file_tensors(clip_layouts[target])
    assert sorted(written) == sorted(expected)
    assert all(torch.equal(written[key], expected[key]) for key in expected)


@pytest.mark.parametrize("pair", sorted(FUYU_CONVERTERS), ids="->".join)
def test_every_fuyu_entry_runs_with_the_shared_signature_bit_for_bit(pair, fuyu_layouts, tmp_path):
    source, target = pair
    options = {"image_newline_token_id": NEWLINE} if source == "transformers" else {}
    FUYU_CONVERTERS[pair](
        fuyu_layouts[source], tmp_path / "out", dtype=torch.bfloat16, max_shard_size="10KB", **options
    )
    written, expected = file_tensors(tmp_path / "out"), file_tensors(fuyu_layouts[target])
    assert sorted(written) == sorted(expected)
    assert all(torch.equal(written[key], expected[key].to(torch.bfloat16)) for key in expected)
    assert len(list((tmp_path / "out").glob("*.safetensors"))) > 1  # sharded at 10KB


@pytest.mark.parametrize("converter", ALL_CONVERTERS, ids=lambda c: f"{c.family}:{c.source_layout}->{c.target_layout}")
def test_an_undeclared_option_is_one_clear_error_naming_the_accepted_ones(converter, tmp_path):
    accepted = ", ".join(f"{name}=" for name in ("dtype", "max_shard_size", *converter.options))
    undeclared = "image_newline_token_id" if converter.family == "clip" else "activation"
    message = f"takes no {undeclared}=; it accepts {accepted}."
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        converter(tmp_path / "missing", tmp_path / "out", **{undeclared: 1})
    assert converter.family in str(error.value) and "--" not in str(error.value)
    assert not (tmp_path / "out").exists()  # refused before anything is read or written


def test_option_values_are_checked_in_library_terms(clip_layouts, tmp_path):
    with pytest.raises(ValueError, match=r"activation= must be one of \['gelu', 'quick_gelu'\], got 'relu'"):
        CLIP_CONVERTERS["openai", "mosaic"](clip_layouts["openai"], tmp_path / "out", activation="relu")
    with pytest.raises(ValueError, match="dtype= must be None or one of"):
        CLIP_CONVERTERS["mosaic", "openai"](clip_layouts["mosaic"], tmp_path / "out", dtype=torch.int8)
    with pytest.raises(ValueError, match="A size must be a positive number"):
        CLIP_CONVERTERS["mosaic", "openai"](clip_layouts["mosaic"], tmp_path / "out", max_shard_size="lots")


def test_a_newline_id_the_tokenizer_contradicts_is_named_as_the_library_argument(tmp_path):
    from transformers import FuyuConfig, FuyuForCausalLM

    from mosaic_vlm.processing import train_bpe_tokenizer
    from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS, IMAGE_NEWLINE_TOKEN, IMAGE_TOKEN

    tokenizer = train_bpe_tokenizer(["a photo"] * 4, vocab_size=60, extra_special_tokens=list(FUYU_SPECIAL_TOKENS))
    config = FuyuConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 4},
        patch_size=4, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )  # fmt: skip
    FuyuForCausalLM(config).save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    found = tokenizer.convert_tokens_to_ids(IMAGE_NEWLINE_TOKEN)
    message = f"image_newline_token_id={found + 1} differs from the tokenizer's {IMAGE_NEWLINE_TOKEN} ({found})"
    with pytest.raises(ValueError, match=re.escape(message)):
        FUYU_CONVERTERS["transformers", "mosaic"](tmp_path / "hf", tmp_path / "out", image_newline_token_id=found + 1)


def string_literals(path: Path) -> list[str]:
    """Every string a module writes: constants, and the literal parts of f-strings."""
    return [node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
            and isinstance(node.value, str)]  # fmt: skip


def test_no_library_message_names_a_command_line_flag():
    files = sorted(Path(mosaic_vlm.conversion.__file__).parent.glob("*.py"))
    assert {path.name for path in files} >= {"clip.py", "fuyu.py", "streaming.py", "state_dict_mapping.py"}
    flag = re.compile(r"(?<![\w-])--[a-z][\w-]*")
    found = {path.name: flag.findall(text) for path in files for text in string_literals(path) if flag.search(text)}
    assert found == {}, f"CLI flags in library strings: {found}"
    # the scan sees what it must: a literal with a flag in it is found
    assert flag.findall("pass --newline-token-id 71019") == ["--newline-token-id"]
