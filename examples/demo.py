"""Thin script over `mosaic_vlm.demo` (the same as `mosaic-vlm demo`): the main job. See `--help`."""

import sys

from mosaic_vlm.demo.main_job import main

if __name__ == "__main__":
    main(sys.argv[1:])
