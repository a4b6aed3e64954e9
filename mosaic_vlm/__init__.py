"""mosaic_vlm: vision-language models that read an image as a mosaic of patch words.

Importing any part of mosaic_vlm runs this module first: it registers every family of the family table
(`families.py`) with transformers' Auto API, marks its classes to be saved as remote code and gives its models
their Hub card. Registration lives here, in the package root, so that `modeling` and `processing` never import
each other.
"""

import functools
from importlib.metadata import version as installed_version

from packaging.specifiers import SpecifierSet

# the releases mosaic-vlm is tested with (as setup.cfg's install_requires says, which a test checks): an install
# outside them (pip --no-deps, an older environment) is refused here in one line, before transformers' own names
# fail to import in ways that say nothing of the cause
SUPPORTED_RELEASES = {"transformers": ">=5.20,<6", "torch": ">=2.6"}
for _name, _range in SUPPORTED_RELEASES.items():
    if installed_version(_name) not in SpecifierSet(_range):
        raise ImportError(
            f"mosaic-vlm needs {_name}{_range}; {_name} {installed_version(_name)} is installed. Install a "
            f"supported release: pip install '{_name}{_range}'"
        )

from transformers import AutoConfig, AutoImageProcessor, AutoProcessor  # noqa: E402 (after the release check)

from .families import FAMILIES  # noqa: E402 (after the release check)
from .hub_card import model_card  # noqa: E402 (after the release check)
from .modeling.mosaic_transformers_compat import register_no_video_processor  # noqa: E402 (after the release check)

for _family in FAMILIES.values():
    for _config in (_family.config_class, *_family.sub_config_classes):
        AutoConfig.register(_config.model_type, _config, exist_ok=True)
        _config.register_for_auto_class()
        register_no_video_processor(_config)
    for _auto_class, _config, _model in _family.auto_models:
        _auto_class.register(_config, _model, exist_ok=True)
    for _model, _auto_name in _family.remote_code_classes:
        _model.register_for_auto_class(_auto_name)
    for _model in {model for _, _, model in _family.auto_models} | {model for model, _ in _family.remote_code_classes}:
        _model.model_card_builder = functools.partial(model_card, _family)
    AutoImageProcessor.register(
        _family.config_class, image_processor_classes={"pil": _family.image_processor_class}, exist_ok=True
    )
    AutoProcessor.register(_family.config_class, _family.processor_class, exist_ok=True)
    _family.image_processor_class.register_for_auto_class("AutoImageProcessor")
    _family.processor_class.register_for_auto_class("AutoProcessor")

__version__ = "0.1.0"
