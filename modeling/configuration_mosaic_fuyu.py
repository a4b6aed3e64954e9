"""Config of the Fuyu-style decoder: raw image patches projected linearly into a Persimmon-compatible
decoder-only transformer (LayerNorm, qk-layernorm, partial rotary, relu-squared MLP, fused QKV).

Defaults are the shapes of adept/fuyu-8b. Values are checked at construction; a bad one raises a
ValueError that names the field, the value and what is accepted. Special-token ids outside the vocabulary
only warn (transformers' validation), as in transformers' configs.

Rotary embeddings are configured as in transformers' Persimmon: `rope_parameters` holds `rope_type` (any type
transformers' rope utilities know: "default", "linear", "dynamic", "yarn", "longrope", "llama3"), `rope_theta`,
`partial_rotary_factor` and the type's own keys. The flat `rope_theta=` / `partial_rotary_factor=` arguments
(and configs saved with them) are still read into `rope_parameters`.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .config_checks import (
    require_fraction,
    require_heads_divide_width,
    require_known_activation,
    require_positive,
    warn_unknown_keys,
)
from .mosaic_transformers_compat import RopeParameters


@strict
class MosaicFuyuConfig(PreTrainedConfig):
    model_type = "mosaic_fuyu"
    keys_to_ignore_at_inference = ["past_key_values"]
    default_theta = 25000.0  # fuyu-8b's rotary base, when rope_parameters gives none

    vocab_size: int = 262144
    hidden_size: int = 4096
    intermediate_size: int = 16384
    num_hidden_layers: int = 36
    num_attention_heads: int = 64
    hidden_act: str = "relu2"
    max_position_embeddings: int = 16384
    layer_norm_eps: float = 1e-5
    rope_parameters: RopeParameters | dict | None = None
    qk_layernorm: bool = True
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    patch_size: int = 30
    num_channels: int = 3
    image_token_id: int = 71011
    image_newline_token_id: int = 71019
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    def __post_init__(self, **kwargs):
        warn_unknown_keys(self, kwargs)
        kwargs.setdefault("partial_rotary_factor", 0.5)  # fuyu-8b rotates half of each head (as Persimmon's default)
        require_positive(
            self,
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "layer_norm_eps",
            "patch_size",
            "num_channels",
        )
        require_heads_divide_width(self)
        require_known_activation(self)
        require_fraction(self, "attention_dropout", "hidden_dropout")
        if self.image_token_id == self.image_newline_token_id:
            raise ValueError("MosaicFuyuConfig.image_token_id and image_newline_token_id must differ.")
        super().__post_init__(**kwargs)  # moves rope_theta / partial_rotary_factor into rope_parameters
        if not self.rope_theta > 0:
            raise ValueError(f"MosaicFuyuConfig.rope_theta must be a positive number, got {self.rope_theta!r}.")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError(
                f"MosaicFuyuConfig.partial_rotary_factor must lie in (0, 1], got {self.partial_rotary_factor!r}."
            )
        rotary_dim = self.head_dim * self.partial_rotary_factor
        if rotary_dim != int(rotary_dim) or int(rotary_dim) % 2:
            raise ValueError(
                f"MosaicFuyuConfig: the rotary width head_dim * partial_rotary_factor = "
                f"{self.head_dim} * {self.partial_rotary_factor} must be a whole even number."
            )

    @property
    def rope_theta(self) -> float:
        """The rotary base, `rope_parameters["rope_theta"]` (read-only)."""
        return (self.rope_parameters or {}).get("rope_theta", self.default_theta)

    @property
    def partial_rotary_factor(self) -> float:
        """The share of each head that is rotated, `rope_parameters["partial_rotary_factor"]` (read-only)."""
        return (self.rope_parameters or {}).get("partial_rotary_factor", 1.0)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: patch_size * patch_size * num_channels."""
        return self.patch_size * self.patch_size * self.num_channels
