"""The model families: one entry each, the only table that names them.

The package root registers each entry with transformers' Auto API, the model card reads its pipeline tag, title,
figures and usage snippet, and the CLI reads its name (`--model`), the class it loads and its converters. Adding a
family means its model, config and processor files plus one `Family` row here.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
)

from mosaic_vlm.conversion import CLIP_CONVERTERS, FUYU_CONVERTERS, Converter
from mosaic_vlm.modeling import (
    MosaicClipConfig,
    MosaicClipModel,
    MosaicClipTextConfig,
    MosaicClipTextModel,
    MosaicClipTextModelWithProjection,
    MosaicClipVisionConfig,
    MosaicClipVisionModel,
    MosaicClipVisionModelWithProjection,
    MosaicFuyuConfig,
    MosaicFuyuForCausalLM,
    MosaicFuyuModel,
)
from mosaic_vlm.processing import (
    MosaicClipImageProcessor,
    MosaicClipProcessor,
    MosaicFuyuImageProcessor,
    MosaicFuyuProcessor,
)


@dataclass(frozen=True)
class Family:
    name: str  # the CLI's --model choice
    title: str  # how cards and errors name the family
    config_class: type
    model_class: type  # the class the CLI loads, pushes and pulls
    image_processor_class: type
    processor_class: type
    # (Auto class, config class, model class): what `from_pretrained` resolves natively
    auto_models: tuple[tuple[type, type, type], ...]
    # model class -> the Auto class its remote code is saved under (config.auto_map)
    remote_code_classes: tuple[tuple[type, str], ...]
    sub_config_classes: tuple[type, ...]  # configs of the towers, registered with AutoConfig too
    pipeline_tag: str  # the Hub card's task
    usage_snippet: str  # the Hub card's runnable example; {repo_id} is filled in
    key_figures: Callable[[object], dict[str, str]]  # config -> the card's shape figures
    # (source layout, target layout) -> the converter `mosaic-vlm convert` runs; a dict, so left out of the hash
    converters: dict[tuple[str, str], Converter] = field(hash=False)

    @property
    def model_type(self) -> str:
        return self.config_class.model_type


def clip_figures(config: MosaicClipConfig) -> dict[str, str]:
    vision, text = config.vision_config, config.text_config
    return {
        "image size / patch size": f"{vision.image_size} / {vision.patch_size}",
        "vision tower (width x layers)": f"{vision.hidden_size} x {vision.num_hidden_layers}",
        "text tower (width x layers)": f"{text.hidden_size} x {text.num_hidden_layers}",
        "embedding size": str(config.projection_dim),
        "text vocabulary / max length": f"{text.vocab_size} / {text.max_position_embeddings}",
        "loss": config.loss_type,
    }


def fuyu_figures(config: MosaicFuyuConfig) -> dict[str, str]:
    return {
        "decoder (width x layers x heads)": (
            f"{config.hidden_size} x {config.num_hidden_layers} x {config.num_attention_heads}"
        ),
        "patch size": str(config.patch_size),
        "vocabulary / max length": f"{config.vocab_size} / {config.max_position_embeddings}",
    }


CLIP = Family(
    name="clip",
    title="CLIP-style dual encoder",
    config_class=MosaicClipConfig,
    model_class=MosaicClipModel,
    image_processor_class=MosaicClipImageProcessor,
    processor_class=MosaicClipProcessor,
    auto_models=(
        (AutoModel, MosaicClipConfig, MosaicClipModel),
        (AutoModel, MosaicClipTextConfig, MosaicClipTextModel),
        (AutoModel, MosaicClipVisionConfig, MosaicClipVisionModel),
        (AutoModelForZeroShotImageClassification, MosaicClipConfig, MosaicClipModel),
    ),
    remote_code_classes=(
        (MosaicClipModel, "AutoModel"),
        (MosaicClipTextModel, "AutoModel"),
        (MosaicClipVisionModel, "AutoModel"),
        (MosaicClipTextModelWithProjection, "AutoModel"),
        (MosaicClipVisionModelWithProjection, "AutoModel"),
    ),
    sub_config_classes=(MosaicClipTextConfig, MosaicClipVisionConfig),
    pipeline_tag="zero-shot-image-classification",
    usage_snippet="""```python
from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="{repo_id}", trust_remote_code=True)
print(classifier("photo.png", candidate_labels=["a photo of a cat", "a photo of a dog"]))
```""",
    key_figures=clip_figures,
    converters=CLIP_CONVERTERS,
)

FUYU = Family(
    name="fuyu",
    title="Fuyu-style decoder",
    config_class=MosaicFuyuConfig,
    model_class=MosaicFuyuForCausalLM,
    image_processor_class=MosaicFuyuImageProcessor,
    processor_class=MosaicFuyuProcessor,
    auto_models=(
        (AutoModel, MosaicFuyuConfig, MosaicFuyuModel),
        (AutoModelForCausalLM, MosaicFuyuConfig, MosaicFuyuForCausalLM),
        (AutoModelForImageTextToText, MosaicFuyuConfig, MosaicFuyuForCausalLM),
    ),
    remote_code_classes=((MosaicFuyuModel, "AutoModel"), (MosaicFuyuForCausalLM, "AutoModelForCausalLM")),
    sub_config_classes=(),
    pipeline_tag="image-text-to-text",
    usage_snippet="""```python
import PIL.Image
from transformers import AutoModelForCausalLM, AutoProcessor

processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)
inputs = processor(images=PIL.Image.open("photo.png"), text="What digit is this?")
print(processor.post_process_image_text_to_text(model.generate(**inputs, max_new_tokens=8))[0])
```""",
    key_figures=fuyu_figures,
    converters=FUYU_CONVERTERS,
)

FAMILIES: dict[str, Family] = {family.name: family for family in (CLIP, FUYU)}


def family_of_model_type(model_type: str) -> Family | None:
    """The family whose main config has `model_type`, or None."""
    return next((family for family in FAMILIES.values() if family.model_type == model_type), None)
