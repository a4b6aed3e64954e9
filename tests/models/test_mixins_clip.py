"""transformers' own common tests (ModelTesterMixin, ConfigTester, ImageProcessingTestMixin, ProcessorTesterMixin)
bound to the CLIP-style family, the way transformers tests CLIPModel, CLIPTextModel(WithProjection),
CLIPVisionModel(WithProjection), CLIPImageProcessor and CLIPProcessor.

The mixins come from the transformers sdist (see transformers_sdist.py). Every skip written below names a capability
transformers' own CLIP class lacks too (its own test suite skips the same test, or the test fails on it); the
mixins skip by themselves what needs an accelerator, flash-attention, deepspeed or the Hub.
"""

import unittest

import pytest
import torch
from packaging import version
from tiny import CAPTIONS
from tiny_model_tester import PilBackendWithoutTorchvisionTests, TinyModelTester
from transformers_sdist import auto_tables_with, load, local_test_images

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
from mosaic_vlm.modeling.mosaic_transformers_compat import TRANSFORMERS_VERSION
from mosaic_vlm.processing import MosaicClipImageProcessor, MosaicClipProcessor, train_bpe_tokenizer

modeling_common = load("test_modeling_common")
configuration_common = load("test_configuration_common")
image_processing_common = load("test_image_processing_common")
processing_common = load("test_processing_common")

ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
ImageProcessingTestMixin = image_processing_common.ImageProcessingTestMixin
ImageProcessingTester = image_processing_common.ImageProcessingTester
ProcessorTesterMixin = processing_common.ProcessorTesterMixin


@pytest.fixture(autouse=True, scope="module")
def _local_test_images(tmp_path_factory):
    with local_test_images(processing_common, tmp_path_factory.mktemp("images")):
        yield


floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor

PAD, BOS, EOS = 0, 1, 2


@pytest.fixture(scope="module", autouse=True)
def _our_classes_in_transformers_tables():
    """The mixins tell a base model from a head by transformers' static name tables: ours sit beside CLIP's."""
    with auto_tables_with(
        MODEL_MAPPING_NAMES={
            "mosaic_clip": "MosaicClipModel",
            "mosaic_clip_text_model": "MosaicClipTextModel",
            "mosaic_clip_vision_model": "MosaicClipVisionModel",
        },
        MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES={"mosaic_clip_text_model": "MosaicClipTextModel"},
        MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES={"mosaic_clip": "MosaicClipModel"},
    ):
        yield


TOWER_FIELDS = {
    "hidden_size": 32,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "attention_dropout": 0.1,
    "initializer_range": 0.02,
}


class MosaicClipVisionModelTester(TinyModelTester):
    config_class = MosaicClipVisionConfig
    config_fields = {"image_size": 30, "patch_size": 6, "num_channels": 3, **TOWER_FIELDS}

    def __init__(self, parent):
        super().__init__(parent)
        self.seq_length = (self.image_size // self.patch_size) ** 2 + 1  # patches plus the class token

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class MosaicClipTextModelTester(TinyModelTester):
    config_class = MosaicClipTextConfig
    config_fields = {"vocab_size": 99, "max_position_embeddings": 512, **TOWER_FIELDS}
    fixed_fields = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
    seq_length = 7

    def prepare_config_and_inputs(self):
        """Texts as CLIP tokenizers give them: random lengths, each ending in EOS (where the text tower pools),
        right-padded to the context length (as CLIP pads every text to 77 tokens). The last two positions are
        always padding: common tests write token ids there."""
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 3) + 3  # no special ids
        attention_mask = torch.zeros_like(input_ids)
        lengths = ids_tensor([self.batch_size], self.seq_length - 3) + 2
        for row, length in enumerate(lengths.tolist()):
            input_ids[row, length - 1] = EOS
            input_ids[row, length:] = PAD
            attention_mask[row, :length] = 1
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class MosaicClipModelTester:
    def __init__(self, parent, is_training=True):
        self.parent = parent
        self.text_model_tester = MosaicClipTextModelTester(parent)
        self.vision_model_tester = MosaicClipVisionModelTester(parent)
        self.batch_size = self.text_model_tester.batch_size
        self.is_training = is_training

    def get_config(self):
        return MosaicClipConfig(
            text_config=self.text_model_tester.get_config().to_dict(),
            vision_config=self.vision_model_tester.get_config().to_dict(),
            projection_dim=64,
        )

    def prepare_config_and_inputs_for_common(self):
        _, input_ids, attention_mask = self.text_model_tester.prepare_config_and_inputs()
        _, pixel_values = self.vision_model_tester.prepare_config_and_inputs()
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        return self.get_config(), {**inputs, "return_loss": True}


