"""The CLIP-style dual encoder: a ViT image tower and a causal text tower trained contrastively.

Parameter names follow transformers' CLIP, so CLIPModel checkpoints load strictly without remapping.
Attention is switched in one place (`MosaicClipAttention`) through transformers' attention registry;
`eager_attention_forward` below is the reference every other backend is tested against. Hidden states and
attentions are recorded by transformers' output-capturing hooks (`_can_record_outputs`); under sdpa, as in
transformers, there are no attention weights to return (a warning says so).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs

from .configuration_mosaic_clip import MosaicClipConfig, MosaicClipTextConfig, MosaicClipVisionConfig
from .mosaic_pretrained import MosaicPreTrainedModel, check_token_ids, check_values, output_flags_default_to_config
from .mosaic_transformers_compat import (
    GradientCheckpointingLayer,
    PrefixChange,
    all_gather_with_gradients,
    can_return_tuple,
    capture_outputs,
    create_causal_mask,
    register_checkpoint_conversion_mapping,
)


@dataclass
class MosaicClipOutput(ModelOutput):
    """The fields of transformers' CLIPOutput, plus `patch_embeds` when `output_patch_embeds=True`.

    patch_embeds: `(image_batch, num_patches, projection_dim)`, every patch token put through the
    post-LayerNorm and the visual projection, i.e. in the space shared with `text_embeds` (unnormalised).
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    patch_embeds: torch.Tensor | None = None

    def to_tuple(self):
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class MosaicClipTextModelOutput(ModelOutput):
    text_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MosaicClipVisionModelOutput(ModelOutput):
    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    patch_embeds: torch.Tensor | None = None


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    # query/key/value: (B, heads, T, head_dim); attention_mask: additive, broadcastable to (B, heads, T, T)
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, T, heads, head_dim)
    return attn_output, attn_weights


