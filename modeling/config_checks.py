"""Value checks shared by the configs: each raises one ValueError naming the field, the value and what
is accepted."""

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN


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
