"""Decode speed of the fast-inference routes, ours beside transformers' own FuyuForCausalLM / CLIPModel, on CPU.

Fuyu: the README's ~170M config (hidden 1024, 8 layers, 16 heads, vocab 32000, patch 30; `fuyu_model.FULL`) with
one 1280x960 image worth of patches (32 rows x 43 columns + newlines) and a 30-token prompt, ~1420 tokens. Both
models hold the same random weights, sdpa, fp32. Decode ms/token is timed alone: a prefill (not timed), then
`--new-tokens` greedy steps of one token each, as generate() runs them, for

- eager: a DynamicCache, the plain forward;
- static+compile: a StaticCache, the forward under torch.compile(fullgraph=True) (inductor), fed the 4-D mask and
  positions generate() builds for compileable caches (the compile happens in the warm-up round, never timed);
- int8 weight-only: torchao's Int8WeightOnlyConfig (what `from_pretrained(quantization_config=TorchAoConfig(...))`
  applies), eager, a DynamicCache;
- int8 dynamic: PyTorch's dynamic quantization (`torch.ao.quantization.quantize_dynamic`: int8 weights, each
  step's activations quantized on the fly, fbgemm's int8 GEMMs) of the decoder's and LM head's Linear layers, eager,
  a DynamicCache: the fastest int8 decode found on CPU.

CLIP: image encode (`get_image_features`) of a batch of `--images` 224x224 images at ViT-B/32 shapes
(`clip.VISION_CONFIG`), eager and under torch.compile with inductor's freezing (`compiled_frozen`: the weights are
constants, prepacked for oneDNN's GEMMs; inference only), ours and transformers'.

Before any timing both implementations must agree (Fuyu's greedy tokens, eager and compiled; CLIP's image features
within 1e-4), or nothing is timed. Variants alternate within every repeat (the first round warms up and compiles);
times are medians; ratio = transformers' eager time / this variant's time (> 1: faster than transformers eager).
Timings mean something only on an otherwise idle machine.

    python -m mosaic_vlm.benchmarks.fast_inference [--repeats 5] [--new-tokens 16] [--images 8] [--quick]
"""

import argparse
import importlib.util
import statistics
import time

import torch
import transformers
from transformers import DynamicCache, StaticCache

from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel

from . import clip as clip_benchmark
from . import fuyu_model

QUICK_CLIP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
TOLERANCE = 1e-4


def int8_weight_only(model):
    """`model` with its linear weights quantized by torchao's Int8WeightOnlyConfig (what
    `from_pretrained(..., quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))` applies), in place."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig())
    return model


def int8_dynamic(model):
    """`model` with the Linear layers of its decoder and LM head quantized by PyTorch's dynamic quantization (int8
    weights, activations quantized per call), in place; the patch projection stays float, as quantized loading
    leaves it."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    every_linear_but_the_patches = {torch.nn.Linear: default_dynamic_qconfig, "model.vision_embed_tokens": None}
    return quantize_dynamic(model, every_linear_but_the_patches, dtype=torch.qint8, inplace=True)


class Decoder:
    """One decode variant of a model: its cache, and its forward (plain or compiled)."""

    def __init__(self, model, static: bool, compiled: bool, max_cache_len: int):
        self.model, self.static, self.max_cache_len = model, static, max_cache_len
        self.forward = torch.compile(model.forward, fullgraph=True) if compiled else model.forward

    def prefill(self, inputs: dict):
        if self.static:
            cache = StaticCache(config=self.model.config, max_cache_len=self.max_cache_len)
        else:
            cache = DynamicCache(config=self.model.config)
        logits = self.model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        return cache, logits[:, -1:].argmax(-1)

    def step(self, cache, token, length: int):
        """The forward of `token` at position `length`, with the inputs generate() passes (its
        `prepare_inputs_for_generation`: a 4-D mask for a static cache)."""
        inputs = self.model.prepare_inputs_for_generation(
            token,
            past_key_values=cache,
            attention_mask=torch.ones(token.shape[0], length + 1, dtype=torch.long),
            position_ids=torch.full_like(token, length),
            use_cache=True,
        )
        return self.forward(**inputs).logits[:, -1:].argmax(-1)

    def greedy(self, inputs: dict, new_tokens: int) -> tuple[list[int], float]:
        """`new_tokens` greedy tokens after the prompt, and the seconds the decode steps took (prefill excluded)."""
        cache, token = self.prefill(inputs)
        length, tokens = inputs["input_ids"].shape[1], [token.item()]
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = self.step(cache, token, length)
            tokens.append(token.item())
            length += 1
        return tokens, time.perf_counter() - start


