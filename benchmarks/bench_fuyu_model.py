"""Thin script over `mosaic_vlm.bench.fuyu_model` (`python -m mosaic_vlm.bench.fuyu_model` runs the same).
See `--help`."""

import sys

from mosaic_vlm.bench.fuyu_model import main

if __name__ == "__main__":
    main(sys.argv[1:])
