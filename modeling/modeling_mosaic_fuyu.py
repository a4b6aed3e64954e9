"""The Fuyu-style decoder: image patches are projected by one linear layer and placed at the image-token
positions of a Persimmon-compatible decoder. There is no vision encoder.

Parameter names follow transformers' FuyuForCausalLM (`model.language_model.*`, `model.vision_embed_tokens`,
`lm_head`), so its checkpoints load strictly. Attention is switched in one place (`MosaicFuyuAttention`)
through transformers' attention registry, with `eager_attention_forward` as the reference.

Image inputs (batch-first, so generation can expand them for beams):
- `image_patches`: (batch, max_patches, patch_size * patch_size * channels), each sample's patches in the
  order its image tokens appear, zero-padded at the end;
- `image_patches_mask`: (batch, max_patches) bool, True on real patches. Each sample must hold exactly
  as many real patches as image tokens.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import can_return_tuple

from .configuration_mosaic_fuyu import MosaicFuyuConfig
from .mosaic_pretrained import MosaicPreTrainedModel


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
    """Rotary angles for the first `head_dim * partial_rotary_factor` channels of each head."""

    def __init__(self, config: MosaicFuyuConfig):
        super().__init__()
        rotary_dim = int(config.head_dim * config.partial_rotary_factor)
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, rotary_dim / 2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, rotary_dim)
        return angles.cos().to(hidden_states.dtype), angles.sin().to(hidden_states.dtype)


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
        self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None, queries_to_keep=0, **kwargs
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
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
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
        self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None, queries_to_keep=0, **kwargs
    ):
        """`queries_to_keep` > 0 returns the last that many positions only (see `MosaicFuyuAttention`)."""
        attn_output, attn_weights = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, past_key_values, queries_to_keep,
            **kwargs,
        )
        if queries_to_keep:
            hidden_states = hidden_states[:, -queries_to_keep:]
        hidden_states = hidden_states + self.dropout(attn_output)
        hidden_states = hidden_states + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states)))
        return hidden_states, attn_weights


class MosaicFuyuPreTrainedModel(MosaicPreTrainedModel):
    config: MosaicFuyuConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MosaicFuyuDecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module):
        """Normal(0, initializer_range) for linear and embedding weights, zero biases, unit LayerNorms."""
        super()._init_weights(module)
        if isinstance(module, MosaicFuyuRotaryEmbedding):
            rotary = MosaicFuyuRotaryEmbedding(self.config)
            init.copy_(module.inv_freq, rotary.inv_freq)


class MosaicFuyuDecoder(MosaicFuyuPreTrainedModel):
    """The Persimmon-compatible decoder stack, fed with embeddings."""

    def __init__(self, config: MosaicFuyuConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([MosaicFuyuDecoderLayer(config, index) for index in range(config.num_hidden_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary_emb = MosaicFuyuRotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module):
        self.embed_tokens = value

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past_key_values: Cache | None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        positions_to_keep: int = 0,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`positions_to_keep` > 0 (generation's prefill wants 1) returns the last that many positions only. Where
        it can, the last layer then runs its queries, dense and MLP on those positions alone (it still caches
        every key and value)."""
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions=True needs the eager attention, but the model runs "
                f"{self.config._attn_implementation!r}; load it with attn_implementation='eager'."
            )
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        # Pruning the last layer needs a mask whose rows can be cut; without a mask, attention would align a
        # shorter causal query block to the first keys, which is right for one query only.
        last_layer_queries = positions_to_keep if (
            positions_to_keep
            and not (output_hidden_states or output_attentions)
            and (isinstance(causal_mask, torch.Tensor) or (causal_mask is None and positions_to_keep == 1))
        ) else 0
        hidden_states = inputs_embeds
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for index, layer in enumerate(self.layers):
            # keywords, so that activation checkpointing can drop the cache during training
            hidden_states, attn_weights = layer(
                hidden_states,
                position_embeddings,
                attention_mask=causal_mask,
                past_key_values=past_key_values,
                queries_to_keep=last_layer_queries if index == len(self.layers) - 1 else 0,
                **kwargs,
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.final_layernorm(hidden_states)
        if output_hidden_states:
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)
        if positions_to_keep:
            hidden_states = hidden_states[:, -positions_to_keep:]  # a no-op when the last layer ran those only
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


