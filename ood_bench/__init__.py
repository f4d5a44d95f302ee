"""oodbench: benchmark semantic segmentation under covariate and semantic distribution shifts."""

__version__ = "0.1.0"
