"""Reading what a user names on the command line: model folders and image files, each with one clear error.

Everything here runs at the door, before any model is built: the JSON files a folder holds are read by us first
(objects of the right types and sizes, a known model type, classes that need no remote code), a shard index may
name only files beside it, and the weights' headers must fit the config (layer counts, then every tensor's shape
against the model built on the meta device), so that an absurd config is refused before a layer takes memory.
"""

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

from mosaic_vlm.families import FAMILIES, Family, family_of_model_type
from mosaic_vlm.processing.mosaic_processing_common import MAX_IMAGE_PIXELS

CONFIG_NAME = "config.json"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
TOKENIZER_NAME = "tokenizer.json"
# the config fields that count layers: a model with N layers has at least N weight tensors
LAYER_COUNT_FIELDS = ("num_hidden_layers",)
# what building a config or a model from a folder's values raises when they are of the wrong types or sizes
CONFIG_ERRORS = (
    TypeError,
    ValueError,
    KeyError,
    AttributeError,
    ArithmeticError,
    RecursionError,
    StrictDataclassError,
)


def read_json_object(path: Path) -> dict:
    """The JSON object in the file `path`, or one ValueError."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ValueError(f"{path} is not a readable JSON file: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, not a {type(data).__name__}.")
    return data


def check_shard_index(folder: Path) -> None:
    """A shard index (model.safetensors.index.json) may name only .safetensors files beside it: a name with a
    folder in it, `..` or an absolute path would read a file outside the folder."""
    index = Path(folder) / WEIGHTS_INDEX_NAME
    if not index.is_file():
        return
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(key, str) and isinstance(name, str) for key, name in weight_map.items()
    ):
        raise ValueError(f"{index} needs a 'weight_map' of tensor name -> file name (strings).")
    for name in sorted(set(weight_map.values())):
        parts = PurePosixPath(name).parts
        if len(parts) != 1 or name in (".", "..") or "\\" in name or os.path.isabs(name):
            raise ValueError(
                f"{index} names the file {name!r}, outside its folder; a shard index may name only files beside it."
            )
        if not name.endswith(".safetensors"):
            raise ValueError(f"{index} names {name!r}; weights are read only from .safetensors files.")


def require_model_folder(path: Path) -> Path:
    if not (path / CONFIG_NAME).is_file():
        raise ValueError(f"{path} is not a saved model folder (no config.json); pass a save_pretrained folder.")
    return path


def read_config_json(folder: Path) -> dict:
    """config.json of a model folder as a JSON object whose sub-configs are objects too."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass a save_pretrained folder.")
    require_model_folder(folder)
    data = read_json_object(folder / CONFIG_NAME)
    if not isinstance(data.get("model_type"), str):
        raise ValueError(f"{folder / CONFIG_NAME} names no model_type (a string); is it a model's config?")
    for key, value in data.items():
        if key.endswith("_config") and key != "quantization_config" and not isinstance(value, (dict, type(None))):
            raise ValueError(f"{folder / CONFIG_NAME}: {key} must be an object, not a {type(value).__name__}.")
    return data


def load_config_at_door(folder: Path, config_class):
    """The config of a local save_pretrained folder, which must be a `config_class` (by model type, read before
    transformers sees the file: no remote code can be asked for), with fields of the right types; one ValueError
    (FileNotFoundError for a missing path) otherwise."""
    folder = Path(folder)
    data = read_config_json(folder)
    if data["model_type"] != config_class.model_type:
        raise ValueError(f"{folder} holds a {data['model_type']!r} model; expected a {config_class.model_type!r} one.")
    try:
        return config_class.from_pretrained(folder, local_files_only=True)
    except (*CONFIG_ERRORS, OSError) as error:
        message = " ".join(str(error).split())
        raise ValueError(f"{folder / CONFIG_NAME} is not a valid {config_class.__name__}: {message}") from None


