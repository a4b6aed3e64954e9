"""Reading what a user names on the command line: model folders and image files, each with one clear error."""

import os
from pathlib import Path

from safetensors import SafetensorError

from mosaic_vlm.conversion.state_dict_mapping import load_config_strictly
from mosaic_vlm.families import FAMILIES, Family, family_of_model_type


def load_folder_strictly(path: str | os.PathLike, config_class, model_class):
    """A `model_class` from a local save_pretrained folder whose config is a `config_class` (a transformers or a
    mosaic folder), loaded strictly from safetensors only: a folder of another model type, or with missing,
    extra or mis-shaped weights, is one ValueError (FileNotFoundError for a missing path), never random weights."""
    path, name = Path(path), model_class.__name__
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is not a folder; pass the save_pretrained folder of a {name}.")
    try:
        config = load_config_strictly(path, config_class)
    except ValueError as error:
        raise ValueError(f"{error} (expected a {name})") from error
    try:
        model, info = model_class.from_pretrained(
            path, config=config, local_files_only=True, use_safetensors=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ValueError(f"Cannot load the {name} weights in {path} (safetensors only): {error}") from error
    problems = {kind: sorted(map(str, keys)) for kind, keys in info.items() if keys}
    if problems:
        raise ValueError(f"{path} does not load strictly into {name}: {problems}.")
    return model


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
