"""CG-Aug: coherent generative augmentation and two-stage noise-aware training."""
