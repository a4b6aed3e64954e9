"""Thin script over `mosaic_vlm.recipes.fuyu` (the same as `mosaic-vlm train fuyu`), for torchrun and
accelerate launch, which take a script path. See `python examples/train_fuyu.py --help`."""

import sys

from mosaic_vlm.recipes.fuyu import main

if __name__ == "__main__":
    main(sys.argv[1:])
