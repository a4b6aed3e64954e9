import json
import logging

import pytest
import torch
import transformers
from model_tester_mixin import ModelTesterMixin
from tiny import BOS, IMAGE, tiny_fuyu_config, varied_batch

from mosaic_vlm.modeling import MosaicFuyuConfig, MosaicFuyuForCausalLM, MosaicFuyuModel


class TestMosaicFuyu(ModelTesterMixin):
    model_classes = (MosaicFuyuForCausalLM, MosaicFuyuModel)
    expected_init_std = {
        r".*\.(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.weight": 0.02,
        r"lm_head\.weight": 0.02,
    }

    def make_config(self):
        return tiny_fuyu_config()

    def make_init_config(self):
        return tiny_fuyu_config(hidden_size=128, intermediate_size=512)

    def make_inputs(self, config, batch_size):
        return varied_batch(batch_size)

    def check_output_shapes(self, model, inputs, outputs):
        batch, length = inputs["input_ids"].shape
        if isinstance(model, MosaicFuyuForCausalLM):
            assert outputs.logits.shape == (batch, length, model.config.vocab_size)
        else:
            assert outputs.last_hidden_state.shape == (batch, length, model.config.hidden_size)
        assert outputs.past_key_values.get_seq_length() == length

    def compared_outputs(self, outputs, inputs):
        values = outputs.logits if "logits" in outputs else outputs.last_hidden_state
        return {"values": values[inputs["attention_mask"].bool()]}  # real tokens only, padding rows dropped

    def select_sample(self, inputs, index):
        """One sample alone: its padding removed, its patches only."""
        keep = inputs["attention_mask"][index].bool()
        count = int(inputs["image_patches_mask"][index].sum())
        return {
            "input_ids": inputs["input_ids"][index, keep][None],
            "attention_mask": inputs["attention_mask"][index, keep][None],
            "pixel_values": inputs["pixel_values"][index, :count][None],
            "image_patches_mask": inputs["image_patches_mask"][index, :count][None],
        }

    def test_batch_invariance(self):
        """Left-padded rows match each sample run alone, at every real (unpadded) position."""
        model = self.build(MosaicFuyuForCausalLM, attn_implementation="sdpa")
        inputs = varied_batch(4)
        with torch.no_grad():
            batched = model(**inputs).logits
            for index in range(4):
                alone = model(**self.select_sample(inputs, index)).logits[0]
                keep = inputs["attention_mask"][index].bool()
                torch.testing.assert_close(batched[index, keep], alone, atol=1e-5, rtol=1e-5)

    def loss_of(self, model, inputs):
        outputs = model(**inputs)
        values = outputs.logits if "logits" in outputs else outputs.last_hidden_state
        return values.square().mean()

    def test_kv_cache_decode_equals_full_forward(self):
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(3)
        continuation = torch.randint(20, 60, (3, 4), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            full_ids = torch.cat([inputs["input_ids"], continuation], dim=1)
            full_mask = torch.cat([inputs["attention_mask"], torch.ones_like(continuation)], dim=1)
            full = model(**{**inputs, "input_ids": full_ids, "attention_mask": full_mask}).logits
            step = model(**inputs, use_cache=True)
            cache, mask = step.past_key_values, inputs["attention_mask"]
            decoded = [step.logits]
            for position in range(4):
                mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
                step = model(
                    input_ids=continuation[:, position : position + 1], attention_mask=mask, past_key_values=cache
                )
                decoded.append(step.logits)
        real = full_mask.bool()
        torch.testing.assert_close(torch.cat(decoded, dim=1)[real], full[real], atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
    def test_logits_to_keep_equals_the_full_forward_and_caches_every_position(self, attn_implementation):
        """The last layer runs only the kept positions' queries; logits and the cache must not change."""
        model = self.build(MosaicFuyuForCausalLM, attn_implementation=attn_implementation)
        padded = varied_batch(3)
        alone = self.select_sample(padded, 0)
        del alone["attention_mask"]  # no mask at all: the causal mask is implicit under sdpa
        with torch.no_grad():
            for inputs in (padded, alone):
                full = model(**inputs, use_cache=True)
                for keep in (1, 3):
                    kept = model(**inputs, use_cache=True, logits_to_keep=keep)
                    assert kept.logits.shape[1] == keep
                    torch.testing.assert_close(kept.logits, full.logits[:, -keep:], atol=1e-5, rtol=1e-5)
                    every_layer = model(**inputs, logits_to_keep=keep, output_hidden_states=True)  # nothing pruned
                    torch.testing.assert_close(every_layer.logits, kept.logits, atol=1e-5, rtol=1e-5)
                    assert every_layer.hidden_states[-1].shape[1] == full.logits.shape[1]
                    for full_layer, kept_layer in zip(full.past_key_values.layers, kept.past_key_values.layers):
                        torch.testing.assert_close(kept_layer.keys, full_layer.keys)
                        torch.testing.assert_close(kept_layer.values, full_layer.values)

    def test_loss_covers_labelled_tokens_only(self):
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(2)
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, -2:] = inputs["input_ids"][:, -2:]
        outputs = model(**inputs, labels=labels)
        logits = outputs.logits[:, :-1].reshape(-1, model.config.vocab_size)
        expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
        torch.testing.assert_close(outputs.loss, expected)

    def test_loss_with_num_items_in_batch_sums_for_gradient_accumulation(self):
        """Two micro-batches with num_items_in_batch = all labelled tokens add up to the full-batch loss."""
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(4)
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[0, -3:], labels[1, -1:], labels[2, -2:], labels[3, -4:] = (
            inputs["input_ids"][i, -n:] for i, n in ((0, 3), (1, 1), (2, 2), (3, 4))
        )
        full = model(**inputs, labels=labels).loss
        total_items = torch.tensor(int((labels[:, 1:] != -100).sum()))
        halves = [slice(0, 2), slice(2, 4)]
        accumulated = sum(
            model(
                **{name: value[half] for name, value in inputs.items()},
                labels=labels[half],
                num_items_in_batch=total_items,
            ).loss
            for half in halves
        )
        torch.testing.assert_close(accumulated, full)
        # without num_items_in_batch, averaging the micro-batch means differs here (unequal label counts)
        naive = sum(model(**{n: v[h] for n, v in inputs.items()}, labels=labels[h]).loss for h in halves) / 2
        assert (naive - full).abs() > 1e-4

    def test_text_only_input(self):
        model = self.build(MosaicFuyuForCausalLM)
        with torch.no_grad():
            outputs = model(input_ids=torch.tensor([[BOS, 20, 21, 22]]))
        assert outputs.logits.shape == (1, 4, 64)

    def test_bad_inputs_raise_one_clear_error(self):
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(2)
        holey_mask = inputs["image_patches_mask"].clone()
        holey_mask[0, 0] = False  # a real patch after a padding one
        holey_mask[0, -1] = True
        cases = [
            ({**inputs, "image_patches_mask": inputs["image_patches_mask"] & False}, "one patch per image token"),
            ({**inputs, "pixel_values": inputs["pixel_values"][..., :-1]}, "patch_size \\* patch_size \\* channels"),
            ({**inputs, "pixel_values": inputs["pixel_values"][:1]}, "pixel_values must have shape"),
            ({**inputs, "image_patches_mask": holey_mask}, "real patches first, then its padding"),
            ({"input_ids": torch.tensor([[BOS, 20, 64]])}, "token id 64, outside the vocabulary of 64 tokens"),
            ({"input_ids": torch.tensor([[BOS, -1]])}, "token id -1, outside the vocabulary of 64 tokens"),
            ({"input_ids": None}, "exactly one of input_ids and inputs_embeds"),
        ]
        for bad_inputs, message in cases:
            with pytest.raises(ValueError, match=message):
                model(**bad_inputs)

    def test_longer_than_max_position_embeddings_runs(self):
        """Rotary positions have no table to overrun: as Persimmon, a longer sequence runs (extrapolated)."""
        model = self.build(MosaicFuyuForCausalLM)
        with torch.no_grad():
            assert model(input_ids=torch.full((1, 200), 20)).logits.shape == (1, 200, 64)

    def test_image_patches_is_a_deprecated_name_of_pixel_values(self):
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(2)
        old_style = {**inputs, "image_patches": inputs["pixel_values"]}
        del old_style["pixel_values"]
        with torch.no_grad():
            expected = model(**inputs).logits
            for module in (model, model.model):
                with pytest.warns(
                    FutureWarning,
                    match="`image_patches` is deprecated and will be removed in mosaic-vlm 0.3. Use `pixel_values`",
                ):
                    outputs = module(**old_style)
                values = outputs.logits if module is model else model.lm_head(outputs.last_hidden_state)
                torch.testing.assert_close(values, expected)

    def test_inputs_embeds_with_image_patches_equal_input_ids(self):
        """Without input_ids the image tokens are found by their embedding, as transformers' Fuyu does."""
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(3)
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        with torch.no_grad():
            expected = model(**inputs).logits
            from_embeds = model(**{**inputs, "input_ids": None, "inputs_embeds": embeds}).logits
        torch.testing.assert_close(from_embeds, expected)

    def test_output_flags_passed_as_none_follow_the_config(self):
        config = tiny_fuyu_config(output_hidden_states=True)
        config.output_attentions = True  # eager (set before the model picks an attention kernel)
        model = self.build(MosaicFuyuForCausalLM, config=config)
        inputs = varied_batch(2)
        with torch.no_grad():
            for flags in ({}, {"output_hidden_states": None, "output_attentions": None}):
                outputs = model(**inputs, **flags)
                assert len(outputs.hidden_states) == 3 and len(outputs.attentions) == 2
            outputs = model(**inputs, output_hidden_states=False, output_attentions=False)
        assert outputs.hidden_states is None and outputs.attentions is None

    def test_attentions_under_sdpa_behave_as_transformers(self):
        """transformers' models under sdpa return no attention weights (sdpa computes none) and log a warning."""
        model = self.build(MosaicFuyuForCausalLM, attn_implementation="sdpa")
        inputs = varied_batch(2)
        with torch.no_grad():
            outputs = model(**inputs, output_attentions=True)
            expected = model(**inputs).logits
        assert outputs.attentions == ()
        torch.testing.assert_close(outputs.logits, expected)

    def test_shift_labels_replace_the_internal_shift(self):
        """Sequence-parallel training passes targets already aligned with the logits: the loss takes them as given."""
        model = self.build(MosaicFuyuForCausalLM)
        inputs = varied_batch(2)
        shift_labels = torch.full_like(inputs["input_ids"], -100)
        shift_labels[:, -3:] = torch.tensor([[21, 22, 23], [24, 25, 26]])
        outputs = model(**inputs, labels=inputs["input_ids"], shift_labels=shift_labels)
        expected = torch.nn.functional.cross_entropy(
            outputs.logits.reshape(-1, 64), shift_labels.reshape(-1), ignore_index=-100
        )
        torch.testing.assert_close(outputs.loss, expected)

    def test_resized_embeddings_stay_tied_to_the_lm_head(self):
        model = self.build(MosaicFuyuForCausalLM, config=tiny_fuyu_config(tie_word_embeddings=True))
        assert model.lm_head.weight is model.get_input_embeddings().weight
        model.resize_token_embeddings(80)
        assert model.config.vocab_size == 80 and model.lm_head.weight is model.get_input_embeddings().weight
        with torch.no_grad():
            assert model(input_ids=torch.tensor([[BOS, 79]])).logits.shape == (1, 2, 80)

    @pytest.mark.parametrize(
        "rope_parameters",
        [
            {"rope_type": "default"},
            {"rope_type": "linear", "factor": 4.0},
            {"rope_type": "dynamic", "factor": 4.0},
            {"rope_type": "yarn", "factor": 4.0},
            {
                "rope_type": "llama3",
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            {
                "rope_type": "longrope",
                "short_factor": [1.0, 1.5],
                "long_factor": [2.0, 3.0],
                "original_max_position_embeddings": 32,
            },
        ],
        ids=lambda parameters: parameters["rope_type"],
    )
    def test_rotary_angles_equal_persimmons_for_every_rope_type(self, rope_parameters):
        """Same rope_parameters, same cos/sin as transformers' Persimmon (Fuyu's decoder), short and long inputs."""
        from transformers.models.persimmon.modeling_persimmon import PersimmonRotaryEmbedding

        rope_parameters = {**rope_parameters, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
        ours = MosaicFuyuModel(tiny_fuyu_config(rope_parameters=dict(rope_parameters))).language_model.rotary_emb
        persimmon_config = transformers.PersimmonConfig(
            vocab_size=64,
            hidden_size=32,
            num_attention_heads=4,
            max_position_embeddings=128,
            rope_parameters=dict(rope_parameters),
        )
        theirs = PersimmonRotaryEmbedding(persimmon_config)
        hidden = torch.zeros(1, dtype=torch.float32)
        for length in (10, 200):  # past max_position_embeddings, where dynamic and longrope change
            positions = torch.arange(length).unsqueeze(0)
            for our_part, their_part in zip(ours(hidden, positions), theirs(hidden, positions)):
                torch.testing.assert_close(our_part, their_part)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 30}, "multiple of num_attention_heads"),
        ({"partial_rotary_factor": 0.0}, "partial_rotary_factor must lie in"),
        ({"partial_rotary_factor": 0.3}, "whole even number"),
        ({"partial_rotary_factor": 0.25, "hidden_size": 24, "num_attention_heads": 4}, "whole even number"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": -1.0}}, "rope_theta must be a positive"),
        ({"image_newline_token_id": IMAGE}, "must differ"),
        ({"hidden_act": "nope"}, "hidden_act='nope' is unknown"),
        ({"patch_size": 0}, "patch_size must be a positive"),
    ],
)
def test_bad_config_values_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_fuyu_config(**overrides)


