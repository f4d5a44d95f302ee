"""Every user-input error of the pixel OOD metrics: a clear ValueError naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from ood_bench.errors import OodBenchError
from ood_bench.metrics.pixel import PixelOODMetric, pixel_ood_metrics

SCORES = np.array([[0.1, 0.9], [0.4, 0.7]], dtype=np.float32)
LABELS = np.array([[0, 1], [0, 255]], dtype=np.uint8)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("bad, what", [(np.nan, "1 NaN and 0 infinite"),
                                       (np.inf, "0 NaN and 1 infinite"),
                                       (-np.inf, "0 NaN and 1 infinite")])
def test_non_finite_scores_name_the_frame(exact, bad, what):
    scores = SCORES.copy()
    scores[1, 0] = bad
    metric = PixelOODMetric(exact=exact)
    with pytest.raises(OodBenchError, match=f"scores in frame 'city_0042' contain {what}"):
        metric.update(scores, LABELS, frame="city_0042")
    with pytest.raises(ValueError, match=f"scores contain {what}"):
        pixel_ood_metrics(scores, LABELS, exact=exact)


@pytest.mark.parametrize("exact", [True, False])
def test_non_finite_scores_on_ignored_pixels_are_fine(exact):
    scores = SCORES.copy()
    scores[1, 1] = np.nan  # label 255
    assert pixel_ood_metrics(scores, LABELS, exact=exact)["auroc"] == 1.0


@pytest.mark.parametrize("exact", [True, False])
def test_shape_mismatch(exact):
    with pytest.raises(ValueError, match=r"shape mismatch in frame 'f7': scores \(2, 2\) vs "
                                         r"labels \(4,\)"):
        PixelOODMetric(exact=exact).update(SCORES, LABELS.ravel(), frame="f7")
    with pytest.raises(ValueError, match="shape mismatch"):
        pixel_ood_metrics(SCORES, LABELS[:1], exact=exact)


@pytest.mark.parametrize("labels, shown", [
    (np.array([[0, 2], [7, 255]], dtype=np.uint8), "2, 7"),
    (np.array([[0, -1], [1, 1]], dtype=np.int64), "-1"),
    (np.array([[0, 0.5], [1, 1]]), "0.5"),
])
def test_labels_outside_0_1_ignore(labels, shown):
    with pytest.raises(OodBenchError, match=rf"labels in frame 'x' contain values {shown}; "
                                            r"expected 0 .* 1 .* ignore_index=255"):
        PixelOODMetric().update(SCORES, labels, frame="x")


def test_custom_ignore_index():
    labels = np.array([[0, 1], [-1, -1]])
    result = pixel_ood_metrics(SCORES, labels, ignore_index=-1)
    assert (result["n_pos"], result["n_neg"]) == (1, 1)
    with pytest.raises(OodBenchError, match="255"):  # 255 is data now, and not 0/1
        pixel_ood_metrics(SCORES, LABELS, ignore_index=-1)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("labels, missing", [
    (np.array([[0, 0], [0, 255]]), "no positive"),
    (np.array([[1, 1], [255, 1]]), "no negative"),
    (np.full((2, 2), 255), "no positive"),
])
def test_pool_without_a_class(exact, labels, missing):
    with pytest.raises(OodBenchError, match=missing):
        pixel_ood_metrics(SCORES, labels, exact=exact)
    metric = PixelOODMetric(exact=exact)
    metric.update(SCORES, labels)
    with pytest.raises(OodBenchError, match=missing):
        metric.compute()
    with pytest.raises(OodBenchError, match="no positive"):
        PixelOODMetric(exact=exact).curves()


def test_unknown_fpr_convention():
    with pytest.raises(OodBenchError, match=r"unknown fpr_at 'best'; expected one of "
                                            r"\('first', 'closest', 'interpolated'\)"):
        pixel_ood_metrics(SCORES, LABELS, fpr_at="best")
    with pytest.raises(OodBenchError, match="unknown fpr_at"):
        PixelOODMetric(fpr_at="Closest")


def test_bad_score_types_and_budget():
    with pytest.raises(OodBenchError, match="scores must be real numbers"):
        pixel_ood_metrics(SCORES.astype(np.complex64), LABELS)
    with pytest.raises(OodBenchError, match="labels must be integers"):
        pixel_ood_metrics(SCORES, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(OodBenchError, match="max_state_bytes=1000 is too small"):
        PixelOODMetric(max_state_bytes=1000)


def test_merge_and_state_mismatches():
    with pytest.raises(OodBenchError, match="same `exact` mode"):
        PixelOODMetric(exact=True).merge(PixelOODMetric(exact=False))
    state = PixelOODMetric(exact=True).state_dict()
    with pytest.raises(OodBenchError, match="different `exact` mode"):
        PixelOODMetric(exact=False).load_state_dict(state)
    state["spec_version"] = 2
    with pytest.raises(OodBenchError, match="metric spec v2, this is v1"):
        PixelOODMetric(exact=True).load_state_dict(state)
