"""mosaic_vlm.training: the Trainer recipes (`clip`, `fuyu`, `vstar`), each runnable as `mosaic-vlm train NAME`
or `python -m mosaic_vlm.training.NAME`."""
