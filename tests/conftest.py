"""Shared pytest configuration: keep tests on one thread and away from the user's cache."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own ``$OODBENCH_CACHE`` so nothing leaks between tests or to ``~``."""
    monkeypatch.setenv("OODBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
