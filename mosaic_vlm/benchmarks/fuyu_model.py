"""Prefill and decode time of MosaicFuyuForCausalLM vs transformers' FuyuForCausalLM, side by side.

A ~170M config (hidden 1024, 8 layers, 16 heads, vocab 32000, patch 30) and one 1280x960 image worth of
patches (32 rows x 43 columns + newlines) plus a short prompt: ~1420 tokens. Same weights, sdpa, fp32,
same threads; medians of interleaved repeats; decode is timed alone, one token per step from the prefilled
cache; ratio = transformers time / our time (> 1: we are faster).

    python -m mosaic_vlm.benchmarks.fuyu_model [--repeats 5] [--quick]
"""

import argparse
import statistics
import time

import torch
import transformers

from mosaic_vlm.modeling import MosaicFuyuConfig, MosaicFuyuForCausalLM

FULL = dict(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16)
QUICK = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
IMAGE_TOKEN, NEWLINE_TOKEN, BOS = 10, 11, 1


def build_models(shapes: dict):
    config = MosaicFuyuConfig(
        **shapes,
        max_position_embeddings=4096,
        patch_size=30,
        image_token_id=IMAGE_TOKEN,
        image_newline_token_id=NEWLINE_TOKEN,
        bos_token_id=BOS,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    ours = MosaicFuyuForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    reference_config = transformers.FuyuConfig(
        text_config=dict(
            **shapes,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta, "partial_rotary_factor": 0.5},
        ),
        patch_size=30,
        image_token_id=IMAGE_TOKEN,
    )
    reference = transformers.FuyuForCausalLM._from_config(reference_config, attn_implementation="sdpa").eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    return ours, reference


def inputs_for(rows: int, cols: int, prompt_length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(20, vocab, (prompt_length,), generator=generator).tolist()
    input_ids = torch.tensor([([IMAGE_TOKEN] * cols + [NEWLINE_TOKEN]) * rows + [BOS] + prompt])
    return input_ids, torch.randn(1, rows * cols, 30 * 30 * 3, generator=generator)


def run_fuyu_model_benchmark(repeats: int = 5, new_tokens: int = 16, quick: bool = False) -> dict:
    ours, reference = build_models(QUICK if quick else FULL)
    rows, cols = (4, 5) if quick else (32, 43)
    input_ids, patches = inputs_for(rows, cols, 30, ours.config.vocab_size)
    inputs = {"input_ids": input_ids, "pixel_values": patches}  # both models take the same inputs
    generate = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        difference = (ours(**inputs).logits - reference(**inputs).logits).abs().max().item()
        if difference > 1e-4:
            raise RuntimeError(f"logits differ by {difference}; refusing to time different computations")
        if not torch.equal(ours.generate(**inputs, **generate), reference.generate(**inputs, **generate)):
            raise RuntimeError("greedy tokens differ; refusing to time different computations")

        def prefill(model):
            return model(**inputs, logits_to_keep=1, use_cache=True)

        def decode(model, prefilled):
            """`new_tokens` greedy steps of one token each from the prefill's cache."""
            cache, token = prefilled.past_key_values, prefilled.logits[:, -1:].argmax(-1)
            for _ in range(new_tokens):
                token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)

        times = {(case, who): [] for case in ("prefill", "decode") for who in ("ours", "reference")}
        for repeat in range(repeats + 1):  # the first round warms up
            order = [("ours", ours), ("reference", reference)]
            for who, model in order if repeat % 2 else order[::-1]:
                start = time.perf_counter()
                prefilled = prefill(model)
                prefill_seconds = time.perf_counter() - start
                start = time.perf_counter()
                decode(model, prefilled)
                if repeat:
                    times[("prefill", who)].append(prefill_seconds)
                    times[("decode", who)].append((time.perf_counter() - start) / new_tokens)
    median = {key: statistics.median(values) * 1000 for key, values in times.items()}
    cases = [
        {
            "case": f"prefill fp32 ({input_ids.shape[1]} tokens)",
            "ours_ms": median[("prefill", "ours")],
            "reference_ms": median[("prefill", "reference")],
        },
        {
            "case": "decode fp32 (ms/token)",
            "ours_ms": median[("decode", "ours")],
            "reference_ms": median[("decode", "reference")],
        },
    ]
    for case in cases:
        case["ratio"] = case["reference_ms"] / case["ours_ms"]
    return {
        "threads": torch.get_num_threads(),
        "tokens": input_ids.shape[1],
        "max_logit_diff": difference,
        "cases": cases,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per model (default 5)")
    parser.add_argument("--quick", action="store_true", help="a tiny config, for smoke tests")
    args = parser.parse_args(argv)
    result = run_fuyu_model_benchmark(args.repeats, quick=args.quick)
    print(f"{result['tokens']} tokens, {result['threads']} threads, max logit diff {result['max_logit_diff']:.1e}")
    print("| case | ours ms | transformers ms | ratio |\n|---|---:|---:|---:|")
    for case in result["cases"]:
        print(f"| {case['case']} | {case['ours_ms']:.1f} | {case['reference_ms']:.1f} | {case['ratio']:.2f} |")


if __name__ == "__main__":
    main()
