"""Every transformers and torch internal the models use, in one place, with a shim wherever releases differ.

mosaic-vlm supports transformers 5.20 up to the newest 5.x release (tested on 5.20.2, 5.23.0 and 5.25.0) and torch
2.6 and newer. The model files import transformers' private names (output recording, return-type and config-default
decorators, the compile-safe check, the cache and mask APIs, rope initialisation, checkpoint key renaming) from here
only, so a new release changes this file alone; the two private hooks `MosaicPreTrainedModel` overrides
(`_upload_modified_files`, `_initialize_weights(is_custom_code=)`, as in 5.11 and later) are explained there. Files
`save_pretrained` copies as remote code import this one, so it imports nothing of mosaic_vlm.
"""

import warnings

import torch
import torch.distributed as dist
import transformers
from packaging import version
from transformers.cache_utils import Cache, DynamicCache
from transformers.configuration_utils import SubConfigSpec
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, RopeParameters, dynamic_rope_update
from transformers.utils import torch_compilable_check
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

TRANSFORMERS_VERSION = version.parse(transformers.__version__)

# Composite configs name sub-configs with SubConfigSpec: 5.21 added the bare-class shorthand, 5.20 needs the spec.

# transformers 5.24 renamed the cache argument of generate, of model forwards and of GradientCheckpointingLayer from
# `past_key_values` to `cache` (the output classes accept both names). Our forwards take both; layers are called with
# the installed release's name, the one GradientCheckpointingLayer drops when it recomputes a layer.
CACHE_ARGUMENT = "cache" if TRANSFORMERS_VERSION >= version.parse("5.24.0.dev0") else "past_key_values"


# transformers' own FuyuForCausalLM takes its image patches as `pixel_values` from 5.23 and as `image_patches` in
# 5.20-5.22 (where `pixel_values` lands in **kwargs unread: the image would silently be left out). Our models always
# take `pixel_values`; this names the keyword for transformers' model, for the conversion checks.
TRANSFORMERS_FUYU_PATCHES_ARGUMENT = (
    "pixel_values" if TRANSFORMERS_VERSION >= version.parse("5.23.0.dev0") else "image_patches"
)


def one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache a forward was given under either name (`cache` from transformers 5.24, `past_key_values` before);
    the old name warns, as transformers' own models do, where the installed release has the new one."""
    if past_key_values is None:
        return cache
    if cache is not None:
        raise ValueError(
            "Pass the KV cache once: as cache= or as past_key_values= (its name before transformers 5.24)"
        )
    if CACHE_ARGUMENT == "cache":
        warnings.warn(
            "`past_key_values` is deprecated since transformers 5.24. Use `cache` instead.",
            FutureWarning,
            stacklevel=3,
        )
    return past_key_values


def cache_keyword(cache: Cache | None) -> dict[str, Cache | None]:
    """The cache as the keyword argument the installed transformers names it (see CACHE_ARGUMENT)."""
    return {CACHE_ARGUMENT: cache}


def all_gather_with_gradients(features: torch.Tensor) -> torch.Tensor:
    """Every rank's `features` concatenated along dim 0, with gradients flowing back to each rank's own part.
    torch >= 2.7 has the autograd-aware functional collective; torch 2.6 (which lacks it) gets the public
    `torch.distributed.nn.functional.all_gather`, which also carries gradients back to every rank."""
    from torch.distributed import _functional_collectives as functional_collectives

    if hasattr(functional_collectives, "all_gather_single_autograd"):
        return functional_collectives.all_gather_single_autograd(features, 0, dist.group.WORLD)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features), dim=0)


def register_no_video_processor(config_class: type) -> None:
    """Records that `config_class`'s models have no video processor. Without it transformers (5.23-5.25) guesses a
    remote "<Name>VideoProcessor" from the image processor's auto_map, and a pipeline then asks whether to run custom
    code for a class that does not exist. Registered in the mapping itself: AutoVideoProcessor refuses to be used
    without torchvision."""
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

    VIDEO_PROCESSOR_MAPPING.register(config_class, {}, exist_ok=True)


__all__ = [
    "CACHE_ARGUMENT",
    "Cache",
    "DynamicCache",
    "GradientCheckpointingLayer",
    "PrefixChange",
    "ROPE_INIT_FUNCTIONS",
    "RopeParameters",
    "SubConfigSpec",
    "TRANSFORMERS_FUYU_PATCHES_ARGUMENT",
    "TRANSFORMERS_VERSION",
    "all_gather_with_gradients",
    "cache_keyword",
    "can_return_tuple",
    "capture_outputs",
    "create_causal_mask",
    "dynamic_rope_update",
    "merge_with_config_defaults",
    "one_cache",
    "register_no_video_processor",
    "register_checkpoint_conversion_mapping",
    "torch_compilable_check",
]
