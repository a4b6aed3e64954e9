"""mosaic_vlm.cli: the `mosaic-vlm` command line (also `python -m mosaic_vlm.cli`)."""