class MosaicFuyuModel(MosaicFuyuPreTrainedModel):
    """Patch projection plus decoder; returns the final hidden states."""

    def __init__(self, config: MosaicFuyuConfig):
        super().__init__(config)
        self.language_model = MosaicFuyuDecoder._from_config(config)
        self.vision_embed_tokens = nn.Linear(config.patch_dim, config.hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def embed_inputs(self, input_ids, image_patches=None, image_patches_mask=None) -> torch.Tensor:
        """Token embeddings with each image token's embedding replaced by its projected patch."""
        inputs_embeds = self.language_model.embed_tokens(input_ids)
        if image_patches is None:
            return inputs_embeds
        if image_patches.ndim != 3 or image_patches.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"image_patches must have shape (batch={input_ids.shape[0]}, patches, {self.config.patch_dim}), "
                f"got {tuple(image_patches.shape)}."
            )
        if image_patches.shape[-1] != self.config.patch_dim:
            raise ValueError(
                f"Each patch must hold patch_size * patch_size * channels = {self.config.patch_dim} values, "
                f"got {image_patches.shape[-1]}."
            )
        if image_patches_mask is None:
            image_patches_mask = torch.ones(image_patches.shape[:2], dtype=torch.bool, device=image_patches.device)
        image_token_mask = input_ids == self.config.image_token_id  # (B, T)
        tokens_per_sample, patches_per_sample = image_token_mask.sum(-1), image_patches_mask.sum(-1)
        if not torch.equal(tokens_per_sample, patches_per_sample):
            raise ValueError(
                f"Each sample needs one patch per image token: image tokens per sample {tokens_per_sample.tolist()}, "
                f"patches per sample {patches_per_sample.tolist()}."
            )
        weight = self.vision_embed_tokens.weight
        patch_embeds = self.vision_embed_tokens(image_patches[image_patches_mask].to(weight.dtype))  # (N, hidden)
        # row-major over (B, T) on both sides: sample 0's image tokens take sample 0's patches, in order
        return inputs_embeds.masked_scatter(image_token_mask.unsqueeze(-1), patch_embeds.to(inputs_embeds.dtype))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        image_patches: torch.Tensor | None = None,
        image_patches_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        positions_to_keep: int = 0,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`positions_to_keep` > 0 returns the last that many positions only; see `MosaicFuyuDecoder`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if inputs_embeds is None:
            if input_ids.ndim != 2 or input_ids.shape[0] == 0:
                raise ValueError(f"input_ids must be a non-empty (batch, sequence) tensor, got {tuple(input_ids.shape)}.")
            inputs_embeds = self.embed_inputs(input_ids, image_patches, image_patches_mask)
        elif image_patches is not None:
            raise ValueError("image_patches can only be combined with input_ids, which mark where they go.")
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        seq_length = inputs_embeds.shape[1]
        if past_length + seq_length > self.config.max_position_embeddings:
            raise ValueError(
                f"The sequence of {past_length + seq_length} tokens exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}."
            )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            position_ids = self.position_ids_from(attention_mask, past_length, seq_length, inputs_embeds.device)
        return self.language_model(
            inputs_embeds,
            attention_mask,
            position_ids,
            past_key_values if use_cache else None,
            output_attentions=bool(output_attentions),
            output_hidden_states=bool(output_hidden_states),
            positions_to_keep=positions_to_keep,
            **kwargs,
        )

    @staticmethod
    def position_ids_from(attention_mask, past_length: int, seq_length: int, device) -> torch.Tensor:
        """Positions that skip left padding: the count of attended tokens before each one. (B or 1, T)"""
        if attention_mask is None:
            return torch.arange(past_length, past_length + seq_length, device=device).unsqueeze(0)
        positions = attention_mask.long().cumsum(-1) - 1
        return positions.clamp(min=0)[:, -seq_length:]


class MosaicFuyuForCausalLM(MosaicFuyuPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _remote_auto_classes = {"AutoModel": "MosaicFuyuModel", "AutoModelForCausalLM": None, "AutoModelForImageTextToText": None}

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
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        image_patches: torch.Tensor | None = None,
        image_patches_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`labels` are the input ids with -100 wherever no loss is wanted; the shift happens inside.
        `num_items_in_batch` (passed by Trainer) makes the loss exact under gradient accumulation."""
        loss_kwargs = {name: kwargs.pop(name) for name in ("num_items_in_batch", "ignore_index") if name in kwargs}
        outputs = self.model(
            input_ids,
            image_patches,
            image_patches_mask,
            attention_mask,
            position_ids,
            past_key_values,
            inputs_embeds,
            use_cache,
            output_attentions,
            output_hidden_states,
            positions_to_keep=logits_to_keep,
            **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state)  # only the last `logits_to_keep` positions when set
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
