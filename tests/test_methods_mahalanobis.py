"""Mahalanobis: streaming statistics vs scikit-learn, min distance vs numpy, cache, ε step."""

import numpy as np
import pytest
import torch
from methods_helpers import NamedFrames, TinySeg, finite_difference, random_samples
from scipy.ndimage import zoom
from sklearn.covariance import EmpiricalCovariance

from ood_bench.baselines import get_method
from ood_bench.baselines.base import STRIP_SIZE
from ood_bench.baselines.mahalanobis import FeatureMoments, GaussianStatistics, Mahalanobis
from ood_bench.errors import OodBenchError
from ood_bench.models import create_model
from ood_bench.models.inference import IMAGENET_STD, normalize_images


def sklearn_reference(z: np.ndarray, y: np.ndarray, num_classes: int):
    """Class means and EmpiricalCovariance of the class-centred pixel features (void dropped)."""
    keep = y < num_classes
    z, y = z[keep].astype(np.float64), y[keep]
    means = np.zeros((num_classes, z.shape[1]))
    for c in np.unique(y):
        means[c] = z[y == c].mean(0)
    estimator = EmpiricalCovariance(assume_centered=False).fit(z - means[y])
    return means, estimator


def numpy_min_distance(z: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """P×D features → P: min_c (z − μ_c)ᵀ P (z − μ_c), one explicit quadratic form per class."""
    distances = [np.einsum("pd,de,pe->p", z - mu, precision, z - mu) for mu in means]
    return np.min(distances, axis=0)


def test_streaming_moments_match_sklearn():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 5, 6, 7)).astype(np.float32) + 2.0
    labels = rng.integers(0, 4, (3, 6, 7))
    labels[0, :2] = 255
    moments = FeatureMoments(num_classes=5)  # class 4 never occurs
    for f, y in zip(features, labels, strict=True):  # one frame at a time
        moments.update(torch.from_numpy(f[None]), torch.from_numpy(y[None]))
    stats = moments.compute()
    z = features.transpose(0, 2, 3, 1).reshape(-1, 5)
    means, estimator = sklearn_reference(z, labels.reshape(-1), 5)
    np.testing.assert_allclose(stats.counts.numpy(), np.bincount(labels[labels < 5], minlength=5))
    np.testing.assert_allclose(stats.means.numpy(), means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.covariance.numpy(), estimator.covariance_, rtol=1e-8)
    np.testing.assert_allclose(stats.precision.numpy(), estimator.precision_, rtol=1e-6)


def test_min_distance_matches_numpy_quadratic_forms():
    rng = np.random.default_rng(1)
    dim = 48  # > STRIP_SIZE / 30 rows: the CPU path measures the map in row strips
    z = rng.normal(size=(600, dim))
    y = rng.integers(0, 3, 600)
    means, estimator = sklearn_reference(z + y[:, None], y, 3)
    method = get_method("mahalanobis")
    method.statistics = GaussianStatistics(
        torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64),
        torch.from_numpy(means),
        torch.from_numpy(estimator.covariance_),
    )
    query = rng.normal(size=(2, dim, 30, 6)) * 3
    assert STRIP_SIZE // dim < 30
    pixels = query.transpose(0, 2, 3, 1).reshape(-1, dim)
    expected = numpy_min_distance(pixels, means, estimator.precision_).reshape(2, 30, 6)
    result = method.distance(torch.from_numpy(query))
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-9)


def test_unseen_classes_are_left_out_of_the_min():
    stats = GaussianStatistics(
        counts=torch.tensor([4.0, 0.0], dtype=torch.float64),
        means=torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64),
        covariance=torch.eye(2, dtype=torch.float64) * 4,
    )
    method = get_method("mahalanobis")
    method.statistics = stats
    origin = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    assert method.distance(origin).item() == pytest.approx(0.25)  # 1²/4, not 0 (class 1 unseen)


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return create_model("deeplabv3plus-small", num_classes=19, width=8).eval()


