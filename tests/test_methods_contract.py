"""The interface contract, checked for every registered method (fitting on a tiny dataset)."""

import json
import re

import numpy as np
import pytest
import torch
from methods_helpers import random_samples

from ood_bench.baselines import Method, MethodOutput, gaussian_smooth, get_method, list_methods
from ood_bench.baselines.base import METHODS
from ood_bench.errors import OodBenchError
from ood_bench.models import create_model
from ood_bench.models.inference import normalize_images

#: Extra ``fit`` options that keep a method's fitting cheap here (e.g. a few training steps).
FIT_OPTIONS: dict[str, dict] = {name: {"steps": 2} for name in (
    "rpl", "ruleaug", "ood+ruleaug", "mask2anomaly", "rba+oe")}
# CG-Aug variants pair the frames with in-memory generated partners of the same names.
FIT_OPTIONS.update({name: {"steps": 2, "generated": random_samples(2, 32, 48, seed=9)}
                    for name in list_methods("cgaug*")})


@pytest.fixture(scope="module")
def deeplab():
    torch.manual_seed(0)
    return create_model("deeplabv3plus-small", num_classes=19, width=8).eval()


@pytest.fixture(scope="module")
def mask2former():
    torch.manual_seed(0)
    return create_model("mask2former-tiny").eval()


@pytest.fixture
def name():
    """The method under test; tests parametrised over methods override it."""
    return None


@pytest.fixture
def model(name, deeplab, mask2former):
    """The DeepLab model, or the tiny Mask2Former for methods that support only that family."""
    families = METHODS.factory(name).model_families if name else None
    return mask2former if families == ("mask2former",) else deeplab


@pytest.fixture(scope="module")
def images():
    return normalize_images(np.stack([s.image for s in random_samples(2, 32, 48, seed=5)]))


def ready(name: str, model, **options) -> Method:
    method = get_method(name, **options)
    if method.requires_fit:
        method.fit(model, random_samples(2, 32, 48), device="cpu", seed=0,
                   **FIT_OPTIONS.get(name, {}))
    return method


def test_builtin_methods_are_registered():
    expected = {"msp", "maxlogit", "entropy", "energy", "odin", "odin-smiyc", "mahalanobis"}
    assert expected <= set(list_methods())
    assert list_methods("odin*") == ["odin", "odin-smiyc"]


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name, model, images):
    method = ready(name, model)
    assert isinstance(method, Method) and method.name == name
    config = method.config()
    assert config["name"] == name and json.loads(json.dumps(config)) == config
    out = method.score(model, images)
    assert isinstance(out, MethodOutput)
    assert out.scores.shape == out.prediction.shape == (2, 32, 48)
    assert out.scores.dtype == torch.float32 and out.prediction.dtype == torch.int64
    assert torch.isfinite(out.scores).all()
    assert out.scores.std() > 0  # a real map, not a constant
    assert not out.scores.requires_grad
    if not method.changes_segmentation:
        with torch.no_grad():
            torch.testing.assert_close(out.prediction, model(images).logits.argmax(1))
    assert not model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", list_methods())
def test_smoothing_option(name, model, images):
    plain = ready(name, model).score(model, images)
    smoothed = ready(name, model, smoothing=True).score(model, images)
    torch.testing.assert_close(smoothed.scores, gaussian_smooth(plain.scores), rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(smoothed.prediction, plain.prediction)


@pytest.mark.parametrize("name", list_methods())
def test_unknown_option_is_rejected(name):
    with pytest.raises(OodBenchError, match=re.escape(f"method '{name}' takes no option bogus")):
        get_method(name, bogus=1)


def test_only_fitted_methods_can_fit(model):
    for name in list_methods():
        method = get_method(name)
        if not method.requires_fit:
            with pytest.raises(NotImplementedError, match="needs no fitting"):
                method.fit(model, random_samples(1, 32, 48))
