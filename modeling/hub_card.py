"""The model card every mosaic push writes: huggingface_hub's ModelCard with library_name, pipeline_tag,
the model's key figures and a runnable usage snippet."""

from huggingface_hub import ModelCard, ModelCardData

CLIP_SNIPPET = """```python
from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="{repo_id}", trust_remote_code=True)
print(classifier("photo.png", candidate_labels=["a photo of a cat", "a photo of a dog"]))
```"""

FUYU_SNIPPET = """```python
import PIL.Image
from transformers import AutoModelForCausalLM, AutoProcessor

processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)
inputs = processor(images=PIL.Image.open("photo.png"), text="What digit is this?")
print(processor.post_process_image_text_to_text(model.generate(**inputs, max_new_tokens=8))[0])
```"""

CARD_TEMPLATE = """---
{card_data}
---

# {repo_id}

A {family} model of [mosaic-vlm](https://github.com/mosaic-vlm/mosaic-vlm): an image is a mosaic of
patch "words" that attention reads. It loads with transformers' Auto classes and `trust_remote_code=True`
(the modeling code ships in this repository), or natively after `pip install mosaic-vlm`.

## Key figures

| figure | value |
|---|---|
{figures}

## Usage

{snippet}
"""


def key_figures(model) -> dict[str, str]:
    """Parameter count and the shapes that define the model."""
    config = model.config
    figures = {"parameters": f"{model.num_parameters():,}", "model_type": config.model_type}
    if config.model_type == "mosaic_clip":
        vision, text = config.vision_config, config.text_config
        figures |= {
            "image size / patch size": f"{vision.image_size} / {vision.patch_size}",
            "vision tower (width x layers)": f"{vision.hidden_size} x {vision.num_hidden_layers}",
            "text tower (width x layers)": f"{text.hidden_size} x {text.num_hidden_layers}",
            "embedding size": str(config.projection_dim),
            "text vocabulary / max length": f"{text.vocab_size} / {text.max_position_embeddings}",
            "loss": config.loss_type,
        }
    else:
        figures |= {
            "decoder (width x layers x heads)": (
                f"{config.hidden_size} x {config.num_hidden_layers} x {config.num_attention_heads}"
            ),
            "patch size": str(config.patch_size),
            "vocabulary / max length": f"{config.vocab_size} / {config.max_position_embeddings}",
        }
    return figures


def model_card(model, repo_id: str) -> ModelCard:
    clip = model.config.model_type == "mosaic_clip"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification" if clip else "image-text-to-text",
        tags=["mosaic-vlm", model.config.model_type, "custom_code"],
    )
    figures = "\n".join(f"| {name} | {value} |" for name, value in key_figures(model).items())
    return ModelCard(
        CARD_TEMPLATE.format(
            card_data=card_data.to_yaml(),
            repo_id=repo_id,
            family="CLIP-style dual encoder" if clip else "Fuyu-style decoder",
            figures=figures,
            snippet=(CLIP_SNIPPET if clip else FUYU_SNIPPET).format(repo_id=repo_id),
        )
    )
