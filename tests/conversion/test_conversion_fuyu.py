"""Fuyu converters: transformers <-> mosaic logits and greedy parity, strict loads, refusals, processor."""

import pytest
import torch
import transformers
from tiny import IMAGE, NEWLINE, tiny_fuyu_config, varied_batch

from mosaic_vlm.conversion.fuyu import (
    config_to_transformers,
    fuyu_from_transformers,
    fuyu_processor_from_transformers,
    fuyu_to_transformers,
)
from mosaic_vlm.modeling import MosaicFuyuForCausalLM
from mosaic_vlm.modeling.mosaic_transformers_compat import TRANSFORMERS_FUYU_PATCHES_ARGUMENT
from mosaic_vlm.processing import train_bpe_tokenizer


@pytest.fixture(scope="module")
def mosaic_model():
    torch.manual_seed(0)
    return MosaicFuyuForCausalLM._from_config(tiny_fuyu_config(), attn_implementation="eager").eval()


def test_round_trip_through_transformers_is_bit_exact_with_equal_logits_and_tokens(mosaic_model, tmp_path):
    exported = fuyu_to_transformers(mosaic_model)
    assert isinstance(exported, transformers.FuyuForCausalLM)
    back = fuyu_from_transformers(exported, image_newline_token_id=NEWLINE)
    for name, tensor in mosaic_model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    inputs = varied_batch(3)
    with torch.no_grad():
        ours = mosaic_model(**inputs).logits
        real = inputs["attention_mask"].bool()
        theirs = exported(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=(inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0),
            **{TRANSFORMERS_FUYU_PATCHES_ARGUMENT: inputs["pixel_values"][inputs["image_patches_mask"]][None]},
        ).logits
    assert (ours[real] - theirs[real]).abs().max() <= 1e-4
    exported.save_pretrained(tmp_path)
    from_folder = fuyu_from_transformers(tmp_path, image_newline_token_id=NEWLINE)
    assert from_folder.config.image_newline_token_id == NEWLINE and from_folder.config.image_token_id == IMAGE


def test_strict_load_lists_the_keys(mosaic_model):
    from mosaic_vlm.conversion.streaming import StateDictCheckpoint, load_converted

    state = dict(fuyu_to_transformers(mosaic_model).state_dict())
    state["model.extra.weight"] = torch.zeros(1)
    del state["lm_head.weight"]
    with pytest.raises(ValueError, match="no place for: model.extra.weight.*missing target keys: lm_head.weight"):
        load_converted(
            MosaicFuyuForCausalLM, mosaic_model.config, StateDictCheckpoint(state), None, "transformers Fuyu"
        )


def test_the_checks_refuse_a_broken_conversion(mosaic_model, monkeypatch):
    import mosaic_vlm.conversion.fuyu as fuyu_conversion

    real_load = fuyu_conversion.load_converted

    def corrupting_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(1.5)
        return model

    monkeypatch.setattr(fuyu_conversion, "load_converted", corrupting_load)
    with pytest.raises(ValueError, match="Logit check failed"):
        fuyu_to_transformers(mosaic_model)


def test_config_mapping_and_refusals(mosaic_model):
    config = config_to_transformers(mosaic_model.config)
    assert config.text_config.rope_parameters["rope_theta"] == mosaic_model.config.rope_theta
    config.text_config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 25000.0}
    from mosaic_vlm.conversion.fuyu import config_from_transformers

    with pytest.raises(ValueError, match="Only the default rotary embedding converts"):
        config_from_transformers(config)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fuyu_from_transformers("/no/such/folder")
    with pytest.raises(ValueError, match="is not a folder; pass a save_pretrained folder"):
        fuyu_from_transformers(__file__)


def test_processor_from_a_fuyu_tokenizer_and_image_processor_config():
    from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

    tokens = ["|SPEAKER|", "|NEWLINE|", "<0x04>", "<0x00>", "<0x01>", "<0x02>", "<0x03>"]
    tokenizer = train_bpe_tokenizer(["a photo"] * 4, vocab_size=60, extra_special_tokens=tokens)
    processor = fuyu_processor_from_transformers(tokenizer, FuyuImageProcessorPil().to_dict())
    assert processor.image_processor.patch_size == 30
    assert dict(processor.image_processor.size) == {"height": 1080, "width": 1920}
    assert processor.image_processor.padding_value == 1.0
    with pytest.raises(ValueError, match="lacks Fuyu's special token"):
        fuyu_processor_from_transformers(train_bpe_tokenizer(["a photo"] * 4, vocab_size=40), {})


def test_cli_converts_fuyu_both_ways_and_exports_clip(mosaic_model, tmp_path, capsys):
    from tiny import convert_argv, tiny_clip_config

    from mosaic_vlm.cli.main import main
    from mosaic_vlm.modeling import MosaicClipModel

    mosaic_model.save_pretrained(tmp_path / "mosaic")
    assert main(convert_argv("fuyu", "mosaic", "transformers", tmp_path / "mosaic", tmp_path / "hf")) == 0
    newline = ("--newline-token-id", str(NEWLINE))
    assert main(convert_argv("fuyu", "transformers", "mosaic", tmp_path / "hf", tmp_path / "back", *newline)) == 0
    back = MosaicFuyuForCausalLM.from_pretrained(tmp_path / "back")
    for name, tensor in mosaic_model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    assert "greedy generation" in capsys.readouterr().err
    assert main(convert_argv("fuyu", "openai", "mosaic", tmp_path / "hf", tmp_path / "x")) == 2
    assert not (tmp_path / "x").exists()

    MosaicClipModel(tiny_clip_config()).save_pretrained(tmp_path / "clip")
    assert main(convert_argv("clip", "mosaic", "transformers", tmp_path / "clip", tmp_path / "clip-hf")) == 0
    assert transformers.CLIPModel.from_pretrained(tmp_path / "clip-hf") is not None
