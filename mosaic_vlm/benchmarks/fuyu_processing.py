"""Fuyu image processing and the whole processor call vs transformers, side by side.

One 1280x960 RGB photo (skimage's astronaut, resized). Cases:
- image -> patches: our `MosaicFuyuImageProcessor` against what transformers needs for the same patches,
  `FuyuImageProcessorPil` (pad to the full 1080x1920 canvas, rescale, normalise) plus its crop and
  `patchify_image`, as `FuyuProcessor` does;
- image + prompt -> model tensors: `MosaicFuyuProcessor` against `FuyuProcessor`, both with the same
  tokenizer (trained on the spot, with Fuyu's special tokens). transformers 5.23's `FuyuProcessor` fails
  twice here: on the PIL backend it hands torch tensors to the numpy `patchify_image` (its image processor
  here converts around that one call), and it drops the first token of the image block, expecting a
  SentencePiece prefix our tokenizer does not add, so its token-count check is switched off. Neither
  changes the work timed.
Medians of interleaved repeats, same threads; ratio = transformers time / our time (> 1: we are faster).
The patches are checked equal (max abs diff <= 1e-6) before anything is timed.

    python -m mosaic_vlm.benchmarks.fuyu_processing [--repeats 20]
"""

import argparse
import math
import statistics
import time

import PIL.Image
import torch
from skimage import data
from transformers import FuyuProcessor
from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil
from transformers.utils import logging

from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor, train_bpe_tokenizer
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS

PROMPT = "Generate a coco-style caption of the astronaut and the flag behind her."
# transformers' FuyuProcessor also looks up "<s>"
FUYU_TOKENS = ["<s>", *FUYU_SPECIAL_TOKENS]


class PilFuyuImageProcessorForFuyuProcessor(FuyuImageProcessorPil):
    def patchify_image(self, image, patch_size=None):
        return torch.from_numpy(super().patchify_image(image.numpy(), patch_size))


class FuyuProcessorWithoutTokenCountCheck(FuyuProcessor):
    def _check_special_mm_tokens(self, *args, **kwargs):
        """Off: with a tokenizer that adds no SentencePiece prefix, FuyuProcessor drops the image block's
        first token and this check would refuse the call; the timed work is the same."""


def transformers_patches(processor: FuyuImageProcessorPil, image: PIL.Image.Image) -> torch.Tensor:
    """transformers' patches for one image, as `FuyuProcessor._process_images` makes them."""
    processed = processor(image)
    canvas = processed["images"][0][0]
    patch = processor.patch_size
    height = min(canvas.shape[-2], math.ceil(processed["image_unpadded_heights"][0][0] / patch.height) * patch.height)
    width = min(canvas.shape[-1], math.ceil(processed["image_unpadded_widths"][0][0] / patch.width) * patch.width)
    return torch.from_numpy(processor.patchify_image(canvas[:, :height, :width], patch_size=patch))


def median_ms(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return times


def run_fuyu_processing_benchmark(repeats: int = 20, size: tuple[int, int] = (1280, 960)) -> dict:
    logging.set_verbosity_error()  # transformers' FuyuProcessor warns on every call about its legacy output
    image = PIL.Image.fromarray(data.astronaut()).resize(size, PIL.Image.BICUBIC)
    tokenizer = train_bpe_tokenizer(
        [PROMPT] * 4, vocab_size=200, model_max_length=4096, extra_special_tokens=FUYU_TOKENS
    )
    ours_images, reference_images = MosaicFuyuImageProcessor(), FuyuImageProcessorPil()
    ours_processor = MosaicFuyuProcessor(image_processor=ours_images, tokenizer=tokenizer)
    reference_processor = FuyuProcessorWithoutTokenCountCheck(
        image_processor=PilFuyuImageProcessorForFuyuProcessor(), tokenizer=tokenizer
    )

    ours_patches = ours_images(image)["pixel_values"][0]
    difference = (ours_patches - transformers_patches(reference_images, image)).abs().max().item()
    if difference > 1e-6:
        raise RuntimeError(f"patches differ by {difference}; refusing to time different computations")
    ours_call = ours_processor(images=image, text=PROMPT)
    reference_call = reference_processor(images=image, text=PROMPT)
    if (ours_call["pixel_values"][0] - reference_call["image_patches"]).abs().max() > 1e-6:
        raise RuntimeError("the processors' patches differ; refusing to time different computations")

    cases = {
        f"image -> patches ({size[0]}x{size[1]})": (
            lambda: ours_images(image),
            lambda: transformers_patches(reference_images, image),
        ),
        "image + prompt -> tensors": (
            lambda: ours_processor(images=image, text=PROMPT),
            lambda: reference_processor(images=image, text=PROMPT),
        ),
    }
    rows = []
    for case, (ours, reference) in cases.items():
        ours(), reference()  # warm up
        ours_times, reference_times = [], []
        for _ in range(repeats):  # interleaved, so that drifting machine load hits both alike
            ours_times += median_ms(ours, 1)
            reference_times += median_ms(reference, 1)
        row = {
            "case": case,
            "ours_ms": statistics.median(ours_times),
            "reference_ms": statistics.median(reference_times),
        }
        row["ratio"] = row["reference_ms"] / row["ours_ms"]
        rows.append(row)
    return {
        "threads": torch.get_num_threads(),
        "image_tokens": int(ours_call["input_ids"].shape[1]),
        "max_patch_diff": difference,
        "cases": rows,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per case (default 20)")
    args = parser.parse_args(argv)
    result = run_fuyu_processing_benchmark(args.repeats)
    print(
        f"{result['threads']} threads, {result['image_tokens']} tokens, max patch diff {result['max_patch_diff']:.1e}"
    )
    print("| case | ours ms | transformers ms | ratio |\n|---|---:|---:|---:|")
    for row in result["cases"]:
        print(f"| {row['case']} | {row['ours_ms']:.1f} | {row['reference_ms']:.1f} | {row['ratio']:.2f} |")


if __name__ == "__main__":
    main()
