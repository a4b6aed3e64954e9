"""Value checks shared by the configs: each raises one ValueError naming the field, the value and what
is accepted; unknown keys are warned of by name."""

import dataclasses
import logging

from transformers import GenerationConfig, PreTrainedConfig
from transformers.activations import ACT2FN

logger = logging.getLogger(__name__)

# Keys a config accepts besides its fields: those PreTrainedConfig reads from its keyword arguments (legacy names
# included) and those save_pretrained writes; generation settings found in old configs are dropped by it too.
_ACCEPTED_EXTRA_KEYS = frozenset({
    "auto_map", "model_type", "name_or_path", "_name_or_path", "transformers_version", "torch_dtype", "_commit_hash",
    "output_attentions", "attn_implementation", "experts_implementation", "per_layer_config", "rope_scaling",
    "rope_theta", "partial_rotary_factor", "_attn_implementation_internal", "_experts_implementation_internal",
})  # fmt: skip


def warn_unknown_keys(config: PreTrainedConfig, kwargs: dict) -> None:
    """Warn, by name, of each keyword argument that is neither a field of `config` nor a key PreTrainedConfig
    accepts (a misspelt `patchsize=16` is kept, as transformers keeps it, but nothing reads it)."""
    fields = {field.name for field in dataclasses.fields(config)}
    unknown = sorted(set(kwargs) - fields - _ACCEPTED_EXTRA_KEYS - set(GenerationConfig().to_dict()))
    own_fields = sorted(fields - {field.name for field in dataclasses.fields(PreTrainedConfig)})
    for key in unknown:
        logger.warning(
            "%s got the unknown key %r (= %r): it is kept, but nothing reads it. Is it misspelt? Its fields: %s.",
            type(config).__name__, key, kwargs[key], ", ".join(own_fields),
        )  # fmt: skip


def require_positive(config: PreTrainedConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is None or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive number, got {value!r}.")


def require_fraction(config: PreTrainedConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{type(config).__name__}.{name} must lie in [0, 1), got {value!r}.")


def require_heads_divide_width(config: PreTrainedConfig) -> None:
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(
            f"{type(config).__name__}.hidden_size ({config.hidden_size}) must be a multiple of "
            f"num_attention_heads ({config.num_attention_heads})."
        )


def require_known_activation(config: PreTrainedConfig) -> None:
    if config.hidden_act not in ACT2FN:
        raise ValueError(
            f"{type(config).__name__}.hidden_act={config.hidden_act!r} is unknown; accepted: {sorted(ACT2FN)}."
        )
