"""Inference stages of one scene: read windows, run the model per tile, blend, write COGs."""
