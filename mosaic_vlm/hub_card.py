"""The model card every mosaic push writes: huggingface_hub's ModelCard with library_name, pipeline_tag,
the model's key figures and a runnable usage snippet, all read from the model's family entry."""

from huggingface_hub import ModelCard, ModelCardData

from .families import Family

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


def model_card(family: Family, model, repo_id: str) -> ModelCard:
    """The card of `model`, a model of `family`, pushed to `repo_id`."""
    config = model.config
    figures = {"parameters": f"{model.num_parameters():,}", "model_type": config.model_type}
    figures |= family.key_figures(config)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=family.pipeline_tag,
        tags=["mosaic-vlm", config.model_type, "custom_code"],
    )
    return ModelCard(
        CARD_TEMPLATE.format(
            card_data=card_data.to_yaml(),
            repo_id=repo_id,
            family=family.title,
            figures="\n".join(f"| {name} | {value} |" for name, value in figures.items()),
            snippet=family.usage_snippet.format(repo_id=repo_id),
        )
    )
