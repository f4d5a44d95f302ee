"""OOD scoring methods (MSP, MaxLogit, entropy, energy, ODIN, Mahalanobis, ...).

Importing this package registers every built-in method (see ``list_methods()``).
"""

from . import mahalanobis as _mahalanobis  # noqa: F401  (registers mahalanobis)
from . import odin as _odin  # noqa: F401  (registers odin, odin-smiyc)
from . import posthoc as _posthoc  # noqa: F401  (registers msp, maxlogit, entropy, energy)
from . import rpl as _rpl  # noqa: F401  (registers rpl)
from . import ruleaug as _ruleaug  # noqa: F401  (registers ruleaug, ood+ruleaug)
from .base import (
    Method,
    MethodOutput,
    gaussian_smooth,
    get_method,
    list_methods,
    register_method,
)

__all__ = [
    "Method",
    "MethodOutput",
    "gaussian_smooth",
    "get_method",
    "list_methods",
    "register_method",
]
