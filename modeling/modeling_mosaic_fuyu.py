"""The Fuyu-style decoder: image patches are projected by one linear layer and placed at the image-token
positions of a Persimmon-compatible decoder. There is no vision encoder.

Parameter names follow transformers' FuyuForCausalLM (`model.language_model.*`, `model.vision_embed_tokens`,
`lm_head`), so its checkpoints load strictly. Attention is switched in one place (`MosaicFuyuAttention`)
through transformers' attention registry, with `eager_attention_forward` as the reference. Hidden states and
attentions are recorded by transformers' output-capturing hooks (`_can_record_outputs`).

Image inputs (batch-first, so generation can expand them for beams):
- `pixel_values`: (batch, max_patches, patch_size * patch_size * channels), each sample's patches in the order
  its image tokens appear, then zero padding (`image_patches` is the deprecated name of the same input);
- `image_patches_mask`: (batch, max_patches) bool, True on the real patches, which come first. Without it every
  patch is real. Each sample must hold exactly as many real patches as image tokens.
The image tokens are found in `input_ids`, or, when only `inputs_embeds` is given, as the positions whose
embedding equals the image token's (as transformers' Fuyu does). A forward that continues from a cache and sees
no image token (generation after the prompt, or a prompt continued from a cached prefix that holds the image)
ignores the patches: they were placed when the cache was filled.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging

from .configuration_mosaic_fuyu import MosaicFuyuConfig
from .mosaic_pretrained import (
    OUTPUT_FLAGS,
    MosaicPreTrainedModel,
    check_token_ids,
    check_values,
    is_tracing,
    output_flags_default_to_config,
    renamed_argument,
)
from .mosaic_transformers_compat import (
    ROPE_INIT_FUNCTIONS,
    Cache,
    DynamicCache,
    GradientCheckpointingLayer,
    cache_keyword,
    can_return_tuple,
    capture_outputs,
    create_causal_mask,
    dynamic_rope_update,
    merge_with_config_defaults,
    one_cache,
)

logger = logging.get_logger(__name__)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    # query: (B, heads, T, head_dim); key/value: (B, heads, past + T, head_dim); mask additive
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, T, heads, head_dim)
    return attn_output, attn_weights


class MosaicFuyuRotaryEmbedding(nn.Module):
    """Rotary angles for the first `head_dim * partial_rotary_factor` channels of each head, for any rope type of
    transformers' rope utilities (`config.rope_parameters`), as Persimmon's rotary embedding."""

    def __init__(self, config: MosaicFuyuConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings  # for "dynamic"
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: MosaicFuyuConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """Inverse frequencies of the original RoPE over the rotary channels; no attention scaling."""
        base = config.rope_parameters["rope_theta"]
        rotary_dim = int(config.head_dim * config.rope_parameters.get("partial_rotary_factor", 1.0))
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float, device=device) / rotary_dim
        return 1.0 / (base**exponents), 1.0

    @torch.no_grad()
    @dynamic_rope_update  # "dynamic" and "longrope" recompute inv_freq from the positions seen
    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(hidden_states.device)  # (B, T, rotary_dim / 2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, rotary_dim)
        cos, sin = angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling
        return cos.to(hidden_states.dtype), sin.to(hidden_states.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_partial_rotary(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `cos.shape[-1]` channels of (B, T, heads, head_dim) states; pass the rest through.
    Applied before the heads move forward, so each elementwise pass runs over contiguous rows."""
    rotary_dim = cos.shape[-1]
    rotated, passed = states[..., :rotary_dim], states[..., rotary_dim:]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, T, 1, rotary_dim), broadcast over heads
    return torch.cat((rotated * cos + rotate_half(rotated) * sin, passed), dim=-1)


