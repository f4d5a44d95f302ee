"""Metric engine: pixel OOD metrics, segmentation metrics and SMIYC component metrics."""
