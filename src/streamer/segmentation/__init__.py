"""Voice activity detection and speech segmentation."""
