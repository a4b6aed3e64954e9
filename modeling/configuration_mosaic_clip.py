"""Configs of the CLIP-style dual encoder: a ViT image tower and a causal text tower.

Defaults are the ViT-B/32 shapes of openai/clip-vit-base-patch32. Every config checks its values at
construction and raises one ValueError that names the field, the value and what is accepted; special-token
ids outside the vocabulary only warn (transformers' validation), as in transformers' configs.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .config_checks import (
    require_fraction,
    require_heads_divide_width,
    require_known_activation,
    require_positive,
    warn_unknown_keys,
)
from .mosaic_transformers_compat import SubConfigSpec


@strict
class MosaicClipTextConfig(PreTrainedConfig):
    """The causal text tower. Its pooled output is the hidden state at the first `eos_token_id`."""

    model_type = "mosaic_clip_text_model"
    base_config_key = "text_config"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int = 49407

    def __post_init__(self, **kwargs):
        warn_unknown_keys(self, kwargs)
        require_positive(
            self,
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "projection_dim",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "layer_norm_eps",
        )
        require_heads_divide_width(self)
        require_known_activation(self)
        require_fraction(self, "attention_dropout")
        super().__post_init__(**kwargs)  # warns of special-token ids outside the vocabulary, as transformers does


@strict
class MosaicClipVisionConfig(PreTrainedConfig):
    """The ViT image tower: conv patch embedding, class token, learned positions, pre-LayerNorm.

    `patch_dropout` is the share of patch tokens dropped at random during training (0 disables it).
    """

    model_type = "mosaic_clip_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    patch_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        warn_unknown_keys(self, kwargs)
        require_positive(
            self,
            "hidden_size",
            "intermediate_size",
            "projection_dim",
            "num_hidden_layers",
            "num_attention_heads",
            "num_channels",
            "image_size",
            "patch_size",
            "layer_norm_eps",
        )
        require_heads_divide_width(self)
        require_known_activation(self)
        require_fraction(self, "attention_dropout", "patch_dropout")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"MosaicClipVisionConfig.image_size ({self.image_size}) must be a multiple of "
                f"patch_size ({self.patch_size})."
            )
        super().__post_init__(**kwargs)


@strict
class MosaicClipConfig(PreTrainedConfig):
    """The dual encoder: both towers, their projections into one space, and the contrastive loss.

    `loss_type="clip"` is the softmax contrastive loss; `"siglip"` is the pairwise sigmoid loss, which
    adds a learnable `logit_bias`. Both are computed over the batch of every rank when
    torch.distributed runs with more than one process.
    """

    model_type = "mosaic_clip"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(MosaicClipTextConfig),
        "vision_config": SubConfigSpec(MosaicClipVisionConfig),
    }

    text_config: dict | MosaicClipTextConfig | None = None
    vision_config: dict | MosaicClipVisionConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    loss_type: Literal["clip", "siglip"] = "clip"
    logit_bias_init_value: float = -10.0
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        warn_unknown_keys(self, kwargs)
        require_positive(self, "projection_dim")
        if self.loss_type not in ("clip", "siglip"):
            raise ValueError(f"MosaicClipConfig.loss_type={self.loss_type!r} is unknown; accepted: 'clip', 'siglip'.")
        super().__post_init__(**kwargs)
