import logging

import pytest
import torch
import transformers
from model_tester_mixin import ModelTesterMixin
from tiny import random_pixels, random_texts, tiny_clip_config

from mosaic_vlm.modeling import (
    MosaicClipConfig,
    MosaicClipModel,
    MosaicClipTextConfig,
    MosaicClipTextModel,
    MosaicClipTextModelWithProjection,
    MosaicClipVisionConfig,
    MosaicClipVisionModel,
    MosaicClipVisionModelWithProjection,
)

EOS = 3
INIT_WIDTH, INIT_LAYERS = 256, 4  # wide enough for tight std estimates


class TestMosaicClipModel(ModelTesterMixin):
    model_classes = (MosaicClipModel,)

    def make_config(self):
        return tiny_clip_config()

    def make_init_config(self):
        tower = dict(
            hidden_size=INIT_WIDTH,
            intermediate_size=INIT_WIDTH * 4,
            num_hidden_layers=INIT_LAYERS,
            num_attention_heads=4,
        )
        return tiny_clip_config(text_config=tower, vision_config=tower)

    expected_init_std = {
        r".*self_attn\.[qkv]_proj\.weight": INIT_WIDTH**-0.5 * (2 * INIT_LAYERS) ** -0.5,
        r".*self_attn\.out_proj\.weight": INIT_WIDTH**-0.5,
        r".*mlp\.fc1\.weight": (2 * INIT_WIDTH) ** -0.5,
        r".*mlp\.fc2\.weight": INIT_WIDTH**-0.5 * (2 * INIT_LAYERS) ** -0.5,
        r"(text|visual)_projection\.weight": INIT_WIDTH**-0.5,
        r"text_model\.embeddings\.token_embedding\.weight": 0.02,
        r"text_model\.embeddings\.position_embedding\.weight": 0.01,
    }

    def make_inputs(self, config, batch_size):
        input_ids, attention_mask = random_texts(config, batch_size)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": random_pixels(config, batch_size),
        }

    def check_output_shapes(self, model, inputs, outputs):
        batch = inputs["input_ids"].shape[0]
        projection = model.config.projection_dim
        assert outputs.logits_per_image.shape == (batch, batch)
        assert torch.equal(outputs.logits_per_text, outputs.logits_per_image.t())
        assert outputs.text_embeds.shape == outputs.image_embeds.shape == (batch, projection)
        torch.testing.assert_close(outputs.image_embeds.norm(dim=-1), torch.ones(batch))
        assert outputs.vision_model_output.last_hidden_state.shape == (batch, 1 + 16, 32)
        assert outputs.text_model_output.last_hidden_state.shape == (*inputs["input_ids"].shape, 32)

    def compared_outputs(self, outputs, inputs):
        return {
            "text_embeds": outputs.text_embeds,
            "image_embeds": outputs.image_embeds,
            "text_hidden": outputs.text_model_output.last_hidden_state,
            "vision_hidden": outputs.vision_model_output.last_hidden_state,
        }

    def loss_of(self, model, inputs):
        return model(**inputs, return_loss=True).loss

    def test_output_fields_match_transformers_clip_output(self):
        from transformers.models.clip.modeling_clip import CLIPOutput

        model = self.build(MosaicClipModel)
        with torch.no_grad():
            outputs = model(**self.make_inputs(model.config, 2), return_loss=True)
        assert list(outputs.keys()) == list(CLIPOutput.__dataclass_fields__)
        assert set(CLIPOutput.__dataclass_fields__) < set(type(outputs).__dataclass_fields__)

    def test_hidden_states_attentions_and_patch_embeds_on_request(self):
        model = self.build(MosaicClipModel)
        inputs = self.make_inputs(model.config, 2)
        with torch.no_grad():
            outputs = model(**inputs, output_hidden_states=True, output_attentions=True, output_patch_embeds=True)
        vision = outputs.vision_model_output
        assert len(vision.hidden_states) == 3 and len(vision.attentions) == 2
        assert vision.attentions[0].shape == (2, 4, 17, 17)
        assert len(outputs.text_model_output.attentions) == 2
        # causal: no text token attends to a later one
        text_attention = outputs.text_model_output.attentions[0]
        assert torch.all(text_attention.triu(diagonal=1) == 0)
        assert outputs.patch_embeds.shape == (2, 16, 16)
        torch.testing.assert_close(outputs.patch_embeds, model.get_patch_features(inputs["pixel_values"]))

    def test_attentions_under_sdpa_behave_as_transformers(self):
        """transformers' CLIPModel under sdpa returns no attention weights (sdpa computes none) and logs a warning."""
        model = self.build(MosaicClipModel, attn_implementation="sdpa")
        inputs = self.make_inputs(model.config, 2)
        with torch.no_grad():
            outputs = model(**inputs, output_attentions=True)
            expected = model(**inputs)
        assert outputs.text_model_output.attentions == () and outputs.vision_model_output.attentions == ()
        torch.testing.assert_close(outputs.logits_per_image, expected.logits_per_image)

    def test_output_flags_passed_as_none_follow_the_config(self):
        """Each tower reads its own config (as in transformers' CLIPModel); None means "as configured"."""
        on = {"output_hidden_states": True}
        config = tiny_clip_config(text_config=on, vision_config=on)
        config.vision_config.output_attentions = True  # eager (set before the model picks an attention kernel)
        model = self.build(MosaicClipModel, config=config)
        inputs = self.make_inputs(model.config, 2)
        with torch.no_grad():
            for flags in ({}, {"output_hidden_states": None, "output_attentions": None}):
                outputs = model(**inputs, **flags)
                assert len(outputs.text_model_output.hidden_states) == 3
                assert len(outputs.vision_model_output.hidden_states) == 3
                assert len(outputs.vision_model_output.attentions) == 2
                assert outputs.text_model_output.attentions is None
                tower = model.vision_model(inputs["pixel_values"], output_hidden_states=None)
                assert len(tower.hidden_states) == 3
            outputs = model(**inputs, output_hidden_states=False)
        assert outputs.text_model_output.hidden_states is None and outputs.vision_model_output.hidden_states is None

    def test_init_weights_skips_children_without_weight(self):
        """Quantization can leave a child with `weight = None`: initialisation passes over it."""
        model = self.build(MosaicClipModel)
        layer = model.text_model.encoder.layers[0]
        token_embedding = model.text_model.embeddings.token_embedding
        for child in (layer.self_attn.q_proj, layer.mlp.fc1, model.text_projection, token_embedding):
            del child.weight
            child.weight = None
        for module in (layer.self_attn, layer.mlp, model, model.text_model.embeddings):
            model._init_weights(module)

    def test_features_agree_with_forward(self):
        model = self.build(MosaicClipModel)
        inputs = self.make_inputs(model.config, 2)
        with torch.no_grad():
            outputs = model(**inputs)
            image = model.get_image_features(inputs["pixel_values"]).pooler_output
            text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
        torch.testing.assert_close(image / image.norm(dim=-1, keepdim=True), outputs.image_embeds)
        torch.testing.assert_close(text / text.norm(dim=-1, keepdim=True), outputs.text_embeds)

    def test_return_dict_false_gives_tuple(self):
        model = self.build(MosaicClipModel)
        inputs = self.make_inputs(model.config, 2)
        with torch.no_grad():
            as_tuple = model(**inputs, return_loss=True, return_dict=False)
            as_output = model(**inputs, return_loss=True)
        assert isinstance(as_tuple, tuple)
        assert torch.equal(as_tuple[0], as_output.loss) and torch.equal(as_tuple[1], as_output.logits_per_image)

    def test_clip_loss_is_symmetric_cross_entropy(self):
        model = self.build(MosaicClipModel)
        with torch.no_grad():
            outputs = model(**self.make_inputs(model.config, 4), return_loss=True)
        targets = torch.arange(4)
        expected = (
            torch.nn.functional.cross_entropy(outputs.logits_per_text, targets)
            + torch.nn.functional.cross_entropy(outputs.logits_per_image, targets)
        ) / 2
        torch.testing.assert_close(outputs.loss, expected)

    def test_siglip_loss_with_learnable_bias(self):
        model = self.build(MosaicClipModel, config=tiny_clip_config(loss_type="siglip", logit_bias_init_value=-5.0))
        assert model.logit_bias.item() == -5.0
        outputs = model(**self.make_inputs(model.config, 4), return_loss=True)
        logits = outputs.logits_per_text
        signs = 2 * torch.eye(4) - 1
        expected = -torch.nn.functional.logsigmoid(signs * logits).sum() / 4
        torch.testing.assert_close(outputs.loss, expected)
        outputs.loss.backward()
        assert model.logit_bias.grad is not None and model.logit_bias.grad.abs() > 0

    def test_patch_dropout_only_in_training(self):
        model = self.build(MosaicClipModel, config=tiny_clip_config(vision_config={"patch_dropout": 0.5}))
        pixels = random_pixels(model.config, 2)
        with torch.no_grad():
            assert model.vision_model(pixels).last_hidden_state.shape == (2, 17, 32)
            model.train()
            assert model.vision_model(pixels).last_hidden_state.shape == (2, 1 + 8, 32)

    def test_interpolate_pos_encoding_for_other_image_sizes(self):
        model = self.build(MosaicClipModel)
        pixels = torch.randn(2, 3, 48, 64)
        with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
            model.vision_model(pixels)
        with torch.no_grad():
            outputs = model.vision_model(pixels, interpolate_pos_encoding=True)
            assert outputs.last_hidden_state.shape == (2, 1 + 6 * 8, 32)
            # at the native size interpolation is the identity
            native = random_pixels(model.config, 2)
            torch.testing.assert_close(
                model.vision_model(native, interpolate_pos_encoding=True).pooler_output,
                model.vision_model(native).pooler_output,
            )

    def test_interpolated_positions_match_transformers(self):
        import transformers

        model = self.build(MosaicClipModel)
        config = model.config
        reference = transformers.CLIPVisionModel(
            transformers.CLIPVisionConfig(**config.vision_config.to_diff_dict())
        ).eval()
        reference.load_state_dict(model.vision_model.state_dict())
        pixels = torch.randn(2, 3, 48, 64)
        with torch.no_grad():
            ours = model.vision_model(pixels, interpolate_pos_encoding=True).pooler_output
            theirs = reference(pixels, interpolate_pos_encoding=True).pooler_output
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

    def test_bad_inputs_raise_one_clear_error(self):
        model = self.build(MosaicClipModel)
        input_ids, _ = random_texts(model.config, 2)
        pixels = random_pixels(model.config, 2)
        cases = [
            (dict(input_ids=input_ids, pixel_values=pixels[:, :1]), "pixel_values must have shape"),
            (dict(input_ids=input_ids, pixel_values=pixels[0]), "pixel_values must have shape"),
            (dict(input_ids=input_ids, pixel_values=pixels[:0]), "empty batch"),
            (dict(input_ids=input_ids, pixel_values=torch.randn(2, 3, 36, 36)), "does not match the model"),
            (dict(input_ids=input_ids[:, :-3] + 4, pixel_values=pixels), "must contain the EOS token"),
            (dict(input_ids=input_ids[:0], pixel_values=pixels), "non-empty"),
            (dict(input_ids=torch.full((2, 30), EOS), pixel_values=pixels), "longer than max_position_embeddings=24"),
            (
                dict(input_ids=input_ids.masked_fill(input_ids == 0, 128), pixel_values=pixels),
                "token id 128, outside the vocabulary of 128 tokens",
            ),
            (dict(input_ids=input_ids, pixel_values=pixels[:1], return_loss=True), "one text per image"),
        ]
        for inputs, message in cases:
            with pytest.raises(ValueError, match=message):
                model(**inputs)


