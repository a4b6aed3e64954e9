"""The model tester transformers' mixins drive, for a tiny random config: the tester exposes each config field
as an attribute (the mixins read `hidden_size`, `num_hidden_layers`, `vocab_size`, ...) and builds the config
from them."""


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
