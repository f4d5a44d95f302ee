"""Shared pytest configuration: keep tests on one thread and away from the user's cache, and
the tiny Mask2Former fixtures of the Mask2Former method tests."""

import os

import numpy as np
import pytest
import torch
from methods_helpers import random_samples

from ood_bench.models import create_model
from ood_bench.models.inference import normalize_images

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own ``$OODBENCH_CACHE`` so nothing leaks between tests or to ``~``."""
    monkeypatch.setenv("OODBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def m2f():
    """A random-weight ``mask2former-tiny`` in eval mode (seed 0)."""
    torch.manual_seed(0)
    return create_model("mask2former-tiny").eval()


@pytest.fixture(scope="module")
def images():
    """Two normalised 32×64 random synthetic frames."""
    return normalize_images(np.stack([s.image for s in random_samples(2, 32, 64, seed=5)]))
