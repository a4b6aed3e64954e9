"""Thin script over `mosaic_vlm.bench.fuyu_processing` (`python -m mosaic_vlm.bench.fuyu_processing` runs the same).
See `--help`."""

import sys

from mosaic_vlm.bench.fuyu_processing import main

if __name__ == "__main__":
    main(sys.argv[1:])
