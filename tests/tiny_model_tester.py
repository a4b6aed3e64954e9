"""The model tester transformers' mixins drive, for a tiny random config: the tester exposes each config field
as an attribute (the mixins read `hidden_size`, `num_hidden_layers`, `vocab_size`, ...) and builds the config
from them, and the image-processing check transformers 5.20-5.22 run only on their own models."""

import tempfile

import torch


class TinyModelTester:
    """`config_class` built from `config_fields` (each also an attribute) and `fixed_fields` (special token ids
    and the like, which the mixins do not read). Subclasses add the inputs (`prepare_config_and_inputs_for_common`)
    and whatever else the mixins read (`seq_length`, ...)."""

    config_class: type
    config_fields: dict
    fixed_fields: dict = {}
    batch_size = 7
    is_training = True

    def __init__(self, parent):
        self.parent = parent
        for name, value in self.config_fields.items():
            setattr(self, name, value)

    def get_config(self):
        return self.config_class(**{name: getattr(self, name) for name in self.config_fields}, **self.fixed_fields)


class PilBackendWithoutTorchvisionTests:
    """transformers 5.20-5.22's ImageProcessingTestMixin checks that a PIL-backend processor is created, saved and
    loaded with torchvision reported absent, by importing `transformers.models.<the test folder's name>`, which
    only models inside transformers have. This is that check for our processors, on every release."""

    def test_pil_can_load_without_torchvision(self):
        from unittest.mock import patch

        from transformers.utils import import_utils

        image_processing_class = self.image_processor_tester._get_image_processing_classes()["pil"]
        absent = {"torchvision": (lambda: False, import_utils.BACKENDS_MAPPING["torchvision"][1])}
        with patch.dict(import_utils.BACKENDS_MAPPING, absent), tempfile.TemporaryDirectory() as folder:
            processor = image_processing_class(**self.image_processor_dict)
            processor.save_pretrained(folder)
            loaded = image_processing_class.from_pretrained(folder)
        self.assertEqual(loaded.to_dict(), processor.to_dict())
        image = self.image_processor_tester.prepare_image_inputs(equal_resolution=True)[0]
        torch.testing.assert_close(loaded(image).pixel_values, processor(image).pixel_values)
