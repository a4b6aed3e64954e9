"""Reading what a user names on the command line: model folders and image files, each with one clear error."""

from pathlib import Path


def require_model_folder(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a saved model folder (no config.json); pass a save_pretrained folder.")
    return path


def load_fuyu_folder(folder: Path, command: str):
    """The Fuyu-style model and processor of a saved folder, or one clear error."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    require_model_folder(folder)
    model_type = AutoConfig.from_pretrained(folder).model_type
    if model_type != "mosaic_fuyu":
        raise ValueError(f"{command} needs a Fuyu-style model folder; {folder} holds a {model_type} model.")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def open_image(path: Path):
    import PIL.Image

    if not path.is_file():
        raise ValueError(f"image file {path} does not exist.")
    try:
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
    except PIL.UnidentifiedImageError as error:
        raise ValueError(f"{path} is not an image file PIL can read.") from error
