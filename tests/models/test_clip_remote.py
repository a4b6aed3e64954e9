"""Auto API, zero-shot pipeline, and remote code in a Python where mosaic_vlm cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import BLOCK_MOSAIC_VLM, tiny_clip_config
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
    pipeline,
)

from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel
from mosaic_vlm.processing import MosaicClipImageProcessor, MosaicClipProcessor


@pytest.fixture(scope="module")
def saved_clip(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    model = MosaicClipModel._from_config(tiny_clip_config(), attn_implementation="sdpa").eval()
    image_processor = MosaicClipImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = MosaicClipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def test_auto_classes_load_the_saved_folder(saved_clip, photos):
    folder, model, processor = saved_clip
    assert isinstance(AutoConfig.from_pretrained(folder), MosaicClipConfig)
    assert isinstance(AutoImageProcessor.from_pretrained(folder), MosaicClipImageProcessor)
    assert isinstance(AutoProcessor.from_pretrained(folder), MosaicClipProcessor)
    assert AutoTokenizer.from_pretrained(folder).get_vocab() == processor.tokenizer.get_vocab()
    inputs = processor(images=photos["cat"], text=["a photo of a cat", "a photo of a dog"])
    with torch.no_grad():
        # loaded weights can sit at other memory alignments than fresh ones, which changes float rounding in
        # the kernels (~1e-7): the model as built is matched closely, every load of the file bit-exactly
        expected = MosaicClipModel.from_pretrained(folder).eval()(**inputs).logits_per_image
        torch.testing.assert_close(model(**inputs).logits_per_image, expected, atol=1e-6, rtol=1e-6)
        for auto_class in (AutoModel, AutoModelForZeroShotImageClassification):
            loaded = auto_class.from_pretrained(folder).eval()
            assert isinstance(loaded, MosaicClipModel)
            assert torch.equal(loaded(**inputs).logits_per_image, expected)


def test_zero_shot_pipeline(saved_clip, photos):
    folder, model, processor = saved_clip
    labels = ["a photo of a cat", "a photo of a dog", "a cup of coffee"]
    image = PIL.Image.fromarray(photos["cat"])
    results = pipeline("zero-shot-image-classification", model=str(folder))(
        image, candidate_labels=labels, hypothesis_template="{}"
    )
    scores = [result["score"] for result in results]
    assert sorted(scores, reverse=True) == scores and abs(sum(scores) - 1) < 1e-5
    with torch.no_grad():
        probabilities = model(**processor(images=image, text=labels)).logits_per_image.softmax(-1)[0]
    by_label = {result["label"]: result["score"] for result in results}
    for label, probability in zip(labels, probabilities.tolist()):
        assert by_label[label] == pytest.approx(probability, abs=1e-5)


@pytest.mark.slow
def test_remote_code_loads_where_mosaic_vlm_is_not_importable(saved_clip, photos, tmp_path):
    folder, model, processor = saved_clip
    for name in (
        "configuration_mosaic_clip.py",
        "modeling_mosaic_clip.py",
        "config_checks.py",
        "mosaic_pretrained.py",
        "image_processing_mosaic_clip.py",
        "processing_mosaic_clip.py",
        "mosaic_processing_common.py",
    ):
        assert (folder / name).is_file(), name
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForZeroShotImageClassification"}
    processor_map = json.loads((folder / "processor_config.json").read_text())
    assert "AutoProcessor" in json.dumps(processor_map)

    texts = ["a photo of a cat", "a photo of a dog"]
    inputs = processor(images=photos["cat"], text=texts)
    save_file({name: tensor.contiguous() for name, tensor in inputs.items()}, tmp_path / "inputs.safetensors")
    PIL.Image.fromarray(photos["cat"]).save(tmp_path / "cat.png")
    script = BLOCK_MOSAIC_VLM + textwrap.dedent(
        f"""
        import PIL.Image, torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor

        folder = {str(folder)!r}
        inputs = load_file({str(tmp_path / "inputs.safetensors")!r})
        outputs = {{}}
        with torch.no_grad():
            for name, auto_class in (("auto", AutoModel), ("zero_shot", AutoModelForZeroShotImageClassification)):
                model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
                assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
                outputs[name] = model(**inputs).logits_per_image
            processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
            assert type(processor).__name__ == "MosaicClipProcessor"
            processed = processor(images=PIL.Image.open({str(tmp_path / "cat.png")!r}), text={texts!r})
            outputs["processed"] = model(**processed).logits_per_image
        save_file(outputs, {str(tmp_path / "outputs.safetensors")!r})
        """
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = load_file(tmp_path / "outputs.safetensors")
    with torch.no_grad():
        expected = MosaicClipModel.from_pretrained(folder).eval()(**inputs).logits_per_image
    for name in ("auto", "zero_shot", "processed"):
        assert torch.equal(outputs[name], expected), name
