"""The synthetic multi-shift street world: layouts, renderer, shifts, objects and datasets.

Importing the package registers the ``synth-*`` datasets.
"""

from . import datasets  # noqa: F401  (registers the datasets)
from .layout import Layout, generate_layout
from .objects import place_on_road
from .render import DOMAINS, render

__all__ = ["DOMAINS", "Layout", "generate_layout", "place_on_road", "render"]
