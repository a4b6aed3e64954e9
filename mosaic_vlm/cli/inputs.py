"""Reading what a user names on the command line: model folders and image files, each with one clear error."""

import warnings
from pathlib import Path

from mosaic_vlm.conversion.state_dict_mapping import load_folder_strictly
from mosaic_vlm.families import FAMILIES, Family, family_of_model_type


def require_model_folder(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a saved model folder (no config.json); pass a save_pretrained folder.")
    return path


def folder_family(folder: Path) -> Family:
    """The family of a saved mosaic-vlm folder, or one clear error."""
    from transformers import AutoConfig

    require_model_folder(folder)
    try:
        model_type = AutoConfig.from_pretrained(folder, local_files_only=True).model_type
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{folder} holds no readable config.json: {error}") from error
    family = family_of_model_type(model_type)
    if family is None:
        known = " or ".join(family.model_type for family in FAMILIES.values())
        raise ValueError(f"{folder} holds a {model_type!r} model, not a mosaic-vlm one ({known}).")
    return family


def load_model_folder(folder: Path, family_name: str, command: str):
    """The model (loaded strictly, in eval mode) and processor of a saved folder of the family named
    `family_name`, or one clear error."""
    from transformers import AutoProcessor

    family, found = FAMILIES[family_name], folder_family(folder)
    if found != family:
        raise ValueError(f"{command} needs a {family.title} model folder; {folder} holds a {found.title} one.")
    if not (folder / "processor_config.json").is_file():
        raise ValueError(f"{folder} has no processor (processor_config.json); save the processor into the folder.")
    return load_folder_strictly(folder, family.config_class, family.model_class).eval(), AutoProcessor.from_pretrained(
        folder
    )


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
