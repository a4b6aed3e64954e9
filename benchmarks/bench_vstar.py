"""Thin script over `mosaic_vlm.bench.vstar` (`python -m mosaic_vlm.bench.vstar` runs the same).
See `--help`."""

import sys

from mosaic_vlm.bench.vstar import main

if __name__ == "__main__":
    main(sys.argv[1:])