def fuyu_decoders(quick: bool, max_cache_len: int) -> dict:
    shapes = fuyu_model.QUICK if quick else fuyu_model.FULL
    ours, reference = fuyu_model.build_models(shapes)
    decoders = {}
    for who, model in (("ours", ours), ("transformers", reference)):
        decoders[who, "eager"] = Decoder(model, static=False, compiled=False, max_cache_len=max_cache_len)
        decoders[who, "static+compile"] = Decoder(model, static=True, compiled=True, max_cache_len=max_cache_len)
    quantizers = {"int8 dynamic": int8_dynamic}  # each on its own copy of both models
    if importlib.util.find_spec("torchao") is None:
        print("torchao is not installed (pip install torchao, or the test extra): no int8 weight-only rows")
    else:
        quantizers["int8 weight-only"] = int8_weight_only
    for variant, quantize in quantizers.items():
        for who, model in zip(("ours", "transformers"), fuyu_model.build_models(shapes)):
            decoders[who, variant] = Decoder(quantize(model), False, False, max_cache_len)
    return decoders
    ours_int8, reference_int8 = fuyu_model.build_models(fuyu_model.QUICK if quick else fuyu_model.FULL)
    for who, model in (("ours", ours_int8), ("transformers", reference_int8)):
        decoders[who, "int8 weight-only"] = Decoder(int8_weight_only(model), False, False, max_cache_len)
    ours_dynamic, reference_dynamic = fuyu_model.build_models(fuyu_model.QUICK if quick else fuyu_model.FULL)
    for who, model in (("ours", ours_dynamic), ("transformers", reference_dynamic)):
        decoders[who, "int8 dynamic"] = Decoder(int8_dynamic(model), False, False, max_cache_len)
    return decoders


def run_fuyu_decode(repeats: int, new_tokens: int, quick: bool) -> dict:
    rows, cols = (4, 5) if quick else (32, 43)
    decoders = fuyu_decoders(quick, max_cache_len=rows * (cols + 1) + 31 + new_tokens + 1)
    vocab = decoders["ours", "eager"].model.config.vocab_size
    input_ids, patches = fuyu_model.inputs_for(rows, cols, 30, vocab)
    inputs = {"input_ids": input_ids, "pixel_values": patches}
    times = {key: [] for key in decoders}
    tokens = {}
    with torch.inference_mode():
        for repeat in range(repeats + 1):  # the first round warms up (and compiles)
            order = list(decoders.items())
            for key, decoder in order if repeat % 2 else order[::-1]:
                tokens[key], seconds = decoder.greedy(inputs, new_tokens)
                if repeat:
                    times[key].append(seconds / (new_tokens - 1))
            for key in decoders:  # the float variants must decode the same tokens (int8 reports its agreement)
                if not key[1].startswith("int8") and tokens[key] != tokens["ours", "eager"]:
                    raise RuntimeError(f"{key} decodes {tokens[key]}, ours eager {tokens['ours', 'eager']}: not timed")
    reference_ms = statistics.median(times["transformers", "eager"]) * 1000
    cases = []
    for (who, variant), values in times.items():
        ms = statistics.median(values) * 1000
        agree = sum(a == b for a, b in zip(tokens[who, variant], tokens["ours", "eager"])) / new_tokens
        cases.append(
            {"model": who, "case": f"decode {variant}", "ms": ms, "ratio": reference_ms / ms, "tokens_agree": agree}
        )
    return {"tokens": input_ids.shape[1], "new_tokens": new_tokens, "cases": cases}


