"""Segmentation models, checkpoint I/O and inference.

Importing this package registers every built-in model (see ``list_models()``).
"""

from . import mask2former as _mask2former  # noqa: F401  (registers mask2former-*)
from . import resnet as _resnet  # noqa: F401  (registers the ResNet and small models)
from . import wider_resnet as _wider_resnet  # noqa: F401  (registers deeplabv3plus-wrn38)
from .base import SegOutput, create_model, list_models, register_model
from .checkpoint import load_checkpoint, load_model, read_state_dict, save_checkpoint
from .inference import infer, normalize_images, predict

__all__ = [
    "SegOutput",
    "create_model",
    "infer",
    "list_models",
    "load_checkpoint",
    "load_model",
    "normalize_images",
    "predict",
    "read_state_dict",
    "register_model",
    "save_checkpoint",
]
