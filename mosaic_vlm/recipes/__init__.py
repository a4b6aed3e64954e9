"""mosaic_vlm.recipes: the Trainer recipes (`clip`, `fuyu`, `vstar`), each runnable as `mosaic-vlm train NAME`
or `python -m mosaic_vlm.recipes.NAME`, and from Python as `run(model_args, training_args)` with its two
dataclasses. They import only the library rooms (never `benchmarks`, `demo` or `cli`)."""