class TestMosaicClipTowers(ModelTesterMixin):
    """The single-tower models, run through the same mixin on their sub-configs."""

    model_classes = (
        MosaicClipTextModel,
        MosaicClipTextModelWithProjection,
        MosaicClipVisionModel,
        MosaicClipVisionModelWithProjection,
    )

    def build(self, model_class, config=None, attn_implementation="eager"):
        full = tiny_clip_config()
        tower_config = full.text_config if "Text" in model_class.__name__ else full.vision_config
        return super().build(model_class, config or tower_config, attn_implementation)

    expected_init_std = {r"embeddings\.position_embedding\.weight": 0.01, r"embeddings\.token_embedding\.weight": 0.02}

    def make_init_config(self):
        return tiny_clip_config(text_config={"max_position_embeddings": 512}).text_config

    def make_config(self):
        return tiny_clip_config()

    def make_inputs(self, config, batch_size):
        if isinstance(config, MosaicClipVisionConfig) or config.model_type == "mosaic_clip_vision_model":
            return {"pixel_values": random_pixels(config, batch_size)}
        input_ids, attention_mask = random_texts(config, batch_size)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def check_output_shapes(self, model, inputs, outputs):
        batch = next(iter(inputs.values())).shape[0]
        if hasattr(outputs, "image_embeds"):
            assert outputs.image_embeds.shape == (batch, 16)
        elif hasattr(outputs, "text_embeds"):
            assert outputs.text_embeds.shape == (batch, 16)
        else:
            assert outputs.pooler_output.shape == (batch, 32)
        assert outputs.last_hidden_state.shape[0] == batch

    def compared_outputs(self, outputs, inputs):
        first = outputs.get("image_embeds", outputs.get("text_embeds", outputs.get("pooler_output")))
        return {"embeds": first, "last_hidden_state": outputs.last_hidden_state}

    def loss_of(self, model, inputs):
        return self.compared_outputs(model(**inputs), inputs)["embeds"].square().sum()


