"""mosaic_vlm.data: the offline data sets (sklearn digits, skimage photos, the V*Bench-like scenes) and the
collators that turn their rows into model inputs."""