class TowerTests:
    """Skips shared by the single-tower test classes: capabilities CLIPTextModel(WithProjection) and
    CLIPVisionModel(WithProjection) lack too."""

    @unittest.skip(reason="A tower computes no loss to train on (CLIP's towers neither)")
    def test_training(self):
        pass

    @unittest.skip(reason="A tower computes no loss to train on (CLIP's towers neither)")
    def test_training_gradient_checkpointing(self):
        pass

    @unittest.skip(reason="A tower computes no loss to train on (CLIP's towers neither)")
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass

    @unittest.skip(reason="A tower computes no loss to train on (CLIP's towers neither)")
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        pass


class MosaicClipVisionModelTest(TowerTests, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MosaicClipVisionModel, MosaicClipVisionModelWithProjection)
    test_can_init_all_missing_weights_before_2023 = True  # the mixin dates models by a copyright line we lack
    test_resize_embeddings = False

    def setUp(self):
        self.model_tester = MosaicClipVisionModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=MosaicClipVisionConfig, has_text_modality=False, hidden_size=48, num_attention_heads=4
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model_get_set_embeddings(self):
        """As transformers tests CLIPVisionModel: the input "embeddings" are the patch convolution."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), torch.nn.Conv2d)
            self.assertIsNone(model.get_output_embeddings())


class MosaicClipTextModelTest(TowerTests, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MosaicClipTextModel, MosaicClipTextModelWithProjection)
    test_can_init_all_missing_weights_before_2023 = True  # the mixin dates models by a copyright line we lack

    def setUp(self):
        self.model_tester = MosaicClipTextModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=MosaicClipTextConfig, hidden_size=48, num_attention_heads=4
        )

    def test_config(self):
        self.config_tester.run_common_tests()


class MosaicClipModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MosaicClipModel,)
    test_can_init_all_missing_weights_before_2023 = True  # the mixin dates models by a copyright line we lack
    additional_model_inputs = ["pixel_values"]
    _is_composite = True

    def setUp(self):
        self.model_tester = MosaicClipModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=MosaicClipConfig,
            has_text_modality=False,
            common_properties=["projection_dim", "logit_scale_init_value"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(
        reason="MosaicClipOutput keeps hidden states in text_model_output / vision_model_output, as "
        "CLIPOutput does (the tower tests check them)"
    )
    def test_hidden_states_output(self):
        pass

    @unittest.skip(
        reason="MosaicClipOutput keeps attentions in text_model_output / vision_model_output, as "
        "CLIPOutput does (the tower tests check them)"
    )
    def test_attention_outputs(self):
        pass

    @unittest.skip(
        reason="MosaicClipOutput keeps hidden states and attentions in the tower outputs, as CLIPOutput "
        "does (the tower tests check them)"
    )
    def test_retain_grad_hidden_states_attentions(self):
        pass


class MosaicClipImageProcessingTester(ImageProcessingTester):
    """Random images of 30-400 px, resized (shortest edge 20) and centre-cropped to 18 x 18."""

    def __init__(self, parent):
        super().__init__(
            parent,
            size={"shortest_edge": 20},
            crop_size={"height": 18, "width": 18},
            do_resize=True,
            do_center_crop=True,
            do_normalize=True,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            do_convert_rgb=True,
        )

    def _get_image_processing_classes(self):
        # the mixin looks the classes up by the test folder's name in transformers' tables; ours has one backend
        return {"pil": MosaicClipImageProcessor}


class MosaicClipImageProcessingTest(PilBackendWithoutTorchvisionTests, ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = MosaicClipImageProcessingTester

    @unittest.skip(
        reason="The mixin exempts 'old' models (CLIP among them, by the test folder's name) from a "
        "torchvision backend; ours is CLIP's processing, and torchvision cannot be installed next to the "
        "pinned CPU torch (its operators fail to register)"
    )
    def test_new_models_require_torchvision_backend(self):
        pass

    @unittest.skipIf(
        TRANSFORMERS_VERSION < version.parse("5.23.0.dev0"),
        reason="5.20-5.22's version of this test leaves do_convert_rgb on and expects 4 channels out; ours, as "
        "the contract of 5.23 and later (test_convert_to_rgb_mixed_input_batch), converts every input to RGB, and "
        "5.23's version of this test turns the conversion off",
    )
    def test_call_numpy_4_channels(self):
        super().test_call_numpy_4_channels()


class MosaicClipProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = MosaicClipProcessor

    @classmethod
    def _setup_tokenizer(cls):
        # trained on the spot (no Hub); "lower newer" etc. are the mixin's own test texts
        return train_bpe_tokenizer(
            # long enough for the mixin's chat-template conversations
            CAPTIONS * 4 + ["lower newer upper older longer string"] * 4,
            vocab_size=128,
            model_max_length=256,
        )

    @classmethod
    def _setup_image_processor(cls):
        return MosaicClipImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
