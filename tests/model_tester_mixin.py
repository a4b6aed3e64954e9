"""One shared mixin for every mosaic model: shapes, save/load, eager vs sdpa, batch invariance,
gradient checkpointing and init statistics. A test class provides the hooks at the top."""

import re
from abc import ABC, abstractmethod

import torch


class ModelTesterMixin(ABC):
    model_classes: tuple = ()
    # {regex over parameter names: expected std at the config from `make_init_config`}
    expected_init_std: dict = {}

    @abstractmethod
    def make_config(self):
        """The tiny random config every test builds from."""

    def make_init_config(self):
        """A config wide enough that sample std estimates are tight (defaults to the tiny one)."""
        return self.make_config()

    @abstractmethod
    def make_inputs(self, config, batch_size: int) -> dict:
        """Deterministic model inputs for `batch_size` samples."""

    @abstractmethod
    def check_output_shapes(self, model, inputs: dict, outputs) -> None:
        """Assert the shapes of `outputs`."""

    @abstractmethod
    def compared_outputs(self, outputs, inputs: dict) -> dict[str, torch.Tensor]:
        """The output tensors two runs on `inputs` must agree on, by name (padding positions left out)."""

    @abstractmethod
    def loss_of(self, model, inputs: dict) -> torch.Tensor:
        """A scalar to differentiate for the gradient tests."""

    def build(self, model_class, config=None, attn_implementation="eager"):
        config = config or self.make_config()
        torch.manual_seed(0)
        return model_class._from_config(config, attn_implementation=attn_implementation).eval()

    def assert_close_outputs(self, first, second, inputs: dict, atol: float) -> None:
        first, second = self.compared_outputs(first, inputs), self.compared_outputs(second, inputs)
        assert first.keys() == second.keys()
        for name in first:
            diff = (first[name] - second[name]).abs().max().item()
            assert diff <= atol, f"{name} differs by {diff} > {atol}"

    def test_output_shapes(self):
        for model_class in self.model_classes:
            model = self.build(model_class)
            inputs = self.make_inputs(model.config, batch_size=3)
            with torch.no_grad():
                self.check_output_shapes(model, inputs, model(**inputs))

    def test_save_load_round_trip_is_bit_exact(self, tmp_path):
        for model_class in self.model_classes:
            model = self.build(model_class)
            model.save_pretrained(tmp_path / model_class.__name__)
            reloaded = model_class.from_pretrained(tmp_path / model_class.__name__, attn_implementation="eager")
            assert set(model.state_dict()) == set(reloaded.state_dict())
            for name, tensor in model.state_dict().items():
                assert torch.equal(tensor, reloaded.state_dict()[name]), name
            inputs = self.make_inputs(model.config, batch_size=2)
            with torch.no_grad():
                self.assert_close_outputs(model(**inputs), reloaded.eval()(**inputs), inputs, atol=0.0)

    def test_sdpa_matches_eager(self):
        for model_class in self.model_classes:
            eager = self.build(model_class, attn_implementation="eager")
            sdpa = self.build(model_class, attn_implementation="sdpa")
            assert sdpa.config._attn_implementation == "sdpa"
            inputs = self.make_inputs(eager.config, batch_size=3)
            with torch.no_grad():
                self.assert_close_outputs(eager(**inputs), sdpa(**inputs), inputs, atol=1e-5)

    def test_batch_invariance(self):
        """Each sample run alone gives the same outputs as its row in a batch."""
        for model_class in self.model_classes:
            model = self.build(model_class, attn_implementation="sdpa")
            inputs = self.make_inputs(model.config, batch_size=3)
            with torch.no_grad():
                batched = self.compared_outputs(model(**inputs), inputs)
                for index in range(3):
                    sample = self.select_sample(inputs, index)
                    alone = self.compared_outputs(model(**sample), sample)
                    for name, tensor in alone.items():
                        diff = (tensor[0] - batched[name][index]).abs().max().item()
                        assert diff <= 1e-5, f"{model_class.__name__}.{name}[{index}] differs by {diff}"

    def select_sample(self, inputs: dict, index: int) -> dict:
        return {
            name: value[index : index + 1] if isinstance(value, torch.Tensor) else value
            for name, value in inputs.items()
        }

    def test_gradient_checkpointing_gives_the_same_gradients(self):
        for model_class in self.model_classes:
            gradients = []
            for checkpointing in (False, True):
                model = self.build(model_class).train()
                if checkpointing:  # transformers 5.20 has only the older name, gradient_checkpointing_enable
                    if hasattr(model, "activation_checkpointing_enable"):
                        model.activation_checkpointing_enable({"use_reentrant": False})
                    else:
                        model.gradient_checkpointing_enable({"use_reentrant": False})
                    assert any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
                self.loss_of(model, self.make_inputs(model.config, batch_size=3)).backward()
                gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            assert gradients[0].keys() == gradients[1].keys() and gradients[0]
            for name in gradients[0]:
                torch.testing.assert_close(gradients[0][name], gradients[1][name], atol=1e-6, rtol=1e-5)

    def test_init_statistics(self):
        model = self.build(self.model_classes[0], config=self.make_init_config())
        parameters = dict(model.named_parameters())
        for pattern, expected_std in self.expected_init_std.items():
            matched = [name for name in parameters if re.fullmatch(pattern, name)]
            assert matched, f"no parameter matches {pattern}"
            for name in matched:
                std = parameters[name].float().std().item()
                assert abs(std - expected_std) <= 0.1 * expected_std, f"{name}: std {std}, expected {expected_std}"
