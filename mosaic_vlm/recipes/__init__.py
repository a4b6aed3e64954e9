"""mosaic_vlm.recipes: the Trainer recipes (`clip`, `fuyu`, `vstar`), each runnable as `mosaic-vlm train NAME`
or `python -m mosaic_vlm.recipes.NAME`."""
