"""transformers' own common tests (ModelTesterMixin, ConfigTester, ImageProcessingTestMixin, ProcessorTesterMixin)
bound to the Fuyu-style family, the way transformers tests FuyuModel, FuyuForCausalLM, its image processor and
processor.

The mixins come from the transformers sdist (see transformers_sdist.py). The sdist has no GenerationTesterMixin:
tests/models/test_generation_fuyu.py holds our own generation tests. Nor has it the export mixins: those of
tests/export_tester_mixin.py export both classes (torch.export, ONNX) and generate()'s prefill and decode steps.
Every skip written below names a capability transformers' own Fuyu class lacks too (the test fails on it as well), or
a test that has nothing to check here; the mixins skip by themselves what needs an accelerator, flash-attention,
deepspeed or the Hub.
"""

import unittest

import pytest
import torch
from tiny_model_tester import PilBackendWithoutTorchvisionTests, TinyModelTester
from transformers_sdist import auto_tables_with, load, local_test_images

from mosaic_vlm.modeling import MosaicFuyuConfig, MosaicFuyuForCausalLM, MosaicFuyuModel
from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor, train_bpe_tokenizer
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS, IMAGE_PLACEHOLDER

modeling_common = load("test_modeling_common")
configuration_common = load("test_configuration_common")
generation_common = load("generation.test_utils")
export_common = load("exporters.test_export")
image_processing_common = load("test_image_processing_common")
processing_common = load("test_processing_common")

ModelTesterMixin = modeling_common.ModelTesterMixin
GenerationTesterMixin = generation_common.GenerationTesterMixin
ExportGenerateTesterMixin = export_common.ExportGenerateTesterMixin  # ExportTesterMixin comes with ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
ImageProcessingTestMixin = image_processing_common.ImageProcessingTestMixin
ImageProcessingTester = image_processing_common.ImageProcessingTester
ProcessorTesterMixin = processing_common.ProcessorTesterMixin


@pytest.fixture(autouse=True, scope="module")
def _local_test_images(tmp_path_factory):
    with local_test_images(processing_common, tmp_path_factory.mktemp("images")):
        yield


floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor

PAD, BOS, EOS, IMAGE, NEWLINE = 0, 1, 2, 5, 6
FIRST_TEXT_ID = 7  # ids below are special


@pytest.fixture(scope="module", autouse=True)
def _our_classes_in_transformers_tables():
    """The mixins tell a base model from a head by transformers' static name tables: ours sit beside Fuyu's."""
    with auto_tables_with(
        MODEL_MAPPING_NAMES={"mosaic_fuyu": "MosaicFuyuModel"},
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES={"mosaic_fuyu": "MosaicFuyuForCausalLM"},
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES={"mosaic_fuyu": "MosaicFuyuForCausalLM"},
        MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES={"mosaic_fuyu": "MosaicFuyuForCausalLM"},
    ):
        yield


class MosaicFuyuModelTester(TinyModelTester):
    """Each sample: one image of `image_rows` x `image_cols` patches (a newline token ends each row), BOS, then
    text; `pixel_values` holds every sample's patches in image-token order."""

    config_class = MosaicFuyuConfig
    config_fields = {
        "vocab_size": 99,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "hidden_act": "relu2",
        "max_position_embeddings": 64,
        "initializer_range": 0.02,
        "patch_size": 2,
        "num_channels": 3,
    }
    fixed_fields = {
        "image_token_id": IMAGE,
        "image_newline_token_id": NEWLINE,
        "pad_token_id": PAD,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
    }
    image_rows, image_cols, text_length = 2, 2, 5
    num_patches = image_rows * image_cols
    seq_length = image_rows * (image_cols + 1) + 1 + text_length

    def prepare_config_and_inputs_for_common(self):
        image_block = ([IMAGE] * self.image_cols + [NEWLINE]) * self.image_rows + [BOS]
        text_length = self.seq_length - len(image_block)
        text = ids_tensor([self.batch_size, text_length], self.vocab_size - FIRST_TEXT_ID) + FIRST_TEXT_ID
        input_ids = torch.cat([torch.tensor(image_block).expand(self.batch_size, -1), text], dim=1)
        attention_mask = torch.ones_like(input_ids)
        patch_dim = self.patch_size * self.patch_size * self.num_channels
        pixel_values = floats_tensor([self.batch_size, self.num_patches, patch_dim])
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        return self.get_config(), inputs