class MosaicFuyuAttention(nn.Module):
    def __init__(self, config: MosaicFuyuConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        if config.qk_layernorm:
            self.q_layernorm = nn.LayerNorm(self.head_dim, eps=config.layer_norm_eps)
            self.k_layernorm = nn.LayerNorm(self.head_dim, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states,
        position_embeddings,
        attention_mask=None,
        cache=None,
        queries_to_keep=0,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """`queries_to_keep` > 0 attends from the last that many positions only; every position's key and value
        is still computed and cached."""
        batch_size, seq_length, _ = hidden_states.shape
        # fused projection laid out per head as [q | k | v]: (B, T, 3 * hidden) -> (B, T, heads, 3, head_dim)
        fused = self.query_key_value(hidden_states).view(batch_size, seq_length, -1, 3, self.head_dim)
        query, key, value = fused.unbind(dim=3)  # each (B, T, heads, head_dim)
        cos, sin = position_embeddings
        query_cos, query_sin = cos, sin
        if queries_to_keep:
            query = query[:, -queries_to_keep:]
            query_cos, query_sin = cos[:, -queries_to_keep:], sin[:, -queries_to_keep:]
            if attention_mask is not None:
                attention_mask = attention_mask[..., -queries_to_keep:, :]
        if self.config.qk_layernorm:
            query, key = self.q_layernorm(query), self.k_layernorm(key)
        query, key = apply_partial_rotary(query, query_cos, query_sin), apply_partial_rotary(key, cos, sin)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, heads, T, hd)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.config.attention_dropout if self.training else 0.0,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, query.shape[2], -1)  # (B, T, heads, hd) -> (B, T, hidden)
        return self.dense(attn_output), attn_weights


class MosaicFuyuMLP(nn.Module):
    def __init__(self, config: MosaicFuyuConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.is_relu2 = config.hidden_act == "relu2"

    def forward(self, hidden_states):
        hidden_states = self.dense_h_to_4h(hidden_states)
        if self.is_relu2 and not torch.is_grad_enabled():
            # in place without autograd: the two 4x-wide temporaries would cost ~9% of the MLP's time
            return self.dense_4h_to_h(torch.relu_(hidden_states).square_())
        return self.dense_4h_to_h(self.act(hidden_states))


class MosaicFuyuDecoderLayer(GradientCheckpointingLayer):
    """Pre-LN block: x + dropout(attn(ln(x))), then x + dropout(mlp(ln(x)))."""

    def __init__(self, config: MosaicFuyuConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MosaicFuyuAttention(config, layer_idx)
        self.mlp = MosaicFuyuMLP(config)
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states,
        position_embeddings,
        attention_mask=None,
        cache=None,
        past_key_values=None,
        queries_to_keep=0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """`queries_to_keep` > 0 returns the last that many positions only (see `MosaicFuyuAttention`). The cache
        comes under the name the installed transformers gives it (`cache_keyword`)."""
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings,
            attention_mask,
            one_cache(cache, past_key_values),
            queries_to_keep,
            **kwargs,
        )
        if queries_to_keep:
            hidden_states = hidden_states[:, -queries_to_keep:]
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states)))


class MosaicFuyuPreTrainedModel(MosaicPreTrainedModel):
    """Initialisation is transformers' default: Normal(0, initializer_range) for linear and embedding weights, zero
    biases, unit LayerNorms, and the rotary frequencies of the configured rope type."""

    config: MosaicFuyuConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MosaicFuyuDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # static cache: a decode step compiles as one graph (tested)
    # hidden states and attentions are recorded by hooks on these modules (transformers' `capture_outputs`)
    _can_record_outputs = {"hidden_states": MosaicFuyuDecoderLayer, "attentions": MosaicFuyuAttention}


