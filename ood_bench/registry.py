"""A small name → factory registry, shared by models, datasets and methods (timm style).

Each kind of component keeps one ``Registry`` and exposes ``register_*``, ``create_*``/``get_*`` and
``list_*`` functions built on it, so unknown names fail the same way everywhere: with the list of
valid names.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import OodBenchError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; ``kind`` names the component in error messages ("model")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._defaults: dict[str, dict[str, Any]] = {}

    def register(
        self, name: str | None = None, **defaults: Any
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory under ``name`` (default: its ``__name__``).

        Keyword ``defaults`` are bound at creation time, so one class can register several
        named variants (``@register("smiyc-ra21-val", split="validation")``); stack the
        decorator to register more than one.
        """

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            key = name or factory.__name__
            if key in self._factories:
                raise OodBenchError(f"{self.kind} {key!r} is registered twice")
            self._factories[key] = factory
            self._defaults[key] = dict(defaults)
            return factory

        return decorator

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the component registered as ``name``; ``kwargs`` override registered defaults."""
        factory = self.factory(name)
        return factory(**{**self._defaults[name], **kwargs})

    def factory(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``, or an error listing the valid names."""
        if name not in self._factories:
            raise UnknownNameError(self.unknown_message(name))
        return self._factories[name]

    def defaults(self, name: str) -> dict[str, Any]:
        """The keyword defaults registered with ``name``."""
        self.factory(name)
        return dict(self._defaults[name])

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names, optionally filtered by a shell-style ``pattern``."""
        return sorted(n for n in self._factories if fnmatch.fnmatch(n, pattern))

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._factories, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}.{hint} "
            f"Valid {self.kind}s: {', '.join(self.names()) or '(none registered)'}"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __len__(self) -> int:
        return len(self._factories)
