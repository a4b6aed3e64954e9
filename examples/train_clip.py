"""Thin script over `mosaic_vlm.recipes.clip` (the same as `mosaic-vlm train clip`), for torchrun and
accelerate launch, which take a script path. See `python examples/train_clip.py --help`."""

import sys

from mosaic_vlm.recipes.clip import main

if __name__ == "__main__":
    main(sys.argv[1:])
