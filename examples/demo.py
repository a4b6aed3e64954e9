"""Thin script over `mosaic-vlm demo` (the main job). See `python examples/demo.py --help`."""

import sys

from mosaic_vlm.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
