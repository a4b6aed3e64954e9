"""mosaic_vlm.benchmarks: side-by-side benchmarks against the reference implementations, and the report that
runs them all (`mosaic-vlm bench`). They import only the library rooms: what needs trained models (V*) takes
them as inputs, trained by the caller."""
