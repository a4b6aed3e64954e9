"""mosaic_vlm.demo: the main job (`mosaic-vlm demo`), offline on images that ship in wheels."""