def read_weight_headers(path: Path, what: str):
    """The safetensors checkpoint at `path` (a file, or a folder with model.safetensors or shards), headers read
    only; one ValueError for a missing, damaged or outside-the-folder file."""
    from mosaic_vlm.conversion.streaming import LazyCheckpoint

    if Path(path).is_dir():
        check_shard_index(path)
    try:
        return LazyCheckpoint(path)
    except (ValueError, OSError, SafetensorError) as error:
        raise ValueError(f"Cannot load the {what} weights in {path} (safetensors only): {error}") from None


def _configs(config) -> Iterable[tuple[str, object]]:
    """A config and its sub-configs (the towers), each with the prefix naming it."""
    yield "", config
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if sub is not None:
            yield f"{name}.", sub


def require_layers_fit_weights(config, checkpoint, where: Path) -> None:
    """Every layer count of `config` (and its sub-configs) is at most the number of tensors in the weights: an
    absurd count is refused before a model with that many layers is built, even on the meta device."""
    for prefix, sub in _configs(config):
        for field in LAYER_COUNT_FIELDS:
            value = getattr(sub, field, None)
            if isinstance(value, int) and value > len(checkpoint):
                raise ValueError(
                    f"{where}: {prefix}{field} = {value}, but the weights hold only {len(checkpoint)} tensors; "
                    "the config does not describe these weights."
                )


def require_weights_fit_config(folder: Path, config, model_class):
    """The weights' headers against `model_class(config)` built on the meta device (no memory): the same tensor
    names (tied ones may be left out) and shapes, or one ValueError naming what differs. Returns the checkpoint."""
    import torch

    folder, name = Path(folder), model_class.__name__
    checkpoint = read_weight_headers(folder, name)
    require_layers_fit_weights(config, checkpoint, folder / CONFIG_NAME)
    try:
        with torch.device("meta"):
            model = model_class(config)
    except (*CONFIG_ERRORS, RuntimeError) as error:
        raise ValueError(f"{folder / CONFIG_NAME} does not make a {name}: {error}") from None
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    tied = set(getattr(model, "all_tied_weights_keys", None) or ())
    found = {key: tuple(checkpoint.shape(key)) for key in checkpoint}
    problems = []
    mismatched = sorted(
        f"{key} {found[key]} (the config makes {expected[key]})"
        for key in found.keys() & expected.keys()
        if found[key] != expected[key]
    )
    if mismatched:
        problems.append(f"shapes that differ: {', '.join(mismatched[:5])}")
    extra = sorted(found.keys() - expected.keys())
    if extra:
        problems.append(f"tensors the model has no place for: {', '.join(extra[:5])}")
    missing = sorted(expected.keys() - found.keys() - tied)
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:5])}")
    if problems:
        raise ValueError(f"The weights in {folder} do not fit its config.json ({name}): {'; '.join(problems)}.")
    return checkpoint


# -------------------------------------------------------------------------------- processor and tokenizer files

