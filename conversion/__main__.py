"""`python -m mosaic_vlm.conversion`: the `mosaic-vlm` command line."""

import sys

from .cli import main

sys.exit(main())
