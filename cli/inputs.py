"""Reading what a user names on the command line: model folders and image files, each with one clear error."""

import warnings
from pathlib import Path

from mosaic_vlm.conversion.state_dict_mapping import load_folder_strictly
from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel, MosaicFuyuConfig, MosaicFuyuForCausalLM

# family -> (config class, model class, how the family is named in errors)
FAMILIES = {
    "clip": (MosaicClipConfig, MosaicClipModel, "CLIP-style"),
    "fuyu": (MosaicFuyuConfig, MosaicFuyuForCausalLM, "Fuyu-style"),
}


def require_model_folder(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a saved model folder (no config.json); pass a save_pretrained folder.")
    return path


def folder_family(folder: Path) -> str:
    """The family ("clip" or "fuyu") of a saved mosaic-vlm folder, or one clear error."""
    from transformers import AutoConfig

    require_model_folder(folder)
    try:
        model_type = AutoConfig.from_pretrained(folder, local_files_only=True).model_type
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{folder} holds no readable config.json: {error}") from error
    for family, (config_class, _, _) in FAMILIES.items():
        if model_type == config_class.model_type:
            return family
    raise ValueError(f"{folder} holds a {model_type!r} model, not a mosaic-vlm one (mosaic_clip or mosaic_fuyu).")


def load_model_folder(folder: Path, family: str, command: str):
    """The model (loaded strictly, in eval mode) and processor of a saved folder of `family`, or one clear error."""
    from transformers import AutoProcessor

    config_class, model_class, family_name = FAMILIES[family]
    found = folder_family(folder)
    if found != family:
        raise ValueError(f"{command} needs a {family_name} model folder; {folder} holds a {FAMILIES[found][2]} one.")
    if not (folder / "processor_config.json").is_file():
        raise ValueError(f"{folder} has no processor (processor_config.json); save the processor into the folder.")
    return load_folder_strictly(folder, config_class, model_class).eval(), AutoProcessor.from_pretrained(folder)


def open_image(path: Path):
    """An image file as an RGB PIL image; files PIL cannot read, truncated files and images above PIL's
    decompression-bomb limit are one clear error."""
    import PIL.Image

    if not path.is_file():
        raise ValueError(f"image file {path} does not exist.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as image:
                return image.convert("RGB")
    except PIL.UnidentifiedImageError as error:
        raise ValueError(f"{path} is not an image file PIL can read.") from error
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        raise ValueError(
            f"{path} is too large: more than {PIL.Image.MAX_IMAGE_PIXELS} pixels (PIL's limit against "
            "decompression bombs); resize it first."
        ) from error
    except OSError as error:
        raise ValueError(f"{path} could not be read as an image (truncated or damaged): {error}") from error