_BOOLEAN_SETTINGS = (
    "do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb", "do_pad", "default_to_square",
)  # fmt: skip
_SIZE_SETTINGS = ("size", "crop_size", "patch_size")
_MEAN_SETTINGS = ("image_mean", "image_std")
_RESAMPLE_FILTERS = range(6)  # PIL's NEAREST .. LANCZOS


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_image_settings(settings: Mapping, where: str) -> None:
    """The image-processing settings a processor file holds, checked by type and size: switches are booleans,
    sizes positive whole numbers (or objects of them) within MAX_IMAGE_PIXELS, means and deviations a number or
    one per channel, the rescale factor a positive number, the resampling filter one of PIL's."""

    def refuse(key: str, expected: str) -> None:
        raise ValueError(f"{where}: {key} must be {expected}, got {json.dumps(settings[key])[:80]}.")

    for key in _BOOLEAN_SETTINGS:
        if key in settings and not isinstance(settings[key], bool):
            refuse(key, "true or false")
    for key in _SIZE_SETTINGS:
        if key not in settings or settings[key] is None:
            continue
        value = settings[key]
        sides = list(value.values()) if isinstance(value, dict) else [value]
        if not sides or not all(_is_positive_int(side) for side in sides):
            refuse(key, "a positive whole number or an object of them (height, width, shortest_edge, ...)")
        both = isinstance(value, dict) and {"height", "width"} <= set(value)
        if (value["height"] * value["width"] if both else max(sides) ** 2) > MAX_IMAGE_PIXELS:
            refuse(key, f"at most MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} pixels")
    for key in _MEAN_SETTINGS:
        if key not in settings or settings[key] is None:
            continue
        value = settings[key]
        values = value if isinstance(value, list) else [value]
        if len(values) not in (1, 3) or not all(_is_number(item) for item in values):
            refuse(key, "a number or a list of 1 or 3 numbers (one per channel)")
        if key == "image_std" and any(item == 0 for item in values):
            refuse(key, "non-zero")
    factor = settings.get("rescale_factor", 1)
    if not (_is_number(factor) and factor > 0):
        refuse("rescale_factor", "a positive number")
    if "padding_value" in settings and not _is_number(settings["padding_value"]):
        refuse("padding_value", "a number")
    if "resample" in settings and settings["resample"] is not None:
        value = settings["resample"]
        if not (isinstance(value, int) and not isinstance(value, bool) and value in _RESAMPLE_FILTERS):
            refuse("resample", "one of PIL's resampling filters, 0 to 5")


def _known_class(name: str, local: Iterable[str] = ()) -> bool:
    """Whether the class `name` is one transformers or mosaic-vlm provides (no remote code needed)."""
    import transformers

    if name in set(local):
        return True
    return any(hasattr(transformers, candidate) for candidate in {name, name.removesuffix("Fast")})


def check_tokenizer_files(folder: Path, trust_remote_code: bool = False) -> None:
    """tokenizer_config.json and tokenizer.json of a folder, where present: objects of the right types, a
    tokenizer class that needs no remote code (unless `trust_remote_code`), and a tokenizer.json the tokenizers
    library reads."""
    folder = Path(folder)
    config_path = folder / TOKENIZER_CONFIG_NAME
    if config_path.is_file():
        config = read_json_object(config_path)

        def refuse(key: str, expected: str) -> None:
            raise ValueError(f"{config_path}: {key} must be {expected}, got {json.dumps(config[key])[:80]}.")

        if "model_max_length" in config and not _is_positive_int(config["model_max_length"]):
            refuse("model_max_length", "a positive whole number")
        for key, value in config.items():
            added_token = isinstance(value, dict) and isinstance(value.get("content"), str)
            if key.endswith("_token") and not (value is None or isinstance(value, str) or added_token):
                refuse(key, "a string (or an added-token object with its content)")
        for key in ("extra_special_tokens", "additional_special_tokens"):
            value = config.get(key)
            items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
            if value is not None and (items is None or not all(isinstance(item, (str, dict, list)) for item in items)):
                refuse(key, "a list of tokens (strings) or an object of them")
        for key in ("padding_side", "truncation_side"):
            if key in config and config[key] not in ("left", "right"):
                refuse(key, "'left' or 'right'")
        if "added_tokens_decoder" in config and not isinstance(config["added_tokens_decoder"], dict):
            refuse("added_tokens_decoder", "an object")
        tokenizer_class = config.get("tokenizer_class")
        if tokenizer_class is not None:
            if not isinstance(tokenizer_class, str):
                refuse("tokenizer_class", "a class name")
            if not trust_remote_code and not _known_class(tokenizer_class):
                raise ValueError(
                    f"{config_path} names the tokenizer class {tokenizer_class!r}, which neither transformers nor "
                    "mosaic-vlm provides: loading it would run code from the folder (pass --trust-remote-code to "
                    "allow that)."
                )
    tokenizer_path = folder / TOKENIZER_NAME
    if tokenizer_path.is_file():
        data = read_json_object(tokenizer_path)
        if not isinstance(data.get("added_tokens", []), list) or not isinstance(data.get("model"), dict):
            raise ValueError(f"{tokenizer_path} is not a tokenizers file: it needs a 'model' object, 'added_tokens'.")
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(tokenizer_path))
        except Exception as error:  # the tokenizers library raises a bare Exception for every malformed file
            raise ValueError(f"{tokenizer_path} cannot be read by the tokenizers library: {error}") from None


