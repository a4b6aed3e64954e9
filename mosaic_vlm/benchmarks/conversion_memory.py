"""Peak memory of a checkpoint conversion, the streaming converter against the in-memory one, side by side.

Two checkpoints are made here with random weights at real shapes: a transformers Fuyu folder in bfloat16 of
1.2 GB (hidden 2048, 6 layers, vocabulary 72000) and a transformers CLIP folder in float32 at ViT-L/14's
shapes (1.7 GB). Each conversion to the mosaic layout runs in a fresh process that first imports everything;
the figure is the peak above that bare import, as a multiple of the checkpoint's bytes:
- peak RSS (the kernel's VmHWM): every resident page, the read-only pages of the memory-mapped source included;
- peak anonymous memory (RssAnon, sampled every 5 ms): what the process allocated itself.
The in-memory converter (`fuyu_from_transformers` / `clip_from_transformers`, then `save_pretrained`) holds
the source model, a float32 copy for the check and the converted model; the streaming one
(`convert_*_checkpoint`, what `mosaic-vlm convert` runs) holds one shard and one module at a time.

    python -m mosaic_vlm.benchmarks.conversion_memory [--quick]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

# run in a fresh process: prints {"rss": peak RSS above the bare import, "anon": peak RssAnon above it} in bytes
_MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time
    import torch, transformers
    import mosaic_vlm
    from mosaic_vlm.conversion.clip import clip_from_transformers, convert_clip_checkpoint
    from mosaic_vlm.conversion.fuyu import convert_fuyu_checkpoint, fuyu_from_transformers

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    family, mode, source, output, newline = sys.argv[1:]
    newline = int(newline)
    base_rss, base_anon = status("VmRSS"), status("RssAnon")
    peak_anon, done = base_anon, False

    def sample():
        global peak_anon
        while not done:
            peak_anon = max(peak_anon, status("RssAnon"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if mode == "streaming" and family == "fuyu":
        convert_fuyu_checkpoint(source, output, to="mosaic", image_newline_token_id=newline)
    elif mode == "streaming":
        convert_clip_checkpoint(source, output, source_layout="transformers", target_layout="mosaic")
    elif family == "fuyu":
        fuyu_from_transformers(source, image_newline_token_id=newline).save_pretrained(output)
    else:
        clip_from_transformers(source).save_pretrained(output)
    done = True
    sampler.join()
    print(json.dumps({"rss": status("VmHWM") - base_rss, "anon": max(peak_anon, status("RssAnon")) - base_anon}))
    """
)


# (image, image-newline) token ids: fuyu-8b's in a full run, small ones in a quick run's small vocabulary
IMAGE_TOKEN_ID = {False: 71011, True: 900}
NEWLINE_TOKEN_ID = {False: 71019, True: 901}


def make_checkpoints(folder: Path, quick: bool) -> dict[str, Path]:
    """A bf16 transformers Fuyu folder and a float32 transformers CLIP folder at ViT-L/14's shapes (`quick`:
    small ones)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, FuyuConfig, FuyuForCausalLM

    torch.manual_seed(0)
    width, layers, vocab = (128, 2, 1000) if quick else (2048, 6, 72000)
    fuyu = FuyuConfig(  # a full run's vocabulary has room for fuyu-8b's image and image-newline ids
        text_config={"vocab_size": vocab, "hidden_size": width, "intermediate_size": 4 * width,
                     "num_hidden_layers": layers, "num_attention_heads": 16},
        image_token_id=IMAGE_TOKEN_ID[quick],
    )  # fmt: skip
    FuyuForCausalLM(fuyu).to(torch.bfloat16).save_pretrained(folder / "fuyu")
    vision, text = ((64, 1, 4, 256), (64, 1, 4, 256)) if quick else ((1024, 24, 16, 4096), (768, 12, 12, 3072))
    clip = CLIPConfig(
        vision_config={"hidden_size": vision[0], "num_hidden_layers": vision[1], "num_attention_heads": vision[2],
                       "intermediate_size": vision[3], "patch_size": 14, "image_size": 224},
        text_config={"hidden_size": text[0], "num_hidden_layers": text[1], "num_attention_heads": text[2],
                     "intermediate_size": text[3], "vocab_size": 49408, "eos_token_id": 49407},
        projection_dim=768,
    )  # fmt: skip
    CLIPModel(clip).save_pretrained(folder / "clip")
    return {"fuyu": folder / "fuyu", "clip": folder / "clip"}


PEAK_NAMES = {"rss": "RSS", "anon": "anonymous"}


def measure(family: str, mode: str, source: Path, output: Path, newline: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, family, mode, str(source), str(output), str(newline)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{mode} conversion of {family} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_conversion_memory_benchmark(quick: bool = False) -> dict:
    from mosaic_vlm.conversion.streaming import LazyCheckpoint

    with tempfile.TemporaryDirectory(prefix="mosaic-conversion-memory-") as work:
        work = Path(work)
        sources = make_checkpoints(work, quick)
        cases = []
        for family, source in sources.items():
            size = LazyCheckpoint(source).nbytes
            peaks = {}
            for mode in ("in-memory", "streaming"):
                (work / f"{family}-{mode}").mkdir()
                peaks[mode] = measure(family, mode, source, work / f"{family}-{mode}", NEWLINE_TOKEN_ID[quick])
            for kind in ("rss", "anon"):
                old, new = peaks["in-memory"][kind] / size, peaks["streaming"][kind] / size
                cases.append({
                    "case": f"{family} ({size / 1e9:.2f} GB) peak {PEAK_NAMES[kind]} / checkpoint",
                    "ours": new, "reference": old, "unit": "x checkpoint", "ratio": old / new if new > 0 else None,
                })  # fmt: skip
    return {"cases": cases}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small checkpoints (a smoke run)")
    args = parser.parse_args(argv)
    print("| case | streaming | in-memory |\n|---|---:|---:|")
    for case in run_conversion_memory_benchmark(args.quick)["cases"]:
        print(f"| {case['case']} | {case['ours']:.2f}x | {case['reference']:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
