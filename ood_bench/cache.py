"""The user cache folder and the config hashes that key cached artefacts."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    """``$OODBENCH_CACHE`` (default ``~/.cache/oodbench``), joined with ``parts`` and created."""
    root = Path(os.environ.get("OODBENCH_CACHE") or Path.home() / ".cache" / "oodbench")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_hash(config: dict[str, Any], length: int = 16) -> str:
    """A stable hex digest of a JSON-serialisable config (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]