def check_processor_files(folder: Path, family: Family | None = None, trust_remote_code: bool = False) -> None:
    """The processor's files in a folder (processor_config.json or preprocessor_config.json, and the tokenizer's):
    objects of the right types and sizes naming classes that need no remote code (`family`'s own when given)."""
    folder = Path(folder)
    local = () if family is None else (family.processor_class.__name__, family.image_processor_class.__name__)
    for name in PROCESSOR_FILES:
        path = folder / name
        if not path.is_file():
            continue
        data = read_json_object(path)
        settings = data.get("image_processor", data)
        if not isinstance(settings, dict):
            raise ValueError(f"{path}: image_processor must be an object, not a {type(settings).__name__}.")
        check_image_settings(settings, str(path))
        for key, where in (("processor_class", data), ("image_processor_type", settings)):
            value = where.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"{path}: {key} must be a class name, not a {type(value).__name__}.")
            if family is not None and value.removesuffix("Fast") not in local:
                raise ValueError(f"{path} names {value!r}; a {family.title} folder has a {local[0]}.")
            if not trust_remote_code and not _known_class(value, local):
                raise ValueError(
                    f"{path} names the class {value!r}, which neither transformers nor mosaic-vlm provides: loading "
                    "it would run code from the folder (pass --trust-remote-code to allow that)."
                )
    check_tokenizer_files(folder, trust_remote_code)


# ------------------------------------------------------------------------------------------------ model folders


def load_folder_strictly(path: str | os.PathLike, config_class, model_class):
    """A `model_class` from a local save_pretrained folder whose config is a `config_class` (a transformers or a
    mosaic folder), loaded strictly from safetensors only: a folder of another model type, a config of wrong
    types, weights whose headers do not fit the config (checked before any layer is built), or missing, extra or
    mis-shaped weights, are one ValueError (FileNotFoundError for a missing path), never random weights."""
    path, name = Path(path), model_class.__name__
    try:
        config = load_config_at_door(path, config_class)
    except ValueError as error:
        raise ValueError(f"{error} (expected a {name})") from None
    require_weights_fit_config(path, config, model_class)
    return from_pretrained_strictly(model_class, path, config=config)


def from_pretrained_strictly(loader, path: Path, **kwargs):
    """`loader.from_pretrained(path, **kwargs)` (a model class or an auto class) from local safetensors only, every
    weight in its place: missing, extra or mis-shaped weights are one ValueError, never random weights."""
    try:
        model, info = loader.from_pretrained(
            path, local_files_only=True, use_safetensors=True, output_loading_info=True, **kwargs
        )
    except (*CONFIG_ERRORS, OSError, ImportError, RuntimeError, SafetensorError) as error:
        message = " ".join(str(error).split())
        raise ValueError(
            f"Cannot load the {loader.__name__} weights in {path} (safetensors only): {message}"
        ) from None
    problems = {kind: sorted(map(str, keys)) for kind, keys in info.items() if keys}
    if problems:
        raise ValueError(f"{path} does not load strictly into {type(model).__name__}: {problems}.")
    return model


def folder_family(folder: Path) -> Family:
    """The family of a saved mosaic-vlm folder (read from its config.json, before transformers sees it), or one
    clear error."""
    model_type = read_config_json(folder)["model_type"]
    family = family_of_model_type(model_type)
    if family is None:
        known = " or ".join(family.model_type for family in FAMILIES.values())
        raise ValueError(f"{folder} holds a {model_type!r} model, not a mosaic-vlm one ({known}).")
    return family


