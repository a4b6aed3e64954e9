"""Throughput of MosaicClipModel against transformers' CLIPModel at ViT-B/32 shapes, on CPU.

Both models are built from the same shape settings with random weights; the state dict of ours is
loaded strictly into transformers' CLIPModel, so both run the very same weights, in the same dtype,
with the same number of threads, in one process. Before any timing, both models must give the same
image and text features in fp32 (max abs diff <= 1e-4); otherwise nothing is reported.

Cases: image encode (`get_image_features(pixel_values)`) and text encode (`get_text_features(input_ids)`),
each in fp32 and under `torch.autocast("cpu", dtype=torch.bfloat16)`, all under `torch.inference_mode()`.
The two implementations alternate within every repeat (and which one goes first alternates too), so
slow drift of the machine (frequency, caches, other load) hits both alike. Times are medians over repeats;
ratio = transformers time / our time, so ratio > 1 means ours is faster.

    python -m mosaic_vlm.benchmarks.clip                 # full run, all cores
    python -m mosaic_vlm.benchmarks.clip --quick         # smoke test: tiny batches, 2 repeats
    python -m mosaic_vlm.benchmarks.clip --threads 1 --json results.json

`run_clip_benchmark(...)` runs the same thing and returns the results as a dict.

Noise: at the default batches each text-encode call allocates activations of 10-40 MB, which glibc
serves with fresh mmap()s whose pages the kernel zero-fills on first touch (about 15% of the run is
system time). That cost swings with the heap state and with other processes, and moves the ratio by
several percent either way even between two identical transformers models. For low-noise numbers keep
freed memory in the process, and record that you did (the JSON records these variables):

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python -m mosaic_vlm.benchmarks.clip
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

# ViT-B/32 (openai/clip-vit-base-patch32), in CLIPTextConfig / CLIPVisionConfig field names; both
# configs are built from these same dicts so the two models cannot drift apart in shape.
TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}
VISION_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
PROJECTION_DIM = 512
TOLERANCE = 1e-4  # fp32 max abs difference of the features allowed between the two implementations
DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # name -> autocast dtype (None: plain fp32)


class FeatureMismatchError(RuntimeError):
    """The two implementations disagree; timings of models that compute different things mean nothing."""


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_description() -> dict:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model_name(),
        "cpu_model": _cpu_model_name(),
        "os_cpu_count": os.cpu_count(),
        "available_cores": available_cores(),
        "python": platform.python_version(),
    }


ENVIRONMENT_VARIABLES = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_ARENA_MAX",
    "LD_PRELOAD",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "KMP_AFFINITY",
    "OMP_PROC_BIND",
)


def _environment() -> dict:
    """The variables that change CPU timings (allocator, OpenMP), as set for this process."""
    return {name: os.environ[name] for name in ENVIRONMENT_VARIABLES if name in os.environ}


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # no /proc (not Linux): fall back to what platform knows
        return platform.processor()
    return platform.processor()


def build_models(attn_implementation: str = "sdpa", seed: int = 0):
    """(ours, transformers') in eval mode, fp32, with identical random weights."""
    from transformers import CLIPConfig, CLIPModel

    from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel

    torch.manual_seed(seed)
    ours = MosaicClipModel(
        MosaicClipConfig(
            text_config=dict(TEXT_CONFIG), vision_config=dict(VISION_CONFIG), projection_dim=PROJECTION_DIM
        )
    )
    reference = CLIPModel(
        CLIPConfig(text_config=dict(TEXT_CONFIG), vision_config=dict(VISION_CONFIG), projection_dim=PROJECTION_DIM)
    )
    reference.load_state_dict(ours.state_dict(), strict=True)
    for model in (ours, reference):
        model.set_attn_implementation(attn_implementation)
        model.float().eval().requires_grad_(False)
    return ours, reference


def make_pixel_values(batch: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = VISION_CONFIG["image_size"]
    return torch.randn(batch, VISION_CONFIG["num_channels"], size, size, generator=generator)


def make_input_ids(batch: int, seq_len: int | None = None, seed: int = 2) -> torch.Tensor:
    """Captions padded to `seq_len` (77) like the CLIP tokenizer with padding="max_length":
    BOS, words, EOS, then pad. Lengths vary like real captions (mostly 8-30 tokens), and the first
    text fills all 77 positions (a truncated long caption) so the batch spans the full range."""
    seq_len = seq_len or TEXT_CONFIG["max_position_embeddings"]
    generator = torch.Generator().manual_seed(seed)
    bos, eos, pad = TEXT_CONFIG["bos_token_id"], TEXT_CONFIG["eos_token_id"], TEXT_CONFIG["pad_token_id"]
    input_ids = torch.full((batch, seq_len), pad, dtype=torch.long)
    lengths = torch.randint(8, min(31, seq_len) + 1, (batch,), generator=generator)
    lengths[0] = seq_len
    for row, length in enumerate(lengths.tolist()):
        length = max(2, min(length, seq_len))
        words = torch.randint(0, bos, (length - 2,), generator=generator)  # ids below BOS: no special tokens
        input_ids[row, :length] = torch.cat([torch.tensor([bos]), words, torch.tensor([eos])])
    return input_ids


def _autocast(dtype_name: str):
    dtype = DTYPES[dtype_name]
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def _features(model, modality: str, inputs: torch.Tensor, dtype_name: str = "fp32") -> torch.Tensor:
    with torch.inference_mode(), _autocast(dtype_name):
        if modality == "image":
            return model.get_image_features(inputs).pooler_output.float()
        return model.get_text_features(inputs).pooler_output.float()


def verify_same_features(ours, reference, pixel_values, input_ids) -> dict:
    """Max abs differences of the features; raises FeatureMismatchError above TOLERANCE in fp32."""
    report = {"tolerance": TOLERANCE}
    for modality, inputs in (("image", pixel_values), ("text", input_ids)):
        for dtype_name in ("fp32", "bf16"):
            a = _features(ours, modality, inputs, dtype_name)
            b = _features(reference, modality, inputs, dtype_name)
            if a.shape != b.shape:
                raise FeatureMismatchError(
                    f"{modality} features differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}"
                )
            report[f"{modality}_{dtype_name}_max_abs_diff"] = (a - b).abs().max().item()
            report[f"{modality}_{dtype_name}_max_abs_value"] = b.abs().max().item()
    for modality in ("image", "text"):
        diff = report[f"{modality}_fp32_max_abs_diff"]
        if not diff <= TOLERANCE:  # also catches NaN
            raise FeatureMismatchError(
                f"{modality} features of MosaicClipModel and transformers' CLIPModel differ by {diff:.3g} in fp32 "
                f"(allowed {TOLERANCE:g}); refusing to report timings of models that compute different things."
            )
    return report


def _time_pair(
    run_ours: Callable[[], object], run_reference: Callable[[], object], repeats: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Seconds per call of each, alternating the two in every repeat and which one goes first."""
    for i in range(warmup):
        for run in (run_ours, run_reference) if i % 2 == 0 else (run_reference, run_ours):
            run()
    ours_times, reference_times = [], []
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(repeats):
            order = ((run_ours, ours_times), (run_reference, reference_times))
            for run, times in order if i % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return ours_times, reference_times


def run_clip_benchmark(
    batch_images: int = 16,
    batch_texts: int = 64,
    repeats: int = 10,
    threads: int | None = None,
    dtypes: Sequence[str] = ("fp32", "bf16"),
    warmup: int = 3,
    modalities: Sequence[str] = ("image", "text"),
    attn_implementation: str = "sdpa",
    verbose: bool = False,
) -> dict:
    """Image- and text-encode times of MosaicClipModel and transformers' CLIPModel; see the module docstring.

    Returns {"machine", "torch", "transformers", "threads", "environment", "settings", "verification",
    "cases"}; each case has "case", "modality", "dtype", "batch", "ours_ms", "transformers_ms" (medians), "ratio"
    (transformers_ms / ours_ms, > 1: ours faster), "paired_ratio_median" and the per-repeat times.
    Raises FeatureMismatchError when the fp32 features differ by more than 1e-4.
    """
    import transformers

    for name, value in (("batch_images", batch_images), ("batch_texts", batch_texts), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}.")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        raise ValueError(f"dtypes must be a non-empty subset of {sorted(DTYPES)}, got {list(dtypes)}.")
    if not modalities or any(m not in ("image", "text") for m in modalities):
        raise ValueError(f"modalities must be a non-empty subset of ['image', 'text'], got {list(modalities)}.")
    threads = available_cores() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}.")

    def log(message: str) -> None:
        if verbose:
            print(message, file=sys.stderr, flush=True)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        log(f"threads: {torch.get_num_threads()} (of {available_cores()} available cores)")
        ours, reference = build_models(attn_implementation)
        pixel_values = make_pixel_values(batch_images)
        input_ids = make_input_ids(batch_texts)
        verification = verify_same_features(ours, reference, pixel_values, input_ids)
        log(
            "features match: max abs diff fp32 image {image_fp32_max_abs_diff:.2e}, text {text_fp32_max_abs_diff:.2e}"
            " (bf16 autocast: image {image_bf16_max_abs_diff:.2e}, text {text_bf16_max_abs_diff:.2e})".format(
                **verification
            )
        )

        cases = []
        for dtype_name in dtypes:
            for modality, inputs, batch in (("image", pixel_values, batch_images), ("text", input_ids, batch_texts)):
                if modality not in modalities:
                    continue
                method = "get_image_features" if modality == "image" else "get_text_features"
                run_ours = functools.partial(getattr(ours, method), inputs)
                run_reference = functools.partial(getattr(reference, method), inputs)
                with torch.inference_mode(), _autocast(dtype_name):
                    ours_s, reference_s = _time_pair(run_ours, run_reference, repeats, warmup)
                ours_ms = statistics.median(ours_s) * 1e3
                reference_ms = statistics.median(reference_s) * 1e3
                case = {
                    "case": f"{modality} encode {dtype_name} (batch {batch})",
                    "modality": modality,
                    "dtype": dtype_name,
                    "batch": batch,
                    "ours_ms": ours_ms,
                    "transformers_ms": reference_ms,
                    "ratio": reference_ms / ours_ms,
                    "paired_ratio_median": statistics.median(r / o for o, r in zip(ours_s, reference_s, strict=True)),
                    "ours_items_per_s": batch / (ours_ms / 1e3),
                    "transformers_items_per_s": batch / (reference_ms / 1e3),
                    "ours_ms_all": [t * 1e3 for t in ours_s],
                    "transformers_ms_all": [t * 1e3 for t in reference_s],
                }
                cases.append(case)
                log(
                    f"{case['case']}: ours {ours_ms:.1f} ms, transformers {reference_ms:.1f} ms, "
                    f"ratio {case['ratio']:.3f}"
                )
        return {
            "machine": machine_description(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": threads,
            "environment": _environment(),
            "settings": {
                "batch_images": batch_images,
                "batch_texts": batch_texts,
                "image_size": VISION_CONFIG["image_size"],
                "text_length": TEXT_CONFIG["max_position_embeddings"],
                "repeats": repeats,
                "warmup": warmup,
                "dtypes": list(dtypes),
                "modalities": list(modalities),
                "attn_implementation": attn_implementation,
                "shapes": "ViT-B/32",
                "text_config": TEXT_CONFIG,
                "vision_config": VISION_CONFIG,
            },
            "verification": verification,
            "cases": cases,
        }
    finally:
        torch.set_num_threads(previous_threads)


def markdown_table(results: dict) -> str:
    lines = ["| case | ours ms | transformers ms | ratio |", "|---|---:|---:|---:|"]
    for case in results["cases"]:
        lines.append(
            f"| {case['case']} | {case['ours_ms']:.1f} | {case['transformers_ms']:.1f} | {case['ratio']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Image- and text-encode throughput of MosaicClipModel vs transformers' CLIPModel at ViT-B/32 shapes "
            "(same random weights, dtype and threads; ratio = transformers time / our time, > 1: ours faster)."
        )
    )
    add = parser.add_argument
    add("--batch-images", type=int, help="images per image-encode call (default 16; 2 with --quick)")
    add("--batch-texts", type=int, help="77-token texts per text-encode call (default 64; 4 with --quick)")
    add("--repeats", type=int, help="timed repeats per case and model (default 10; 2 with --quick)")
    add("--warmup", type=int, help="untimed warmup runs per case and model (default 3; 1 with --quick)")
    add("--threads", type=int, help=f"torch threads (default: all available cores, here {available_cores()})")
    add("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"], help="default: fp32 bf16")
    add("--modalities", nargs="+", choices=("image", "text"), default=["image", "text"], help="default: image text")
    add("--attn-implementation", choices=("sdpa", "eager"), default="sdpa", help="of both models (default sdpa)")
    add("--json", metavar="PATH", help="also write the results as JSON to PATH")
    add("--quick", action="store_true", help="tiny batches and repeats, for smoke tests (timings not meaningful)")
    args = parser.parse_args(argv)

    def pick(value, full, quick):
        return value if value is not None else (quick if args.quick else full)

    settings = {
        "batch_images": pick(args.batch_images, 16, 2),
        "batch_texts": pick(args.batch_texts, 64, 4),
        "repeats": pick(args.repeats, 10, 2),
        "warmup": pick(args.warmup, 3, 1),
        "threads": available_cores() if args.threads is None else args.threads,
    }
    for name, value in settings.items():
        if value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be at least {0 if name == 'warmup' else 1}, got {value}.")
    print(
        f"torch {torch.__version__}, threads: {settings['threads']} "
        f"(available cores: {available_cores()}, os.cpu_count: {os.cpu_count()})"
    )
    try:
        results = run_clip_benchmark(
            **settings,
            dtypes=tuple(args.dtypes),
            modalities=tuple(args.modalities),
            attn_implementation=args.attn_implementation,
            verbose=True,
        )
    except FeatureMismatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    settings = results["settings"]
    print(
        f"\nMosaicClipModel vs transformers {results['transformers']} CLIPModel, ViT-B/32, random weights, "
        f"{settings['attn_implementation']} attention, {results['threads']} threads, "
        f"median of {settings['repeats']} repeats after {settings['warmup']} warmup; "
        f"{results['machine']['cpu_model']}\n"
    )
    print(markdown_table(results))
    print("\nratio = transformers ms / ours ms (> 1: ours faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
