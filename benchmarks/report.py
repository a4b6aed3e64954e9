"""Thin script over `mosaic_vlm.bench.report` (`python -m mosaic_vlm.bench.report` runs the same).
See `--help`."""

import sys

from mosaic_vlm.bench.report import main

if __name__ == "__main__":
    main(sys.argv[1:])