def clip_models(quick: bool):
    vision = {**clip_benchmark.VISION_CONFIG, **(QUICK_CLIP if quick else {})}
    text = {**clip_benchmark.TEXT_CONFIG, **(QUICK_CLIP if quick else {})}
    projection_dim = vision["projection_dim"]
    torch.manual_seed(0)
    ours = MosaicClipModel(MosaicClipConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
    reference = transformers.CLIPModel(
        transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    )
    reference.load_state_dict(ours.state_dict(), strict=True)
    for model in (ours, reference):
        model.set_attn_implementation("sdpa")
        model.eval().requires_grad_(False)
    return ours, reference


def compiled_frozen(function):
    """`function` under torch.compile(fullgraph=True) with inductor's freezing: the weights become constants of the
    graph, prepacked for oneDNN's GEMMs (inference only). Freezing is read from inductor's config when the graph
    compiles, on a call (torch.compile's `options={"freezing": True}` leaves it off), so every call sets it."""
    compiled = torch.compile(function, fullgraph=True)

    def call(*args):
        with torch._inductor.config.patch(freezing=True):
            return compiled(*args)

    return call


def run_clip_encode(repeats: int, images: int, quick: bool) -> dict:
    ours, reference = clip_models(quick)
    pixel_values = clip_benchmark.make_pixel_values(images)
    variants = {
        ("ours", "eager"): ours.get_image_features,
        ("ours", "compile"): compiled_frozen(ours.get_image_features),
        ("transformers", "eager"): reference.get_image_features,
        ("transformers", "compile"): compiled_frozen(reference.get_image_features),
    }
    times = {key: [] for key in variants}
    with torch.inference_mode():
        expected = reference.get_image_features(pixel_values).pooler_output
        for repeat in range(repeats + 1):
            order = list(variants.items())
            for key, encode in order if repeat % 2 else order[::-1]:
                start = time.perf_counter()
                features = encode(pixel_values).pooler_output
                seconds = time.perf_counter() - start
                if (difference := (features - expected).abs().max().item()) > TOLERANCE:
                    raise RuntimeError(f"{key} image features differ by {difference}: not timed")
                if repeat:
                    times[key].append(seconds)
    reference_ms = statistics.median(times["transformers", "eager"]) * 1000
    cases = []
    for (who, variant), values in times.items():
        ms = statistics.median(values) * 1000
        cases.append({"model": who, "case": f"image encode {variant}", "ms": ms, "ratio": reference_ms / ms})
    return {"images": images, "cases": cases}


def run_fast_inference_benchmark(repeats: int = 5, new_tokens: int = 16, images: int = 8, quick: bool = False) -> dict:
    """Both benchmarks; `cases` holds our variants against transformers' eager (the bench report's rows), `fuyu`
    and `clip` every variant of both implementations."""
    if quick:
        repeats, new_tokens, images = 1, 4, 2
    fuyu, clip = run_fuyu_decode(repeats, new_tokens, quick), run_clip_encode(repeats, images, quick)
    cases = []
    for family, result in (("Fuyu", fuyu), ("CLIP", clip)):
        reference_ms = next(
            row["ms"] for row in result["cases"] if row["model"] == "transformers" and "eager" in row["case"]
        )
        for row in result["cases"]:
            if row["model"] == "ours":
                unit = " (ms/token)" if row["case"].startswith("decode") else ""
                name = f"{family} {row['case']}{unit} vs transformers eager"
                cases.append({"case": name, "ours_ms": row["ms"], "reference_ms": reference_ms, "ratio": row["ratio"]})
    return {"threads": torch.get_num_threads(), "fuyu": fuyu, "clip": clip, "cases": cases}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (default 5)")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens per decode run (default 16)")
    parser.add_argument("--images", type=int, default=8, help="images per CLIP encode (default 8)")
    parser.add_argument("--quick", action="store_true", help="tiny configs, one repeat: a smoke test, not figures")
    args = parser.parse_args(argv)
    result = run_fast_inference_benchmark(args.repeats, args.new_tokens, args.images, args.quick)
    fuyu, clip = result["fuyu"], result["clip"]
    print(f"{result['threads']} threads; Fuyu: {fuyu['tokens']} prompt tokens; CLIP: {clip['images']} images")
    print("| model | case | ms | vs transformers eager | tokens as ours eager |\n|---|---|---:|---:|---:|")
    for case in fuyu["cases"] + clip["cases"]:
        agree = f"{case['tokens_agree']:.0%}" if "tokens_agree" in case else "-"
        unit = " (ms/token)" if case["case"].startswith("decode") else ""
        print(f"| {case['model']} | {case['case']}{unit} | {case['ms']:.1f} | {case['ratio']:.2f} | {agree} |")


if __name__ == "__main__":
    main()
