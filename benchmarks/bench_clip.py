"""Thin script over `mosaic_vlm.bench.clip` (`python -m mosaic_vlm.bench.clip` runs the same).
See `--help`."""

import sys

from mosaic_vlm.bench.clip import main

if __name__ == "__main__":
    main(sys.argv[1:])
