"""`python -m mosaic_vlm.cli`: the `mosaic-vlm` command line."""

import sys

from .main import main

sys.exit(main())
