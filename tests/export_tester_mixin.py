"""transformers' export test mixins (ExportTesterMixin, ExportGenerateTesterMixin of tests/exporters/test_export.py),
written for the installed transformers' exporters.

The sdist does not ship tests/exporters, and the repository's test_export.py targets exporter modules newer than
5.23's (`transformers.exporters.decompose`, `components`, ...), so transformers_sdist.py puts this module where the
mixins import it from. It runs the same checks through 5.23's `transformers.exporters`: every class of the tester's
`all_model_classes` exported with torch.export (DynamoExporter) and to ONNX (OnnxExporter, run on onnxruntime), with
static and with dynamic shapes, the exported outputs equal to eager's (same names, atol 1e-4, padding positions
zeroed as upstream does); and for `all_generative_model_classes` the prefill and decode components that
`decompose_for_generation` captures from generate(), each exported and equal to its eager call, with a dynamic and
with a static cache. Like upstream's, they are slow tests; `test_torch_exportable = False` skips them.
"""

import copy

import pytest
import torch
from parameterized import parameterized
from transformers import GenerationConfig
from transformers.exporters import DynamoConfig, DynamoExporter, OnnxConfig, OnnxExporter
from transformers.exporters.utils import decompose_for_generation, get_leaf_tensors

SHAPES = parameterized.expand(
    [(False,), (True,)], name_func=lambda function, _, p: f"{function.__name__}_{'dynamic' if p.args[0] else 'static'}"
)
CACHES = parameterized.expand([("dynamic",), ("static",)], name_func=lambda f, _, p: f"{f.__name__}_{p.args[0]}")
NOT_MODEL_INPUTS = ("labels", "return_loss", "future_values")


def _zero_padded_positions(outputs: dict, attention_mask: torch.Tensor | None) -> dict:
    """Outputs shaped like the mask start (batch, sequence, ...) with the masked positions zeroed: a padding position
    attends to nothing, so backends may put anything there."""
    if attention_mask is None or attention_mask.ndim != 2:
        return outputs
    keep = attention_mask.bool()
    zeroed = {}
    for name, value in outputs.items():
        if value.ndim >= 2 and tuple(value.shape[:2]) == tuple(keep.shape):
            value = value * keep.reshape(*keep.shape, *(1,) * (value.ndim - 2)).to(value.dtype)
        zeroed[name] = value
    return zeroed


def _runnable(exported):
    """What an exporter's result is called as: 5.23 and later return a callable taking the inputs it was exported
    with; 5.20-5.22 return the ExportedProgram itself (not callable), whose module takes only the inputs that were
    traced (flags such as use_cache and return_dict are left out), and an ONNX program answering a list in the
    order of its graph's (named) outputs."""
    if isinstance(exported, torch.onnx.ONNXProgram):
        names = [value.name for value in exported.model.graph.outputs]
        return lambda **inputs: dict(zip(names, exported(**inputs), strict=True))
    if not isinstance(exported, torch.export.ExportedProgram):
        return exported
    module = exported.module()
    traced = exported.call_spec.in_spec.children_specs[1].context  # the spec of (args, kwargs): the kwargs' names
    return lambda **inputs: module(**{name: inputs[name] for name in traced})


def _assert_outputs_match(case, actual: dict, expected: dict, attention_mask, atol: float) -> None:
    case.assertTrue(expected, "eager returned no tensors")
    case.assertEqual(set(actual), set(expected))
    actual, expected = (_zero_padded_positions(o, attention_mask) for o in (actual, expected))
    torch.testing.assert_close(actual, expected, atol=atol, rtol=atol)


class ExportTesterMixin:
    """Export tests over the tester's `all_model_classes`, built from `prepare_config_and_inputs_for_common`."""

    def _model_and_inputs(self, model_class):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        inputs = self._prepare_for_class(inputs, model_class)
        inputs = {name: value for name, value in inputs.items() if value is not None and name not in NOT_MODEL_INPUTS}
        torch.manual_seed(0)
        return model_class(config).eval(), inputs

    def _check_export(self, exporter, config, atol: float = 1e-4) -> None:
        if not self.test_torch_exportable:
            self.skipTest("test_torch_exportable is False")
        for model_class in self.all_model_classes:
            with self.subTest(model_class.__name__):
                model, inputs = self._model_and_inputs(model_class)
                with torch.no_grad():
                    expected = get_leaf_tensors(model(**copy.deepcopy(inputs)))
                exported = exporter.export(model, copy.deepcopy(inputs), config)
                actual = get_leaf_tensors(_runnable(exported)(**copy.deepcopy(inputs)))
                _assert_outputs_match(self, actual, expected, inputs.get("attention_mask"), atol)

    @pytest.mark.slow
    @SHAPES
    def test_torch_export(self, dynamic):
        self._check_export(DynamoExporter(), DynamoConfig(dynamic=dynamic))

    @pytest.mark.slow
    @SHAPES
    def test_onnx_export(self, dynamic):
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
        self._check_export(OnnxExporter(), OnnxConfig(dynamic=dynamic))


class ExportGenerateTesterMixin:
    """Export tests of what generate() runs, over the tester's `all_generative_model_classes`: the prefill and
    decode calls `decompose_for_generation` captures, each exported with torch.export (dynamic shapes) and equal to
    its eager call."""

    generation_inputs = ("input_ids", "attention_mask", "pixel_values", "image_patches_mask")

    @pytest.mark.slow
    @CACHES
    def test_export_for_generation(self, cache_implementation):
        if not self.test_torch_exportable:
            self.skipTest("test_torch_exportable is False")
        for model_class in self.all_generative_model_classes:
            with self.subTest(model_class.__name__):
                model, inputs = self._model_and_inputs(model_class)
                inputs = {name: value for name, value in inputs.items() if name in self.generation_inputs}
                generation_config = GenerationConfig(
                    max_new_tokens=3,
                    do_sample=False,
                    pad_token_id=model.config.pad_token_id,
                    cache_implementation=None if cache_implementation == "dynamic" else cache_implementation,
                )
                components = decompose_for_generation(model, inputs, generation_config=generation_config)
                self.assertEqual(set(components), {"prefill", "decode"})
                for name, (submodel, subinputs) in components.items():
                    with self.subTest(name):
                        with torch.no_grad():
                            expected = get_leaf_tensors(submodel(**copy.deepcopy(subinputs)))
                        exported = DynamoExporter().export(submodel, copy.deepcopy(subinputs), DynamoConfig(True))
                        actual = get_leaf_tensors(_runnable(exported)(**copy.deepcopy(subinputs)))
                        mask = subinputs.get("attention_mask")
                        _assert_outputs_match(self, actual, expected, mask if name == "prefill" else None, 1e-4)