class MosaicFuyuModelTest(ModelTesterMixin, GenerationTesterMixin, ExportGenerateTesterMixin, unittest.TestCase):
    all_model_classes = (MosaicFuyuModel, MosaicFuyuForCausalLM)
    additional_model_inputs = ["pixel_values"]
    test_can_init_all_missing_weights_before_2023 = True  # the mixin dates models by a copyright line we lack

    def setUp(self):
        self.model_tester = MosaicFuyuModelTester(self)
        self.config_tester = ConfigTester(self, config_class=MosaicFuyuConfig, hidden_size=48, num_attention_heads=4)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(
        reason="No legacy checkpoint layout to convert: transformers' Fuyu maps the keys of its 4.x "
        "checkpoints (language_model.*) on load; ours were only ever saved in the current layout"
    )
    def test_can_load_from_already_mapped_keys(self):
        pass

    @unittest.skip(reason="No legacy checkpoint layout to convert (see test_can_load_from_already_mapped_keys)")
    def test_reverse_loading_mapping(self):
        pass

    @unittest.skip(
        reason="MosaicFuyuConfig is flat: the decoder is the whole model, so there is no text_config "
        "sub-config (transformers' FuyuConfig nests Persimmon's)"
    )
    def test_internal_model_config_and_subconfig_are_same(self):
        pass

    @unittest.skip(
        reason="There is no vision encoder: get_image_features is one linear projection of the patches, "
        "with no hidden states to return (transformers' Fuyu neither)"
    )
    def test_get_image_features_hidden_states(self):
        pass

    @unittest.skip(
        reason="There is no vision encoder: get_image_features is one linear projection of the patches, "
        "with no attentions to return (transformers' Fuyu neither)"
    )
    def test_get_image_features_attentions(self):
        pass


class MosaicFuyuImageProcessingTester(ImageProcessingTester):
    """Random images of 30-400 px, fitted into 64 x 64 and cut into 16 x 16 patches."""

    def __init__(self, parent):
        super().__init__(
            parent,
            size={"height": 64, "width": 64},
            patch_size=16,
            do_resize=True,
            do_normalize=True,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            do_convert_rgb=True,
        )

    def _get_image_processing_classes(self):
        # the mixin looks the classes up by the test folder's name in transformers' tables; ours has one backend
        return {"pil": MosaicFuyuImageProcessor}


class MosaicFuyuImageProcessingTest(PilBackendWithoutTorchvisionTests, ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = MosaicFuyuImageProcessingTester

    @unittest.skip(
        reason="The mixin exempts 'old' models (Fuyu among them, by the test folder's name) from a "
        "torchvision backend; ours is Fuyu's processing, and torchvision cannot be installed next to the "
        "pinned CPU torch (its operators fail to register)"
    )
    def test_new_models_require_torchvision_backend(self):
        pass

    @unittest.skip(
        reason="A Fuyu image processor returns each image's patches (ragged), not a (batch, channels, "
        "height, width) `pixel_values` tensor; transformers' FuyuImageProcessorPil fails these too"
    )
    def test_call_pil(self):
        pass

    @unittest.skip(reason="As test_call_pil: Fuyu returns ragged patches (transformers' Fuyu fails it too)")
    def test_call_numpy(self):
        pass

    @unittest.skip(reason="As test_call_pil: Fuyu returns ragged patches (transformers' Fuyu fails it too)")
    def test_call_pytorch(self):
        pass

    @unittest.skip(reason="As test_call_pil: Fuyu returns ragged patches (transformers' Fuyu fails it too)")
    def test_call_numpy_4_channels(self):
        pass

    @unittest.skip(
        reason="The mixin wants the kwargs class named <Processor>Kwargs; Fuyu's (ours and "
        "transformers' FuyuImagesKwargs) is named <Model>ImagesKwargs, and transformers' fails it too"
    )
    def test_valid_kwargs_set(self):
        pass


class MosaicFuyuProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = MosaicFuyuProcessor

    @classmethod
    def _setup_tokenizer(cls):
        # trained on the spot (no Hub), with Fuyu's special tokens; "lower newer" etc. are the mixin's test texts
        texts = ["what digit is this?", "seven", "a photo of a cat", "lower newer upper older longer string"]
        return train_bpe_tokenizer(
            texts * 5, vocab_size=120, model_max_length=512, extra_special_tokens=list(FUYU_SPECIAL_TOKENS)
        )

    @classmethod
    def _setup_image_processor(cls):
        return MosaicFuyuImageProcessor(patch_size=16, size={"height": 64, "width": 64})

    @classmethod
    def _setup_test_attributes(cls, processor):
        # the mixin writes `image_token` into prompts where an image goes: ours reads "<image>" there (the image
        # token proper, "|SPEAKER|", is one per patch and placed by the processor itself)
        cls.image_token = IMAGE_PLACEHOLDER