def test_text_padding_does_not_change_the_pooled_embedding():
    model = MosaicClipTextModel._from_config(tiny_clip_config().text_config).eval()
    input_ids, _ = random_texts(model.config, 3)
    short = input_ids[2:3, :8]  # row 2 ends at position 7
    with torch.no_grad():
        padded = model(input_ids[2:3]).pooler_output
        unpadded = model(short).pooler_output
    torch.testing.assert_close(padded, unpadded, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "config_class, overrides, message",
    [
        (MosaicClipTextConfig, {"hidden_size": 30, "num_attention_heads": 4}, "multiple of num_attention_heads"),
        (MosaicClipTextConfig, {"num_hidden_layers": 0}, "num_hidden_layers must be a positive"),
        (MosaicClipTextConfig, {"hidden_act": "swishy"}, "hidden_act='swishy' is unknown"),
        (MosaicClipTextConfig, {"attention_dropout": 1.5}, r"attention_dropout must lie in \[0, 1\)"),
        (MosaicClipVisionConfig, {"image_size": 100, "patch_size": 32}, "multiple of patch_size"),
        (MosaicClipVisionConfig, {"patch_dropout": -0.1}, "patch_dropout must lie"),
        (MosaicClipConfig, {"projection_dim": -1}, "projection_dim must be a positive"),
        (MosaicClipConfig, {"text_config": {"vocab_size": 0}}, "vocab_size must be a positive"),
    ],
)
def test_bad_config_values_raise_value_error(config_class, overrides, message):
    with pytest.raises(ValueError, match=message):
        config_class(**overrides)


