"""Every road to fast inference transformers offers, on both families: static cache and torch.compile (generate's
tokens, the 4-D masks generate builds, decode steps without graph breaks, input checks that cost nothing traced),
quantized loading (bitsandbytes, torchao, optimum-quanto), ONNX export run on onnxruntime, and transformers'
executorch recipe (a static-cache decoder exported with torch.export).

The models are tiny and random, with a wide initialisation (std 0.2) so that greedy decoding does not settle on one
token: "the same tokens" then means something. Quantized and exported models are checked against the float model:
tokens equal where the scheme keeps them (8-bit), otherwise the relative error of the logits (`relative_error`)
stays under a bound stated beside each scheme.
"""

import copy

import pytest
import torch
from tiny import PAD, random_pixels, random_texts, tiny_clip_config, tiny_fuyu_config, varied_batch
from transformers import CompileConfig, DynamicCache, StaticCache
from transformers.masking_utils import create_masks_for_generate

from mosaic_vlm.modeling import MosaicClipModel, MosaicFuyuForCausalLM

GREEDY = dict(do_sample=False, pad_token_id=PAD, eos_token_id=None, max_new_tokens=8)
WIDE = dict(initializer_range=0.2)  # tiny random models whose greedy tokens vary


def build_fuyu(attn_implementation="sdpa", **overrides) -> MosaicFuyuForCausalLM:
    torch.manual_seed(0)
    config = tiny_fuyu_config(**WIDE, **overrides)
    return MosaicFuyuForCausalLM._from_config(config, attn_implementation=attn_implementation).eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, over the whole tensor."""
    return ((actual - expected).norm() / expected.norm()).item()


def decode_step_inputs(model, inputs: dict, cache) -> dict:
    """A prefill of `inputs` into `cache`, then the next step's inputs as generate() makes them: the new token, its
    position, and the mask generate builds for the cache (4-D for a static cache, 2-D otherwise)."""
    with torch.no_grad():
        logits = model(**inputs, past_key_values=cache, use_cache=True).logits
    token = logits[:, -1:].argmax(-1)
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1)[:, -1:]
    if cache.is_compileable:
        attention_mask = create_masks_for_generate(
            config=model.config,
            inputs_embeds=torch.empty(token.shape[0], 1, 0),
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
        )
    return dict(input_ids=token, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache)


# --- static cache and torch.compile ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3], ids=["batch1", "left-padded"])
@pytest.mark.parametrize("num_beams", [1, 2], ids=["greedy", "beam"])
def test_static_cache_generates_the_dynamic_cache_tokens(batch_size, num_beams):
    model = build_fuyu()
    inputs = varied_batch(batch_size)
    expected = model.generate(**inputs, num_beams=num_beams, **GREEDY)
    static = model.generate(**inputs, num_beams=num_beams, cache_implementation="static", **GREEDY)
    assert torch.equal(static, expected)
    assert len(set(expected[:, inputs["input_ids"].shape[1] :].flatten().tolist())) >= 3  # tokens that vary


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_the_4d_masks_generate_builds_equal_the_2d_padding_mask(attn_implementation):
    """generate() hands a compileable cache a 4-D mask (additive for eager attention, boolean for sdpa): the step's
    logits equal those from the 2-D padding mask."""
    model = build_fuyu(attn_implementation)
    inputs = varied_batch(3)
    expected = model(**decode_step_inputs(model, inputs, StaticCache(config=model.config, max_cache_len=64))).logits
    step = decode_step_inputs(model, inputs, StaticCache(config=model.config, max_cache_len=64))
    assert step["attention_mask"].ndim == 4
    torch.testing.assert_close(model(**step).logits, expected, rtol=0, atol=1e-5)
    # the same with a 2-D mask over the whole static cache (a user's forward)
    step = decode_step_inputs(model, inputs, StaticCache(config=model.config, max_cache_len=64))
    step["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones(3, 1, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(**step).logits, expected, rtol=0, atol=1e-5)


def test_masks_of_the_wrong_shape_are_clear_errors():
    model = build_fuyu()
    inputs = varied_batch(2)
    length = inputs["input_ids"].shape[1]
    for mask, message in [
        (torch.ones(2, 1, length, length - 1, dtype=torch.bool), "4-D attention_mask must have shape"),
        (torch.ones(2, 1, 1, length, dtype=torch.bool), "4-D attention_mask must have shape"),
        (torch.ones(2, length + 1), r"\(batch, cached \+ new tokens\)"),
        (torch.ones(2, 1, length), "2-D .* or 4-D"),
    ]:
        with pytest.raises(ValueError, match=message):
            model(**{**inputs, "attention_mask": mask})


@pytest.mark.parametrize("cache_kind", ["static", "dynamic"])
def test_a_decode_step_compiles_with_zero_graph_breaks(cache_kind):
    """torch._dynamo.explain on one decode step as generate() runs it: one graph, no break (the input checks read no
    values while traced)."""
    model = build_fuyu()
    if cache_kind == "static":
        cache = StaticCache(config=model.config, max_cache_len=64)
    else:
        cache = DynamicCache(config=model.config)
    step = decode_step_inputs(model, varied_batch(3), cache)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model.forward)(**step, use_cache=True)
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.parametrize("batch_size", [1, 3], ids=["batch1", "left-padded"])
def test_compiled_forward_on_a_static_cache_gives_eager_tokens(batch_size):
    """The user's pattern `model.forward = torch.compile(model.forward, fullgraph=True)` with a static cache: the
    prefill and every decode step trace as single graphs (the "eager" backend: Dynamo's capture without codegen;
    inductor is in the slow test below)."""
    model = build_fuyu()
    inputs = varied_batch(batch_size)
    expected = model.generate(**inputs, **GREEDY)
    torch._dynamo.reset()
    model.forward = torch.compile(model.forward, fullgraph=True, backend="eager")
    assert torch.equal(model.generate(**inputs, cache_implementation="static", **GREEDY), expected)


@pytest.mark.slow
def test_inductor_auto_compile_and_compiled_forward_give_eager_tokens():
    """transformers' auto-compile (generation_config.compile_config, allowed on CPU) and torch.compile with inductor,
    greedy and beam, batch 1 and left-padded: the tokens of eager decoding."""
    model = build_fuyu()
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told
    torch._dynamo.reset()
    for batch_size, num_beams in [(1, 1), (3, 1), (3, 2)]:
        inputs = varied_batch(batch_size)
        expected = model.generate(**inputs, num_beams=num_beams, **GREEDY)
        compiled = model.generate(
            **inputs, num_beams=num_beams, cache_implementation="static", compile_config=compile_config, **GREEDY
        )
        assert torch.equal(compiled, expected), (batch_size, num_beams)
    assert hasattr(model, "_compiled_call")  # generate did compile
    inputs = varied_batch(3)
    expected = model.generate(**inputs, **GREEDY)
    model.forward = torch.compile(model.forward, fullgraph=True)
    assert torch.equal(model.generate(**inputs, cache_implementation="static", **GREEDY), expected)


def test_input_checks_raise_in_eager_and_leave_nothing_in_an_exported_graph():
    """Out-of-vocabulary ids and patch counts that do not match are ValueErrors in eager; exported, the same forward
    holds no assert and reads no value (`.item()`), so it costs nothing and exports to ONNX."""
    model = build_fuyu()
    inputs = varied_batch(2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(**{**inputs, "input_ids": inputs["input_ids"].masked_fill(inputs["input_ids"] == 20, 99)})
    with pytest.raises(ValueError, match="one patch per image token"):
        model(**{**inputs, "image_patches_mask": torch.ones_like(inputs["image_patches_mask"])})
    clip = MosaicClipModel._from_config(tiny_clip_config()).eval()
    input_ids, attention_mask = random_texts(clip.config, 2)
    clip_inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=random_pixels(clip.config, 2))
    with pytest.raises(ValueError, match="EOS"):
        clip(**{**clip_inputs, "input_ids": input_ids.masked_fill(input_ids == 3, 5)})
    for module, kwargs in [(model, {**inputs, "use_cache": False}), (clip, clip_inputs)]:
        graph = str(torch.export.export(module, (), kwargs).graph)
        for op in ("_assert_async", "_is_all_true", "_local_scalar_dense", "_assert_scalar"):
            assert op not in graph, (type(module).__name__, op)


# --- quantized loading -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A float Fuyu (hidden 64: bitsandbytes' 4-bit CPU path takes widths in multiples of 64) and CLIP, saved."""
    folder = tmp_path_factory.mktemp("float")
    fuyu = build_fuyu(hidden_size=64, intermediate_size=128)
    torch.manual_seed(0)
    clip = MosaicClipModel._from_config(wide_clip_config()).eval()
    fuyu.save_pretrained(folder / "fuyu")
    clip.save_pretrained(folder / "clip")
    return folder, fuyu, clip