def test_fit_on_a_dataset_matches_sklearn_and_scores_match_numpy(small_model):
    samples = random_samples(3, 32, 64)
    method = get_method("mahalanobis")
    method.fit(small_model, samples, batch_size=2)
    # independent reference: every frame's features; labels at the stride-4 feature pixels
    with torch.no_grad():
        feats = small_model(normalize_images(np.stack([s.image for s in samples]))).features
    assert feats.shape[-2:] == (8, 16)
    z = feats.numpy().transpose(0, 2, 3, 1).reshape(-1, feats.shape[1])
    y = np.stack([s.semantic[::4, ::4] for s in samples]).reshape(-1)
    means, estimator = sklearn_reference(z, y, 19)
    stats = method.statistics
    np.testing.assert_allclose(stats.counts.numpy(), np.bincount(y[y < 19], minlength=19))
    np.testing.assert_allclose(stats.means.numpy(), means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.covariance.numpy(), estimator.covariance_, rtol=1e-4,
                               atol=1e-7)

    images = normalize_images(np.stack([s.image for s in random_samples(1, 32, 64, seed=9)]))
    out = method.score(small_model, images)
    with torch.no_grad():
        query = small_model(images)
    seen = stats.counts.numpy() > 0
    distance = numpy_min_distance(
        query.features.numpy().transpose(0, 2, 3, 1).reshape(-1, z.shape[1]),
        stats.means.numpy()[seen], np.linalg.pinv(stats.covariance.numpy(), hermitian=True),
    ).reshape(8, 16)
    expected = zoom(distance, (4, 4), order=1, grid_mode=False)  # bilinear, corners aligned
    assert out.scores.shape == (1, 32, 64) and out.scores.dtype == torch.float32
    np.testing.assert_allclose(out.scores[0].numpy(), expected, rtol=2e-3)
    torch.testing.assert_close(out.prediction, query.logits.argmax(1))
    assert method.config()["statistics"] == method.statistics_key


def test_fit_is_cached_by_model_weights_and_frames(small_model, monkeypatch):
    samples = NamedFrames(random_samples(2, 32, 64))
    first = get_method("mahalanobis")
    path = first.fit(small_model, samples)
    assert path.is_file() and path.suffix == ".safetensors"
    assert not list(path.parent.glob("*.tmp*"))  # written atomically

    def no_estimate(*args, **kwargs):
        raise AssertionError("statistics were recomputed instead of read from the cache")

    monkeypatch.setattr(Mahalanobis, "_estimate", staticmethod(no_estimate))
    again = get_method("mahalanobis", smoothing=True)
    assert again.fit(small_model, samples) == path
    torch.testing.assert_close(again.statistics.covariance, first.statistics.covariance)
    with torch.no_grad():
        small_model.final[0].weight.mul_(1.5)
    with pytest.raises(AssertionError, match="recomputed"):
        again.fit(small_model, samples)  # other weights → other key
    monkeypatch.undo()
    subset = get_method("mahalanobis")
    assert subset.fit(small_model, samples, max_frames=1, seed=3) != path


def test_unnamed_datasets_are_never_cached(small_model):
    first, second = get_method("mahalanobis"), get_method("mahalanobis")
    assert first.fit(small_model, random_samples(2, 32, 64, seed=1)) is None
    assert second.fit(small_model, random_samples(2, 32, 64, seed=2)) is None
    assert first.statistics_key != second.statistics_key  # same length, other frames
    assert not (first.statistics.means == second.statistics.means).all()


def test_input_preprocessing_step_follows_the_distance_gradient():
    model = TinySeg(num_classes=3, dim=4).double().eval()
    rng = np.random.default_rng(2)
    stats = GaussianStatistics(
        torch.ones(3, dtype=torch.float64),
        torch.from_numpy(rng.normal(size=(3, 4)) * 0.3),
        torch.from_numpy(np.diag([0.5, 0.2, 0.3, 0.4])),
    )
    images = torch.from_numpy(rng.normal(size=(1, 3, 4, 6)))
    plain, step = get_method("mahalanobis"), get_method("mahalanobis", epsilon=0.002)
    plain.statistics = step.statistics = stats
    assert step.needs_gradients and not plain.needs_gradients

    def total_distance(x):
        with torch.no_grad():
            return plain.distance(model(x).features).sum().item()

    grad = finite_difference(total_distance, images)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    moved = images - 0.002 * grad.sign() / std
    expected = plain.score(model, moved).scores
    torch.testing.assert_close(step.score(model, images).scores, expected)
    assert total_distance(moved) < total_distance(images)


def test_errors(small_model):
    method = get_method("mahalanobis")
    with pytest.raises(OodBenchError, match="not fitted"):
        method.score(small_model, torch.zeros(1, 3, 32, 64))
    unlabelled = random_samples(1, 32, 64)
    unlabelled[0].semantic = None
    with pytest.raises(OodBenchError, match="'frame0' has no semantic labels"):
        method.fit(small_model, unlabelled)
    with pytest.raises(OodBenchError, match="max_frames must be a positive integer"):
        method.fit(small_model, random_samples(1, 32, 64), max_frames=0)
    with pytest.raises(OodBenchError, match="training set is empty"):
        method.fit(small_model, [])