def test_special_token_ids_outside_the_vocabulary_warn_as_transformers(caplog):
    """As transformers' configs: a config with an out-of-vocabulary special id builds, with a warning."""
    transformers.logging.get_logger("transformers.configuration_utils").warning_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="transformers.configuration_utils"):
        config = MosaicClipTextConfig(vocab_size=20)
    assert config.eos_token_id == 49407
    assert "eos_token_id must be `None` or an integer within the vocabulary" in caplog.text


@pytest.mark.parametrize(
    "tower_class, projection_class, config_key",
    [
        (MosaicClipTextModel, MosaicClipTextModelWithProjection, "text_config"),
        (MosaicClipVisionModel, MosaicClipVisionModelWithProjection, "vision_config"),
    ],
)
def test_towers_and_their_projection_models_load_each_other(tmp_path, tower_class, projection_class, config_key):
    """As transformers' CLIP: a saved tower loads into the model with projection (all but the projection), and back."""
    config = getattr(tiny_clip_config(), config_key)
    tower, with_projection = tower_class._from_config(config), projection_class._from_config(config)
    tower.save_pretrained(tmp_path / "tower")
    with_projection.save_pretrained(tmp_path / "projection")
    loaded, info = projection_class.from_pretrained(tmp_path / "tower", output_loading_info=True)
    projection_name = "text_projection.weight" if config_key == "text_config" else "visual_projection.weight"
    assert set(info["missing_keys"]) == {projection_name} and not info["unexpected_keys"]
    inner = loaded.text_model if config_key == "text_config" else loaded.vision_model
    for name, tensor in tower.state_dict().items():
        assert torch.equal(inner.state_dict()[name], tensor), name
    loaded, info = tower_class.from_pretrained(tmp_path / "projection", output_loading_info=True)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) == {projection_name}


def test_bad_config_types_are_refused():
    from huggingface_hub.errors import StrictDataclassError

    with pytest.raises(StrictDataclassError, match="hidden_size"):
        MosaicClipVisionConfig(hidden_size="wide")
    with pytest.raises((ValueError, StrictDataclassError), match="loss_type"):
        MosaicClipConfig(loss_type="triplet")


def test_config_defaults_are_vit_b_32():
    config = MosaicClipConfig()
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (768, 12, 32, 224)
    assert (text.hidden_size, text.num_hidden_layers, text.max_position_embeddings) == (512, 12, 77)
    assert config.projection_dim == 512


def test_forward_compiles_without_graph_breaks():
    """As transformers' CLIPModel: the whole forward, input checks included, traces as one graph."""
    model = MosaicClipModel._from_config(tiny_clip_config(), attn_implementation="sdpa").eval()
    input_ids, attention_mask = random_texts(model.config, 3)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": random_pixels(model.config, 3)}
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits_per_image, model(**inputs).logits_per_image)