def wide_clip_config():
    """tiny_clip_config with widths of 64: bitsandbytes' 4-bit CPU path takes multiples of 64 in, 32 out."""
    wide = dict(hidden_size=64, intermediate_size=128, projection_dim=64)
    config = tiny_clip_config(text_config=wide, vision_config=wide)
    config.projection_dim = 64
    return config


def scheme(name: str):
    """The quantization_config of a scheme (its library imported, or the test skipped)."""
    if name.startswith("bnb"):
        pytest.importorskip("bitsandbytes")
        from transformers import BitsAndBytesConfig

        if name == "bnb-8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    if name.startswith("torchao"):
        pytest.importorskip("torchao")
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup
        from transformers import TorchAoConfig

        if name == "torchao-int8":
            return TorchAoConfig(Int8WeightOnlyConfig())
        # torchao's Int4WeightOnlyConfig has no CPU layout; int4 values in int8 storage run everywhere
        return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
    pytest.importorskip("optimum.quanto")
    from transformers import QuantoConfig

    return QuantoConfig(weights={"quanto-int8": "int8", "quanto-int4": "int4"}[name])


# scheme -> (Fuyu's greedy tokens equal the float model's, bound on the relative logit error of Fuyu and of CLIP).
# Measured: 8-bit schemes 0.015-0.025 (Fuyu) and 0.03-0.04 (CLIP); 4-bit schemes 0.24-0.33 and 0.11-0.37 (random
# weights of std 0.2 are harsher on 4 bits than trained ones). Eight greedy tokens of one sample stay equal at 8 bits.
SCHEMES = {
    "bnb-8bit": (True, 0.1, 0.1),
    "bnb-4bit": (False, 0.5, 0.5),
    "torchao-int8": (True, 0.1, 0.1),
    "torchao-int4": (False, 0.5, 0.5),
    "quanto-int8": (True, 0.1, 0.1),
    "quanto-int4": (False, 0.5, 0.5),
}
SERIALIZABLE = {"bnb-8bit", "bnb-4bit", "torchao-int8", "torchao-int4"}  # transformers cannot save quanto models