class MosaicClipVisionEmbeddings(nn.Module):
    def __init__(self, config: MosaicClipVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.patch_size = config.patch_size
        self.grid_size = config.image_size // config.patch_size
        self.num_positions = self.grid_size**2 + 1
        self.class_embedding = nn.Parameter(torch.randn(self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)

    def interpolated_positions(self, height: int, width: int) -> torch.Tensor:
        """Position table resized bicubically to a `height x width` image: (1, 1 + patches, dim)."""
        # read through the module, not its weight: offload hooks (device_map with disk) load weights on a call
        table = self.position_embedding(torch.arange(self.num_positions, device=self.class_embedding.device))
        class_position, patch_positions = table[:1], table[1:]
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        if (grid_h, grid_w) == (self.grid_size, self.grid_size):
            return table.unsqueeze(0)
        # (patches, dim) -> (1, dim, grid, grid), the layout F.interpolate resizes
        grid = patch_positions.reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        # back to (grid_h * grid_w, dim) in row-major patch order
        patch_positions = grid.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)
        return torch.cat([class_position, patch_positions]).unsqueeze(0)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        batch_size, _, height, width = pixel_values.shape
        if batch_size == 0:
            raise ValueError("pixel_values holds an empty batch; pass at least one image.")
        expected = self.config.image_size
        if not interpolate_pos_encoding and (height, width) != (expected, expected):
            raise ValueError(
                f"Input image size ({height}x{width}) does not match the model ({expected}x{expected}); "
                "resize it with the image processor or pass interpolate_pos_encoding=True."
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"Image size ({height}x{width}) must be a multiple of the patch size {self.patch_size}.")
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be floating point, as the image processor makes them (rescaled and normalised), "
                f"got {pixel_values.dtype}; run the images through the image processor."
            )
        weight = self.patch_embedding.weight
        # the weight's dtype, unless quantization stores it as integers (then the class embedding's, never quantized)
        dtype = weight.dtype if weight.is_floating_point() else self.class_embedding.dtype
        patches = self.patch_embedding(pixel_values.to(dtype))  # (B, dim, grid_h, grid_w)
        patches = patches.flatten(2).transpose(1, 2)  # (B, grid_h * grid_w, dim)
        positions = self.interpolated_positions(height, width)
        patches = patches + positions[:, 1:]
        if self.training and self.config.patch_dropout > 0:
            patches = self.drop_patches(patches)
        class_token = (self.class_embedding + positions[0, 0]).expand(batch_size, 1, -1)
        return torch.cat([class_token, patches], dim=1)

    def drop_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Keep a random subset of the patch tokens of each image (patch dropout, as in FLIP / open_clip)."""
        batch_size, num_patches, dim = patches.shape
        num_kept = max(1, int(num_patches * (1.0 - self.config.patch_dropout)))
        kept = torch.rand(batch_size, num_patches, device=patches.device).topk(num_kept, dim=-1).indices
        return patches.gather(1, kept.unsqueeze(-1).expand(-1, -1, dim))  # (B, num_kept, dim)


class MosaicClipTextEmbeddings(nn.Module):
    def __init__(self, config: MosaicClipTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        seq_length = input_ids.shape[-1]
        max_positions = self.position_embedding.num_embeddings
        if seq_length > max_positions:
            raise ValueError(
                f"Text of {seq_length} tokens is longer than max_position_embeddings={max_positions}; "
                "tokenize with truncation=True and max_length at most that."
            )
        check_token_ids(input_ids, self.token_embedding.num_embeddings)
        if position_ids is None:
            position_ids = torch.arange(seq_length, device=input_ids.device).unsqueeze(0)
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class MosaicClipAttention(nn.Module):
    def __init__(self, config: MosaicClipTextConfig | MosaicClipVisionConfig, is_causal: bool):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.head_dim = self.embed_dim // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.is_causal = is_causal
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        heads_shape = (*input_shape, -1, self.head_dim)
        # (B, T, dim) -> (B, heads, T, head_dim)
        query = self.q_proj(hidden_states).view(heads_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(heads_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(heads_shape).transpose(1, 2)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scale,
            dropout=self.config.attention_dropout if self.training else 0.0,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1)  # (B, T, heads, head_dim) -> (B, T, dim)
        return self.out_proj(attn_output), attn_weights


class MosaicClipMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class MosaicClipEncoderLayer(GradientCheckpointingLayer):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config, is_causal: bool):
        super().__init__()
        self.self_attn = MosaicClipAttention(config, is_causal=is_causal)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MosaicClipMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states, attention_mask=None, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attn_output, _ = self.self_attn(self.layer_norm1(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class MosaicClipEncoder(nn.Module):
    def __init__(self, config, is_causal: bool):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            [MosaicClipEncoderLayer(config, is_causal=is_causal) for _ in range(config.num_hidden_layers)]
        )

    def forward(self, hidden_states, attention_mask=None, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        return hidden_states


def _init_child_weight(child: nn.Module, std: float) -> None:
    """Normal(0, std) into `child.weight` where the child still has one (quantization may replace it with None)."""
    if getattr(child, "weight", None) is not None:
        init.normal_(child.weight, std=std)


class MosaicClipPreTrainedModel(MosaicPreTrainedModel):
    config: MosaicClipConfig
    base_model_prefix = "mosaic_clip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MosaicClipTextEmbeddings", "MosaicClipEncoderLayer", "MosaicClipVisionEmbeddings"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # the whole forward compiles as one graph (tested)
    # hidden states and attentions are recorded by hooks on these modules (transformers' `capture_outputs`)
    _can_record_outputs = {"hidden_states": MosaicClipEncoderLayer, "attentions": MosaicClipAttention}

    @torch.no_grad()
    def _init_weights(self, module):
        """CLIP's initialisation (Radford et al. 2021): std width^-1/2, attention and MLP inputs scaled by
        (2 * layers)^-1/2, projections by width^-1/2."""
        super()._init_weights(module)
        factor = self.config.initializer_factor
        if isinstance(module, MosaicClipTextEmbeddings):
            _init_child_weight(module.token_embedding, 0.02 * factor)
            _init_child_weight(module.position_embedding, 0.01 * factor)
        elif isinstance(module, MosaicClipVisionEmbeddings):
            init.normal_(module.class_embedding, std=module.embed_dim**-0.5 * factor)
            _init_child_weight(module.patch_embedding, module.config.initializer_range * factor)
            _init_child_weight(module.position_embedding, module.config.initializer_range * factor)
        elif isinstance(module, MosaicClipAttention):
            config = module.config
            in_proj_std = module.embed_dim**-0.5 * (2 * config.num_hidden_layers) ** -0.5 * factor
            for projection in (module.q_proj, module.k_proj, module.v_proj):
                _init_child_weight(projection, in_proj_std)
            _init_child_weight(module.out_proj, module.embed_dim**-0.5 * factor)
        elif isinstance(module, MosaicClipMLP):
            config = module.config
            _init_child_weight(module.fc1, (2 * config.hidden_size) ** -0.5 * factor)
            _init_child_weight(module.fc2, config.hidden_size**-0.5 * (2 * config.num_hidden_layers) ** -0.5 * factor)
        elif isinstance(module, MosaicClipModel):
            _init_child_weight(module.text_projection, module.text_model.config.hidden_size**-0.5 * factor)
            _init_child_weight(module.visual_projection, module.vision_model.config.hidden_size**-0.5 * factor)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, self.config.logit_bias_init_value)
        elif isinstance(module, MosaicClipTextModelWithProjection):
            _init_child_weight(module.text_projection, self.config.hidden_size**-0.5 * factor)
        elif isinstance(module, MosaicClipVisionModelWithProjection):
            _init_child_weight(module.visual_projection, self.config.hidden_size**-0.5 * factor)


class MosaicClipTextModel(MosaicClipPreTrainedModel):
    """The causal text tower; `pooler_output` is the final hidden state at the first EOS token."""

    config: MosaicClipTextConfig
    input_modalities = ("text",)
    _input_embed_layer = "token_embedding"  # self.embeddings.token_embedding, for get/set_input_embeddings

    def __init__(self, config: MosaicClipTextConfig):
        super().__init__(config)
        self.embeddings = MosaicClipTextEmbeddings(config)
        self.encoder = MosaicClipEncoder(config, is_causal=True)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    @output_flags_default_to_config
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        if input_ids is None or input_ids.ndim != 2 or input_ids.shape[0] == 0:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"input_ids must be a non-empty (batch, sequence) tensor of token ids, got {shape}.")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}."
            )
        eos_positions = input_ids == self.config.eos_token_id
        check_values(  # an error in eager, nothing traced under torch.compile or export
            lambda: eos_positions.any(dim=-1),
            f"Every text must contain the EOS token (id {self.config.eos_token_id}), where the text tower pools; "
            "tokenize with the model's tokenizer, which appends it.",
        )
        hidden_states = self.embeddings(input_ids, position_ids)
        # no cache, passed positionally: its keyword is `cache` from transformers 5.24, `past_key_values` before
        causal_mask = create_causal_mask(self.config, hidden_states, attention_mask, None)
        last_hidden_state = self.final_layer_norm(self.encoder(hidden_states, causal_mask, **kwargs))
        batch_index = torch.arange(input_ids.shape[0], device=input_ids.device)
        pooled_output = last_hidden_state[batch_index, eos_positions.int().argmax(dim=-1)]
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)


class MosaicClipVisionModel(MosaicClipPreTrainedModel):
    """The ViT image tower; `pooler_output` is the post-LayerNormed class token."""

    config: MosaicClipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _input_embed_layer = "patch_embedding"  # self.embeddings.patch_embedding, for get_input_embeddings

    def __init__(self, config: MosaicClipVisionConfig):
        super().__init__(config)
        self.embeddings = MosaicClipVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic: CLIP's key name
        self.encoder = MosaicClipEncoder(config, is_causal=False)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    @output_flags_default_to_config
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        if pixel_values is None:
            raise ValueError("pixel_values is required: a (batch, channels, height, width) tensor.")
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        last_hidden_state = self.encoder(hidden_states, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state, pooler_output=self.post_layernorm(last_hidden_state[:, 0])
        )

    def project_patches(self, last_hidden_state: torch.Tensor, projection: nn.Linear) -> torch.Tensor:
        """Patch tokens (all but the class token) through the post-LayerNorm and `projection`."""
        return projection(self.post_layernorm(last_hidden_state[:, 1:]))


def _gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features concatenated in rank order, with gradients flowing back to each rank's share."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return features
    return all_gather_with_gradients(features)


def clip_contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric cross entropy over a square (text x image) similarity matrix with matching pairs on the diagonal."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2


def siglip_sigmoid_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Pairwise sigmoid loss (Zhai et al. 2023): +1 on matching pairs, -1 elsewhere, summed per image."""
    signs = 2 * torch.eye(logits_per_text.shape[0], device=logits_per_text.device) - 1
    return -F.logsigmoid(signs * logits_per_text).sum() / logits_per_text.shape[0]