class MosaicFuyuDecoder(MosaicFuyuPreTrainedModel):
    """The Persimmon-compatible decoder stack, fed with embeddings."""

    def __init__(self, config: MosaicFuyuConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            [MosaicFuyuDecoderLayer(config, index) for index in range(config.num_hidden_layers)]
        )
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary_emb = MosaicFuyuRotaryEmbedding(config)
        self.post_init()

    @output_flags_default_to_config
    @capture_outputs
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Cache | None,
        positions_to_keep: int = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        """`positions_to_keep` > 0 (generation's prefill wants 1) lets the last layer run its queries, dense and MLP
        on the last that many positions alone (it still caches every key and value), when no layer output is
        recorded; `last_hidden_state` then holds those positions only."""
        # the cache positionally: its keyword is `cache` from transformers 5.24, `past_key_values` before
        causal_mask = create_causal_mask(self.config, inputs_embeds, attention_mask, cache, position_ids=position_ids)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        recording = any(kwargs.get(flag, getattr(self.config, flag)) for flag in OUTPUT_FLAGS)
        # Pruning the last layer needs a mask whose rows can be cut; without a mask, attention would align a
        # shorter causal query block to the first keys, which is right for one query only, and only when the keys
        # are the cached and new tokens alone (a static cache hands attention all its slots, empty ones included).
        exact_keys = cache is None or not cache.is_compileable
        prunable_mask = isinstance(causal_mask, torch.Tensor) or (
            causal_mask is None and positions_to_keep == 1 and exact_keys
        )
        last_layer_queries = positions_to_keep if positions_to_keep and not recording and prunable_mask else 0
        hidden_states = inputs_embeds
        for index, layer in enumerate(self.layers):
            # keywords, so that activation checkpointing can drop the cache during training
            hidden_states = layer(
                hidden_states,
                position_embeddings,
                attention_mask=causal_mask,
                **cache_keyword(cache),
                queries_to_keep=last_layer_queries if index == len(self.layers) - 1 else 0,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.final_layernorm(hidden_states), past_key_values=cache)


