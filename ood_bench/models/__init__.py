"""Segmentation models, checkpoint I/O and inference."""