class MosaicClipModel(MosaicClipPreTrainedModel):
    config: MosaicClipConfig
    _remote_auto_classes = {"AutoModel": None, "AutoModelForZeroShotImageClassification": None}

    def __init__(self, config: MosaicClipConfig):
        super().__init__(config)
        self.text_model = MosaicClipTextModel._from_config(config.text_config)
        self.vision_model = MosaicClipVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_bias = (
            nn.Parameter(torch.tensor(config.logit_bias_init_value)) if config.loss_type == "siglip" else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.text_model.set_input_embeddings(value)

    @can_return_tuple
    def get_text_features(
        self, input_ids, attention_mask=None, position_ids=None, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | BaseModelOutputWithPooling:  # the annotation tells clients (sentence-transformers) what returns
        """Text tower output whose `pooler_output` is the projected (unnormalised) text embedding."""
        text_outputs = self.text_model(input_ids, attention_mask, position_ids, return_dict=True, **kwargs)
        text_outputs.pooler_output = self.text_projection(text_outputs.pooler_output)
        return text_outputs

    @can_return_tuple
    def get_image_features(
        self, pixel_values, interpolate_pos_encoding: bool = False, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | BaseModelOutputWithPooling:
        """Image tower output whose `pooler_output` is the projected (unnormalised) image embedding."""
        vision_outputs = self.vision_model(pixel_values, interpolate_pos_encoding, return_dict=True, **kwargs)
        vision_outputs.pooler_output = self.visual_projection(vision_outputs.pooler_output)
        return vision_outputs

    def get_patch_features(self, pixel_values, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Every patch token projected into the shared space: (batch, num_patches, projection_dim)."""
        vision_outputs = self.vision_model(pixel_values, interpolate_pos_encoding, return_dict=True)
        return self.vision_model.project_patches(vision_outputs.last_hidden_state, self.visual_projection)

    def similarity_logits(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarity (plus the SigLIP bias) of L2-normalised embeddings: (texts, images)."""
        logits = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        return logits if self.logit_bias is None else logits + self.logit_bias

    def contrastive_loss(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """The configured loss over the global batch: the features of every rank when distributed."""
        if text_embeds.shape[0] != image_embeds.shape[0]:
            raise ValueError(
                f"The contrastive loss needs one text per image, got {text_embeds.shape[0]} texts and "
                f"{image_embeds.shape[0]} images."
            )
        logits = self.similarity_logits(_gather_with_grad(text_embeds), _gather_with_grad(image_embeds))
        return clip_contrastive_loss(logits) if self.config.loss_type == "clip" else siglip_sigmoid_loss(logits)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        output_patch_embeds: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MosaicClipOutput:
        # the towers record hidden states and attentions on request (output_* in kwargs, or each tower's config)
        vision_outputs = self.vision_model(pixel_values, interpolate_pos_encoding, return_dict=True, **kwargs)
        text_outputs = self.text_model(input_ids, attention_mask, position_ids, return_dict=True, **kwargs)
        image_embeds = self.visual_projection(vision_outputs.pooler_output)
        text_embeds = self.text_projection(text_outputs.pooler_output)
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)

        logits_per_text = self.similarity_logits(text_embeds, image_embeds)
        patch_embeds = None
        if output_patch_embeds:
            patch_embeds = self.vision_model.project_patches(vision_outputs.last_hidden_state, self.visual_projection)
        return MosaicClipOutput(
            loss=self.contrastive_loss(text_embeds, image_embeds) if return_loss else None,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            patch_embeds=patch_embeds,
        )


# As transformers' CLIP towers: a tower loads the `text_model.` / `vision_model.` weights of a saved
# MosaicClipModel or *WithProjection checkpoint (their prefix is dropped on load; the tower saves without one).
# Registered here rather than at package import, so that the model file also does it when loaded as remote code.
for _tower, _prefix in (("MosaicClipTextModel", "text_model"), ("MosaicClipVisionModel", "vision_model")):
    register_checkpoint_conversion_mapping(_tower, [PrefixChange(prefix_to_remove=_prefix)], overwrite=True)


class MosaicClipTextModelWithProjection(MosaicClipPreTrainedModel):
    config: MosaicClipTextConfig
    base_model_prefix = "text_model"  # as CLIP: a saved MosaicClipTextModel loads into `text_model`, and back
    input_modalities = ("text",)

    def __init__(self, config: MosaicClipTextConfig):
        super().__init__(config)
        self.text_model = MosaicClipTextModel._from_config(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MosaicClipTextModelOutput:
        text_outputs = self.text_model(input_ids, attention_mask, position_ids, return_dict=True, **kwargs)
        return MosaicClipTextModelOutput(
            text_embeds=self.text_projection(text_outputs.pooler_output),
            last_hidden_state=text_outputs.last_hidden_state,
            hidden_states=text_outputs.hidden_states,
            attentions=text_outputs.attentions,
        )


class MosaicClipVisionModelWithProjection(MosaicClipPreTrainedModel):
    config: MosaicClipVisionConfig
    base_model_prefix = "vision_model"  # as CLIP: a saved MosaicClipVisionModel loads into `vision_model`, and back
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: MosaicClipVisionConfig):
        super().__init__(config)
        self.vision_model = MosaicClipVisionModel._from_config(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_patch_embeds: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MosaicClipVisionModelOutput:
        vision_outputs = self.vision_model(pixel_values, interpolate_pos_encoding, return_dict=True, **kwargs)
        patch_embeds = None
        if output_patch_embeds:
            patch_embeds = self.vision_model.project_patches(vision_outputs.last_hidden_state, self.visual_projection)
        return MosaicClipVisionModelOutput(
            image_embeds=self.visual_projection(vision_outputs.pooler_output),
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            patch_embeds=patch_embeds,
        )
