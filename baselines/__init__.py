"""OOD scoring methods (MSP, MaxLogit, entropy, energy, ODIN, Mahalanobis, ...).

Importing this package registers every built-in method (see ``list_methods()``).
"""

from ood_bench.cgaug import method as _cgaug  # noqa: F401  (registers cgaug, cgaug-*)

from . import mahalanobis as _mahalanobis  # noqa: F401  (registers mahalanobis)
from . import mask2anomaly as _mask2anomaly  # noqa: F401  (registers mask2anomaly)
from . import odin as _odin  # noqa: F401  (registers odin, odin-smiyc)
from . import posthoc as _posthoc  # noqa: F401  (registers msp, maxlogit, entropy, energy)
from . import rba as _rba  # noqa: F401  (registers rba, rba+oe)
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