def test_special_token_ids_outside_the_vocabulary_warn_as_transformers(caplog):
    """As transformers' configs: a config with an out-of-vocabulary special id builds, with a warning."""
    transformers.logging.get_logger("transformers.configuration_utils").warning_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="transformers.configuration_utils"):
        config = tiny_fuyu_config(image_newline_token_id=71019)
    assert config.image_newline_token_id == 71019
    assert "image_newline_token_id must be `None` or an integer within the vocabulary" in caplog.text


def test_config_defaults_are_fuyu_8b():
    config = MosaicFuyuConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.vocab_size) == (
        4096,
        36,
        64,
        262144,
    )
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 25000.0, "partial_rotary_factor": 0.5}
    assert (config.rope_theta, config.partial_rotary_factor, config.hidden_act, config.patch_dim) == (
        25000.0,
        0.5,
        "relu2",
        2700,
    )


def test_flat_rope_fields_of_saved_configs_load_into_rope_parameters(tmp_path):
    """Configs saved before rope_parameters (top-level rope_theta / partial_rotary_factor) load unchanged."""
    saved = tiny_fuyu_config().to_dict()
    del saved["rope_parameters"]
    (tmp_path / "config.json").write_text(json.dumps({**saved, "rope_theta": 1000.0, "partial_rotary_factor": 0.25}))
    config = MosaicFuyuConfig.from_pretrained(tmp_path)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 0.25}
    config = tiny_fuyu_config(rope_parameters={"rope_type": "linear", "factor": 2.0})
    assert config.rope_parameters["rope_theta"] == 25000.0 and config.partial_rotary_factor == 0.5


@pytest.mark.parametrize("use_cache", [False, True])
def test_forward_compiles_without_graph_breaks(use_cache):
    """Placing the patches, the input checks and the decoder trace as one graph (transformers' Fuyu: without cache)."""
    torch.manual_seed(0)
    model = MosaicFuyuForCausalLM._from_config(tiny_fuyu_config(), attn_implementation="sdpa").eval()
    inputs = varied_batch(3)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        expected = model(**inputs, use_cache=use_cache).logits
        torch.testing.assert_close(compiled(**inputs, use_cache=use_cache).logits, expected)
