"""Dataset adapters: every benchmark read as released, converted to one ``Sample`` type.

Importing this package registers every dataset; ``get_dataset(name)`` builds one.
"""

from . import acdc_poc, cityscapes, fishyscapes, lostandfound, muad, roadanomaly, smiyc
from .base import (
    ID,
    OOD,
    OUTLIER_EXPOSURE,
    VOID,
    Sample,
    SegDataset,
    dataset_info,
    default_root,
    get_dataset,
    list_datasets,
    register_dataset,
)

__all__ = [
    "ID", "OOD", "OUTLIER_EXPOSURE", "VOID", "Sample", "SegDataset", "acdc_poc", "cityscapes",
    "dataset_info", "default_root", "fishyscapes", "get_dataset", "list_datasets", "lostandfound",
    "muad", "register_dataset", "roadanomaly", "smiyc",
]

# Synthetic datasets (adapters/synthetic/) register themselves on import; their import goes here.
from . import synthetic  # noqa: F401,E402