@pytest.mark.parametrize("name", list(SCHEMES))
def test_quantized_loading_generates_and_classifies(name, saved_models, tmp_path):
    folder, fuyu, clip = saved_models
    same_tokens, fuyu_bound, clip_bound = SCHEMES[name]
    batch, sample = varied_batch(2), varied_batch(1)
    quantized = MosaicFuyuForCausalLM.from_pretrained(folder / "fuyu", quantization_config=scheme(name))
    assert quantized.model.vision_embed_tokens.weight.dtype == torch.float32  # left unquantized
    if name in SERIALIZABLE:  # saved before its first forward: bitsandbytes' 4-bit CPU path repacks on the first
        quantized.save_pretrained(tmp_path / "fuyu")
    with torch.no_grad():
        logits = quantized(**batch).logits
        assert relative_error(logits, fuyu(**batch).logits) < fuyu_bound
    tokens = quantized.generate(**sample, **GREEDY)
    assert tokens.shape == (1, sample["input_ids"].shape[1] + GREEDY["max_new_tokens"])
    if same_tokens:
        assert torch.equal(tokens, fuyu.generate(**sample, **GREEDY))
    if name in SERIALIZABLE:
        reloaded = MosaicFuyuForCausalLM.from_pretrained(tmp_path / "fuyu")
        with torch.no_grad():
            torch.testing.assert_close(reloaded(**batch).logits, logits, rtol=0, atol=1e-6)
        assert torch.equal(reloaded.generate(**sample, **GREEDY), tokens)

    quantized_clip = MosaicClipModel.from_pretrained(folder / "clip", quantization_config=scheme(name))
    input_ids, attention_mask = random_texts(clip.config, 4)
    clip_inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=random_pixels(clip.config, 3))
    with torch.no_grad():
        expected = clip(**clip_inputs).logits_per_image
        actual = quantized_clip(**clip_inputs).logits_per_image
    assert actual.shape == (3, 4) and relative_error(actual, expected) < clip_bound


def test_torch_dynamic_int8_quantization_of_every_linear_generates_the_float_tokens():
    """PyTorch's dynamic quantization (int8 weights, activations quantized per call; the fastest int8 decode on CPU
    in the fast-inference benchmark) of every Linear, the patch projection included (its weight is then a method)."""
    fuyu = build_fuyu()
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fuyu), {torch.nn.Linear}, dtype=torch.qint8)
    assert not isinstance(quantized.model.vision_embed_tokens.weight, torch.Tensor)
    batch, sample = varied_batch(2), varied_batch(1)
    with torch.no_grad():
        assert relative_error(quantized(**batch).logits, fuyu(**batch).logits) < 0.1
    assert torch.equal(quantized.generate(**sample, **GREEDY), fuyu.generate(**sample, **GREEDY))


# --- ONNX export (torch.onnx.export(dynamo=True)) run on onnxruntime ---------------------------------------------


