"""mosaic_vlm.benchmarks: side-by-side benchmarks against the reference implementations, and the report that
runs them all (`mosaic-vlm bench`)."""