def load_processor(folder: Path, family: Family | None, trust_remote_code: bool = False):
    """The processor saved in `folder` (of `family`, or any transformers processor for None), its files checked
    first (`check_processor_files`); loaded without remote code unless `trust_remote_code`; one ValueError for
    files it cannot read."""
    from transformers import AutoProcessor

    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        raise ValueError(
            f"{folder} has no processor ({' or '.join(PROCESSOR_FILES)}); save the processor into the folder."
        )
    check_processor_files(folder, family, trust_remote_code)
    try:
        return AutoProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as error:  # tokenizer and processor loading raise many types on malformed files
        message = f"{type(error).__name__}: {' '.join(str(error).split())}"
        raise ValueError(f"The processor files in {folder} cannot be read: {message}") from None


def load_model_folder(folder: Path, family_name: str, command: str, trust_remote_code: bool = False):
    """The model (loaded strictly, in eval mode) and processor of a saved folder of the family named
    `family_name`, or one clear error."""
    family, found = FAMILIES[family_name], folder_family(folder)
    if found != family:
        raise ValueError(f"{command} needs a {family.title} model folder; {folder} holds a {found.title} one.")
    load_config_at_door(folder, family.config_class)  # before the processor, which reads it too
    processor = load_processor(folder, family, trust_remote_code)
    return load_folder_strictly(folder, family.config_class, family.model_class).eval(), processor


@dataclass(frozen=True)
class ModelKind:
    """What a command takes from transformers: how its errors name it ("an image-text-to-text model"), its model
    classes by config class (such as MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING), and the auto class that loads a
    remote-code folder of it (named in the folder's `auto_map`)."""

    description: str
    models: Mapping
    auto_class: str


def require_kind(folder: Path, kind: ModelKind, command: str, trust_remote_code: bool = False) -> str:
    """At the door, before anything loads: `folder` holds a model of `kind` (by its config's model type), or one
    whose code the folder holds, with `trust_remote_code`, and an `auto_map` entry for `kind.auto_class`. Returns
    the model type."""
    from transformers import CONFIG_MAPPING

    data = read_config_json(folder)
    model_type = data["model_type"]
    if model_type in CONFIG_MAPPING:
        if CONFIG_MAPPING[model_type] not in kind.models:
            raise ValueError(
                f"{command} needs {kind.description} folder; {folder} holds a {model_type!r} model, which is not one."
            )
        return model_type
    if not trust_remote_code:
        raise ValueError(
            f"{folder} holds a {model_type!r} model, which transformers does not know: loading it would run code "
            "from the folder (pass --trust-remote-code to allow that)."
        )
    auto_map = data.get("auto_map")
    if not isinstance(auto_map, dict) or not isinstance(auto_map.get(kind.auto_class), str):
        raise ValueError(
            f"{command} needs {kind.description} folder; {folder / CONFIG_NAME} maps no {kind.auto_class} to the "
            "folder's code (auto_map)."
        )
    return model_type


def load_transformers_folder(
    folder: Path, kind: ModelKind, command: str, trust_remote_code: bool = False, check_processor=None
):
    """The model (loaded strictly, in eval mode) and processor of a transformers save_pretrained folder holding a
    model of `kind` (`require_kind`; a model whose code the folder holds only with `trust_remote_code`, through
    `kind.auto_class`). `check_processor(processor)` runs before the model loads. One ValueError otherwise."""
    import transformers
    from transformers import CONFIG_MAPPING

    model_type = require_kind(folder, kind, command, trust_remote_code)
    checkpoint = read_weight_headers(folder, kind.description)  # safetensors only, before any code runs
    processor = load_processor(folder, None, trust_remote_code)
    if check_processor is not None:
        check_processor(processor)
    if model_type not in CONFIG_MAPPING:  # the folder's own code
        model = from_pretrained_strictly(getattr(transformers, kind.auto_class), folder, trust_remote_code=True)
        return model.eval(), processor
    config_class = CONFIG_MAPPING[model_type]
    config = load_config_at_door(folder, config_class)
    # transformers saves some models under older tensor names and renames them as it loads: the headers are held
    # against the config's layer counts here, the names and shapes by the strict load
    require_layers_fit_weights(config, checkpoint, folder / CONFIG_NAME)
    return from_pretrained_strictly(kind.models[config_class], folder, config=config).eval(), processor
