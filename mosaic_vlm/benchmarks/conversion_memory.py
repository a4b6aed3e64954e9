"""Peak memory of a checkpoint conversion as `mosaic-vlm convert` runs it (the streaming converters).

Two checkpoints are made here with random weights at real shapes: a transformers Fuyu folder in bfloat16 of
1.2 GB (hidden 2048, 6 layers, vocabulary 72000) and a transformers CLIP folder in float32 at ViT-L/14's
shapes (1.7 GB). Each conversion to the mosaic layout runs in a fresh process that first imports everything;
the figure is the peak above that bare import, as a multiple of the checkpoint's bytes:
- peak RSS (the kernel's VmHWM): every resident page, the read-only pages of the memory-mapped source included;
- peak anonymous memory (RssAnon, sampled every 5 ms): what the process allocated itself.
The converters (`CLIP_CONVERTERS` / `FUYU_CONVERTERS`) hold one shard and one module at a time. The in-memory
converters these figures were once set against are gone; their figures are recorded in the README.

    python -m mosaic_vlm.benchmarks.conversion_memory [--quick] [--work-dir FOLDER]

The checkpoints are made in a scratch folder: the temp folder, or --work-dir (removed at the end); `mosaic-vlm bench`
makes it under its --output, so that it writes nothing elsewhere.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# run in a fresh process: prints {"rss": peak RSS above the bare import, "anon": peak RssAnon above it} in bytes
_MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time
    import torch, transformers
    import mosaic_vlm
    from mosaic_vlm.conversion import CLIP_CONVERTERS, FUYU_CONVERTERS

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    family, source, output, newline = sys.argv[1:]
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
    if family == "fuyu":
        FUYU_CONVERTERS["transformers", "mosaic"](source, output, image_newline_token_id=newline)
    else:
        CLIP_CONVERTERS["transformers", "mosaic"](source, output)
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


def measure(family: str, source: Path, output: Path, newline: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, family, str(source), str(output), str(newline)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"conversion of {family} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@contextmanager
def scratch_folder(work_dir: Path | None) -> Iterator[Path]:
    """`work_dir` (made, and removed with everything in it at the end: it must not exist yet), or a folder in the
    system's temp folder when None."""
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="mosaic-conversion-memory-") as work:
            yield Path(work)
        return
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True)
    try:
        yield work_dir
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def run_conversion_memory_benchmark(quick: bool = False, work_dir: Path | None = None) -> dict:
    """The peaks of both conversions. The checkpoints and the converted folders are made in `work_dir` (created,
    and removed at the end; `mosaic-vlm bench` gives a folder under its --output), or in the temp folder."""
    from mosaic_vlm.conversion.streaming import LazyCheckpoint

    with scratch_folder(work_dir) as work:
        sources = make_checkpoints(work, quick)
        cases = []
        for family, source in sources.items():
            size = LazyCheckpoint(source).nbytes
            peaks = measure(family, source, work / f"{family}-mosaic", NEWLINE_TOKEN_ID[quick])
            for kind in ("rss", "anon"):
                cases.append({
                    "case": f"{family} ({size / 1e9:.2f} GB) peak {PEAK_NAMES[kind]} / checkpoint",
                    "ours": peaks[kind] / size, "reference": None, "unit": "x checkpoint", "ratio": None,
                })  # fmt: skip
    return {"cases": cases}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small checkpoints (a smoke run)")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="scratch folder to make and remove (default: in the temp folder)"
    )
    args = parser.parse_args(argv)
    print("| case | streaming |\n|---|---:|")
    for case in run_conversion_memory_benchmark(args.quick, args.work_dir)["cases"]:
        print(f"| {case['case']} | {case['ours']:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
