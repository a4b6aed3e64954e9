"""Thin script over `mosaic_vlm.recipes.vstar` (the same as `mosaic-vlm train vstar`), for torchrun and
accelerate launch, which take a script path. See `python examples/train_vstar.py --help`."""

import sys

from mosaic_vlm.recipes.vstar import main

if __name__ == "__main__":
    main(sys.argv[1:])