class Outputs(torch.nn.Module):
    """`call(model, *inputs)` as a module with tensor inputs and outputs, for torch.onnx.export."""

    def __init__(self, model, call):
        super().__init__()
        self.model, self.call = model, call

    def forward(self, *inputs):
        return self.call(self.model, *inputs)


def onnxruntime_outputs(module, inputs: tuple, path) -> list[torch.Tensor]:
    """Export `module` with torch.onnx.export(dynamo=True), run it on onnxruntime's CPU provider."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.onnx.export(module, inputs, path, dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {argument.name: value.numpy() for argument, value in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(output) for output in session.run(None, feeds)]


@pytest.mark.slow
def test_clip_towers_and_model_export_to_onnx(tmp_path):
    torch.manual_seed(0)
    model = MosaicClipModel._from_config(tiny_clip_config(), attn_implementation="sdpa").eval()
    input_ids, attention_mask = random_texts(model.config, 3)
    pixel_values = random_pixels(model.config, 2)
    cases = {
        "model": (
            lambda m, i, a, p: m(input_ids=i, attention_mask=a, pixel_values=p)[:4],
            (input_ids, attention_mask),
        ),
        "image": (lambda m, p: m.get_image_features(pixel_values=p).pooler_output, ()),
        "text": (lambda m, i, a: m.get_text_features(input_ids=i, attention_mask=a).pooler_output, None),
    }
    for name, (call, texts) in cases.items():
        inputs = (input_ids, attention_mask) if texts is None else (*texts, pixel_values)
        with torch.no_grad():
            expected = call(model, *inputs)
        expected = [expected] if isinstance(expected, torch.Tensor) else [t for t in expected if t is not None]
        actual = onnxruntime_outputs(Outputs(model, call), inputs, tmp_path / f"{name}.onnx")
        assert len(actual) == len(expected) > 0, name
        for got, want in zip(actual, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_fuyu_forward_with_image_patches_exports_to_onnx(tmp_path):
    """The whole forward of a left-padded batch: patches placed by their mask, padding skipped, logits out."""
    model = build_fuyu()
    batch = varied_batch(3)
    names = ("input_ids", "attention_mask", "pixel_values", "image_patches_mask")
    inputs = tuple(batch[name] for name in names)

    def call(model, *values):
        return model(**dict(zip(names, values)), use_cache=False).logits

    with torch.no_grad():
        expected = call(model, *inputs)
    (actual,) = onnxruntime_outputs(Outputs(model, call), inputs, tmp_path / "fuyu.onnx")
    attended = batch["attention_mask"].bool()  # a padding position attends to nothing: its logits mean nothing
    torch.testing.assert_close(actual[attended], expected[attended], rtol=0, atol=1e-4)


# --- transformers' executorch recipe ------------------------------------------------------------------------------


def test_executorch_recipe_exports_the_decoder_with_a_static_cache_and_gives_eager_tokens():
    """transformers' TorchExportableModuleForDecoderOnlyLM exports the decoder over a StaticCache (torch.export,
    what ExecuTorch lowers). Driven with an image prompt (its patches placed in eager: the recipe takes token ids or
    embeddings), a prefill then one token a step at the right cache positions, it gives eager's greedy tokens."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model = build_fuyu()
    batch = varied_batch(1)
    inputs = {"input_ids": batch["input_ids"], "pixel_values": batch["pixel_values"]}
    expected = model.generate(**inputs, **GREEDY)[0, inputs["input_ids"].shape[1] :]

    model.generation_config.cache_implementation = "static"
    model.generation_config.cache_config = {"batch_size": 1, "max_cache_len": 64}
    recipe = TorchExportableModuleForDecoderOnlyLM(model)
    length = torch.export.Dim("length", max=63)
    sample = model.get_input_embeddings()(torch.tensor([[20, 21]]))
    program = recipe.export(
        inputs_embeds=sample,
        cache_position=torch.arange(2),
        dynamic_shapes={"inputs_embeds": {1: length}, "cache_position": {0: length}},
        strict=False,
    ).module()

    with torch.no_grad():
        embeddings = model.get_input_embeddings()(inputs["input_ids"])
        image_tokens = model.model.image_token_mask(inputs["input_ids"], embeddings)
        embeddings = model.model.place_patches(embeddings, image_tokens, inputs["pixel_values"], None)
        position = embeddings.shape[1]
        logits = program(inputs_embeds=embeddings, cache_position=torch.arange(position))
        tokens = []
        for _ in range(GREEDY["max_new_tokens"]):
            tokens.append(logits[0, -1].argmax().item())
            step = model.get_input_embeddings()(torch.tensor([[tokens[-1]]]))
            logits = program(inputs_embeds=step, cache_position=torch.tensor([position]))
            position += 1
    assert tokens == expected.tolist()