class MosaicFuyuModel(MosaicFuyuPreTrainedModel):
    """Patch projection plus decoder; returns the final hidden states."""

    # The patch projection reads raw pixels and holds ~0.1% of the weights: it stays in float32 under fp16 loads, and
    # quantizers (bitsandbytes, torchao, quanto) leave it unquantized, as they leave the lm_head. Quantized, it would
    # fail on CPU: bitsandbytes' 4-bit path and torchao's int4 groups need input widths in multiples of 64 or 32, and
    # fuyu-8b's patches hold 2700 values. A regex: torchao matches it against parameter names from their start.
    _keep_in_fp32_modules = [r"(?:model\.)?vision_embed_tokens"]

    def __init__(self, config: MosaicFuyuConfig):
        super().__init__(config)
        self.language_model = MosaicFuyuDecoder._from_config(config)
        self.vision_embed_tokens = nn.Linear(config.patch_dim, config.hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Every patch projected into the decoder's embedding space: `last_hidden_state` (batch, patches, hidden)."""
        weight = self.vision_embed_tokens.weight
        # the weight's dtype, unless quantization stores it as integers or behind a method (torch's dynamic
        # quantization): then the model's floating dtype
        dtype = weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else self.dtype
        return BaseModelOutputWithPooling(last_hidden_state=self.vision_embed_tokens(pixel_values.to(dtype)))

    def image_token_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(B, T) True at the image tokens: from `input_ids`, or, without them, where the embedding is the image
        token's (as transformers' Fuyu finds its placeholders)."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_token = torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
        return (inputs_embeds == self.get_input_embeddings()(image_token)).all(dim=-1)

    def place_patches(
        self,
        inputs_embeds: torch.Tensor,
        image_token_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_patches_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """`inputs_embeds` with the k-th image token of each sample replaced by that sample's k-th projected patch.
        Static shapes throughout (a gather, not a boolean index), so it compiles without graph breaks."""
        batch_size, num_patches = inputs_embeds.shape[0], pixel_values.shape[1]
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be floating point, as the processor makes them (rescaled and normalised), got "
                f"{pixel_values.dtype}; run the images through the processor."
            )
        if pixel_values.ndim != 3 or pixel_values.shape[0] != batch_size:
            raise ValueError(
                f"pixel_values must have shape (batch={batch_size}, patches, {self.config.patch_dim}), "
                f"got {tuple(pixel_values.shape)}."
            )
        if pixel_values.shape[-1] != self.config.patch_dim:
            raise ValueError(
                f"Each patch must hold patch_size * patch_size * channels = {self.config.patch_dim} values, "
                f"got {pixel_values.shape[-1]}."
            )
        if image_patches_mask is not None and image_patches_mask.shape != pixel_values.shape[:2]:
            raise ValueError(
                f"image_patches_mask must have shape (batch, patches) = {tuple(pixel_values.shape[:2])}, "
                f"got {tuple(image_patches_mask.shape)}."
            )
        if not is_tracing():  # checks on values: errors in eager, nothing traced under compile or export
            self.check_patch_counts(image_token_mask, num_patches, image_patches_mask)
        if num_patches == 0:
            return inputs_embeds
        patch_embeds = self.get_image_features(pixel_values).last_hidden_state.to(inputs_embeds.dtype)  # (B, N, hid)
        # index of each position's patch among its sample's image tokens: 0, 1, ... in order (clamped off them)
        patch_index = (image_token_mask.cumsum(-1) - 1).clamp(0, num_patches - 1)  # (B, T)
        gathered = patch_embeds.gather(1, patch_index.unsqueeze(-1).expand(-1, -1, patch_embeds.shape[-1]))
        return torch.where(image_token_mask.unsqueeze(-1), gathered, inputs_embeds)  # (B, T, hidden)

    @staticmethod
    def check_patch_counts(
        image_token_mask: torch.Tensor, num_patches: int, image_patches_mask: torch.Tensor | None
    ) -> None:
        """A clear ValueError unless `image_patches_mask` marks each sample's real patches first and each sample holds
        one real patch per image token. Reads values (a host sync): eager only."""
        tokens_per_sample = image_token_mask.sum(-1)  # (B,)
        if image_patches_mask is None:
            patches_per_sample = torch.full_like(tokens_per_sample, num_patches)
        else:
            check_values(
                lambda: (image_patches_mask == 0) | (image_patches_mask == 1),
                "image_patches_mask must hold booleans (or 0 and 1): True at real patches, False at padding.",
            )
            patches_per_sample = image_patches_mask.sum(-1)
            first_patches = torch.arange(num_patches, device=image_patches_mask.device) < patches_per_sample[:, None]
            check_values(
                lambda: image_patches_mask.bool() == first_patches,
                "image_patches_mask must mark each sample's real patches first, then its padding.",
            )
        check_values(
            lambda: tokens_per_sample == patches_per_sample,
            lambda: (
                f"Each sample needs one patch per image token: image tokens per sample {tokens_per_sample.tolist()}, "
                f"patches per sample {patches_per_sample.tolist()}."
            ),
        )

    @staticmethod
    def check_attention_mask(attention_mask: torch.Tensor, batch_size: int, seq_length: int, past_length) -> None:
        """A 2-D padding mask (batch, cached + new tokens), or a 4-D mask (batch, 1, new tokens, key length) as
        generate() builds for static caches and transformers' attention functions take (bool, or additive for eager
        attention). The key length of a 4-D mask is the cache's: cached + new tokens, or a static cache's size."""
        # A static cache counts its tokens in a tensor: read in eager only (traced, it is a graph input). A dynamic
        # cache's count is its length, compared without int(), which would specialise a compiled graph to it.
        cached = past_length
        if isinstance(past_length, torch.Tensor):
            cached = None if is_tracing() else int(past_length)
        if attention_mask.ndim == 2:
            total = None if cached is None else cached + seq_length
            if attention_mask.shape[0] != batch_size or (total is not None and attention_mask.shape[1] != total):
                raise ValueError(
                    f"attention_mask must have shape (batch, cached + new tokens) = {(batch_size, total)}, got "
                    f"{tuple(attention_mask.shape)} (or be 4-D: (batch, 1, new tokens, key length))."
                )
        elif attention_mask.ndim == 4:
            if (
                attention_mask.shape[0] != batch_size
                or attention_mask.shape[2] != seq_length
                or (cached is not None and attention_mask.shape[3] < cached + seq_length)
            ):
                raise ValueError(
                    f"A 4-D attention_mask must have shape (batch={batch_size}, 1, new tokens={seq_length}, key "
                    f"length >= cached + new tokens), got {tuple(attention_mask.shape)}."
                )
        else:
            raise ValueError(
                f"attention_mask must be 2-D (batch, cached + new tokens) or 4-D (batch, 1, new tokens, key length), "
                f"got {attention_mask.ndim} dimensions."
            )

    @can_return_tuple
    @renamed_argument("image_patches", "pixel_values", removed_in="0.3")
    @merge_with_config_defaults
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_patches_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        positions_to_keep: int = 0,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        """`positions_to_keep` > 0 may return the last that many positions only; see `MosaicFuyuDecoder`. The KV
        cache comes as `cache` (transformers >= 5.24) or `past_key_values` (its name before)."""
        cache = one_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if inputs_embeds is None:
            if input_ids.ndim != 2 or input_ids.shape[0] == 0:
                raise ValueError(
                    f"input_ids must be a non-empty (batch, sequence) tensor, got {tuple(input_ids.shape)}."
                )
            check_token_ids(input_ids, self.get_input_embeddings().num_embeddings)
            inputs_embeds = self.get_input_embeddings()(input_ids)
        # an int, or for static caches a 0-d tensor (so that a compiled decode step does not recompile per length)
        past_length = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None:
            self.check_attention_mask(attention_mask, *inputs_embeds.shape[:2], past_length)
        if (
            pixel_values is None
            and input_ids is not None
            and not is_tracing()
            and past_length == 0
            and bool((input_ids == self.config.image_token_id).any())
        ):  # read as text, as transformers' Fuyu reads them, but never silently
            logger.warning(
                f"input_ids hold image tokens (id {self.config.image_token_id}) but no pixel_values were given: they "
                "are read as text tokens. Pass the processor's pixel_values with them."
            )
        if pixel_values is not None:
            image_token_mask = self.image_token_mask(input_ids, inputs_embeds)
            # Continuing from a cache whose tokens hold the image, its patches were placed when the cache was filled.
            # Traced, they are placed anyway (then no position takes one): the test would be a data-dependent branch.
            if is_tracing() or past_length == 0 or image_token_mask.any():
                inputs_embeds = self.place_patches(inputs_embeds, image_token_mask, pixel_values, image_patches_mask)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:  # a 4-D mask gives no padding to skip: generate() passes position_ids with it
            padding_mask = attention_mask if attention_mask is not None and attention_mask.ndim == 2 else None
            position_ids = self.position_ids_from(
                padding_mask, past_length, inputs_embeds.shape[1], inputs_embeds.device
            )
        return self.language_model(
            inputs_embeds,
            attention_mask,
            position_ids,
            cache if use_cache else None,
            positions_to_keep=positions_to_keep,
            **kwargs,
        )

    @staticmethod
    def position_ids_from(attention_mask, past_length, seq_length: int, device) -> torch.Tensor:
        """Positions that skip left padding: the count of attended tokens before each one. (B or 1, T)
        `past_length` may be a 0-d tensor (a static cache's count)."""
        if attention_mask is None:
            return (torch.arange(seq_length, device=device) + past_length).unsqueeze(0)
        positions = attention_mask.long().cumsum(-1) - 1
        return positions.clamp(min=0)[:, -seq_length:]


class MosaicFuyuForCausalLM(MosaicFuyuPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _remote_auto_classes = {
        "AutoModel": "MosaicFuyuModel",
        "AutoModelForCausalLM": None,
        "AutoModelForImageTextToText": None,
    }

    def __init__(self, config: MosaicFuyuConfig):
        super().__init__(config)
        self.model = MosaicFuyuModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module):
        self.lm_head = value

    @can_return_tuple
    @renamed_argument("image_patches", "pixel_values", removed_in="0.3")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_patches_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        image_patches: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        """`labels` are the input ids with -100 wherever no loss is wanted; the shift happens inside, unless
        `shift_labels` (already aligned with the logits, as sequence-parallel training passes them) are given.
        `num_items_in_batch` (passed by Trainer) makes the loss exact under gradient accumulation.

        `image_patches` is the deprecated name of `pixel_values`: the decorator moves it there with a FutureWarning,
        so it is always None here. It stays in the signature because generate() accepts only the inputs it names.
        The KV cache comes as `cache` (transformers >= 5.24) or `past_key_values` (its name before)."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_patches_mask=image_patches_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            positions_to_keep=logits_to_keep,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]  # a no-op when the decoder ran those positions only
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
