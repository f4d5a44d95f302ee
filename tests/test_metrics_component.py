"""ComponentMetric: hand-derived SMIYC component metrics, a literal reference, merge, errors."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import precision_recall_curve

from ood_bench.metrics.component import SIOU_THRESHOLDS, ComponentMetric, best_f1_threshold

VOID = 255


def run(labels, predicted, **kwargs):
    """Component metrics of one frame whose binary prediction is given directly (score 1 / 0)."""
    kwargs.setdefault("min_pred_size", 1)
    kwargs.setdefault("min_gt_size", 1)
    metric = ComponentMetric(0.5, **kwargs)
    metric.update(np.asarray(predicted, dtype=np.float32), np.asarray(labels, dtype=np.uint8))
    return metric.compute()


def per_tau(values_by_tau):
    """Expand {upper tau (inclusive): value} into the 11-vector over SIOU_THRESHOLDS."""
    return [next(v for t, v in values_by_tau.items() if tau <= t + 1e-9) for tau in SIOU_THRESHOLDS]


def test_partial_overlap():
    labels = np.zeros((4, 5), np.uint8)
    labels[1:3, 1:3] = 1  # GT k: 4 px
    pred = np.zeros((4, 5))
    pred[1:3, 2:4] = 1  # p: 2 px on k, 2 px on background
    out = run(labels, pred)
    # sIoU(k) = |k ∩ p| / (|p| + |k| - |k ∩ p|) = 2 / (4 + 4 - 2) = 1/3; PPV(p) = 2/4
    assert out["siou_gt"] == pytest.approx(1 / 3)
    assert out["siou_pred"] == pytest.approx(1 / 3)
    assert out["ppv"] == pytest.approx(0.5)
    # TP for tau <= 1/3 (0.25, 0.30); FP where PPV 0.5 < tau (0.55 ... 0.75)
    np.testing.assert_array_equal(out["tp"], per_tau({0.3: 1, 1: 0}))
    np.testing.assert_array_equal(out["fn"], per_tau({0.3: 0, 1: 1}))
    np.testing.assert_array_equal(out["fp"], per_tau({0.5: 0, 1: 1}))
    # F1 = 1 at the two lowest tau, 0 elsewhere
    assert out["f1_mean"] == pytest.approx(2 / 11)
    assert (out["tp_25"], out["fn_25"], out["fp_25"], out["f1_25"]) == (1, 0, 0, 1.0)
    assert (out["tp_50"], out["fn_50"], out["fp_50"], out["f1_50"]) == (0, 1, 0, 0.0)
    assert (out["tp_75"], out["fn_75"], out["fp_75"], out["f1_75"]) == (0, 1, 1, 0.0)
    assert (out["n_gt"], out["n_pred"], out["n_frames"]) == (1, 1, 1)


def test_adjustment_for_one_prediction_spanning_two_gt_components():
    labels = np.zeros((3, 7), np.uint8)
    labels[1, 0:2] = 1  # k1: 2 px
    labels[1, 3:6] = 1  # k2: 3 px (column 2 separates them)
    pred = np.zeros((3, 7))
    pred[1, 0:5] = 1  # p: all of k1, background column 2, two px of k2
    out = run(labels, pred)
    # sIoU(k1) = 2 / (|p| + |k1| - 2 - adjustment) with adjustment = p on k2 = 2 -> 2/(5+2-2-2)
    #          = 2/3 (0.4 without the adjustment)
    # sIoU(k2) = 2 / (5 + 3 - 2 - 2) = 1/2 (adjustment = p on k1 = 2)
    assert out["siou_gt"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # PPV(p) = 4/5; sIoU(p) = 4 / (|k1|+|k2| + |p| - 4) = 4/6
    assert out["ppv"] == pytest.approx(0.8)
    assert out["siou_pred"] == pytest.approx(4 / 6)
    # k1 is a TP for tau <= 0.65, k2 for tau <= 0.5; PPV 0.8 never below tau
    np.testing.assert_array_equal(out["tp"], per_tau({0.5: 2, 0.65: 1, 1: 0}))
    np.testing.assert_array_equal(out["fn"], per_tau({0.5: 0, 0.65: 1, 1: 2}))
    np.testing.assert_array_equal(out["fp"], np.zeros(11))
    # F1: 1 (6 taus), 2/(2+1) (0.55, 0.60, 0.65), 0 (0.70, 0.75)
    assert out["f1_mean"] == pytest.approx((6 + 3 * 2 / 3) / 11)


def test_eight_connectivity_joins_diagonal_pixels():
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = labels[1, 1] = 1  # diagonal: one GT component of 2 px
    pred = np.zeros((4, 4))
    pred[0, 0] = 1  # covers half of it
    pred[2, 3] = pred[3, 2] = 1  # diagonal background prediction: one component
    out = run(labels, pred)
    # one GT component, sIoU = 1 / (2 + 0) = 1/2; two predicted components with PPV 1 and 0
    assert (out["n_gt"], out["n_pred"]) == (1, 2)
    assert out["siou_gt"] == pytest.approx(0.5)
    assert out["ppv"] == pytest.approx(0.5)
    np.testing.assert_array_equal(out["tp"], per_tau({0.5: 1, 1: 0}))
    np.testing.assert_array_equal(out["fp"], np.ones(11))  # PPV 0 < every tau


def test_size_thresholds():
    labels = np.zeros((6, 10), np.uint8)
    pred = np.zeros((6, 10))
    labels[0:2, 0:3] = 1  # A: 6 px, kept (>= min_gt_size 5)
    pred[0:2, 0:3] = 1  # p1 = A exactly: sIoU 1, PPV 1
    labels[4:6, 0:2] = 1  # B: 4 px < 5 -> void
    pred[4:6, 0:2] = 1  # p4 = B exactly: kept by size (4 >= 3) but entirely void -> gone
    pred[0, 6:8] = 1  # p2: 2 px < min_pred_size 3 -> dropped
    labels[3, 8:10] = 1  # C: 2 px -> void
    pred[3:5, 8:10] = 1  # p3: 4 px kept, 2 of them on void C -> 2 background px, PPV 0
    out = run(labels, pred, min_pred_size=3, min_gt_size=5)
    assert (out["n_gt"], out["n_pred"]) == (1, 2)
    assert out["siou_gt"] == pytest.approx(1.0)
    assert out["ppv"] == pytest.approx(0.5)
    assert out["siou_pred"] == pytest.approx(0.5)
    # TP 1, FN 0, FP 1 at every tau -> F1 = 2/3
    np.testing.assert_array_equal(out["tp"], np.ones(11))
    np.testing.assert_array_equal(out["fp"], np.ones(11))
    assert out["f1_mean"] == pytest.approx(2 / 3)


def test_void_pixels_split_predictions_and_may_hold_nan():
    labels = np.zeros((3, 7), np.uint8)
    labels[:, 2] = VOID
    labels[1, 0:2] = 1  # k: 2 px
    pred = np.zeros((3, 7))
    pred[1, :] = 1  # crosses the void column
    pred[0, 2] = np.nan  # scores in void are never looked at
    out = run(labels, pred)
    # zeroed on void, the prediction is two components: on k (PPV 1) and background (PPV 0);
    # sIoU(k) = 2 / 2 = 1 (the background part does not touch k). Without the zeroing it would
    # be one component with sIoU 2/6.
    assert (out["n_gt"], out["n_pred"]) == (1, 2)
    assert out["siou_gt"] == pytest.approx(1.0)
    assert out["ppv"] == pytest.approx(0.5)
    assert out["f1_mean"] == pytest.approx(2 / 3)


def test_threshold_is_strict_unless_inclusive():
    labels = np.array([[1, 1, 0, 0]], np.uint8)
    scores = np.array([[0.7, 0.5, 0.5, 0.1]])
    strict = ComponentMetric(0.5, min_pred_size=1, min_gt_size=1)
    strict.update(scores, labels)
    inclusive = ComponentMetric(0.5, min_pred_size=1, min_gt_size=1, inclusive=True)
    inclusive.update(scores, labels)
    # strict: prediction = first pixel only -> sIoU 1/2, PPV 1; inclusive: three pixels -> 2/3
    assert strict.compute()["siou_gt"] == pytest.approx(0.5)
    assert inclusive.compute()["siou_gt"] == pytest.approx(2 / 3)
    assert inclusive.compute()["ppv"] == pytest.approx(2 / 3)


def test_track_presets_and_overrides():
    anomaly = ComponentMetric(0.1)
    obstacle = ComponentMetric(0.1, track="obstacle")
    custom = ComponentMetric(0.1, track="obstacle", min_gt_size=3)
    assert (anomaly.min_pred_size, anomaly.min_gt_size) == (500, 100)
    assert (obstacle.min_pred_size, obstacle.min_gt_size) == (50, 10)
    assert (custom.min_pred_size, custom.min_gt_size) == (50, 3)
    with pytest.raises(ValueError, match="unknown track 'road'"):
        ComponentMetric(0.1, track="road")


def reference_components(scores, labels, threshold, min_pred, min_gt):
    """The SMIYC procedure written literally (per-component loops, explicit adjustment term)."""
    labels = labels.copy()
    eight = np.ones((3, 3))
    prediction = (scores > threshold) & (labels != VOID)
    gt_ids, n_gt = ndimage.label(labels == 1, eight)
    pred_ids, n_pred = ndimage.label(prediction, eight)
    for c in range(1, n_gt + 1):
        if (gt_ids == c).sum() < min_gt:
            labels[gt_ids == c] = VOID
    for c in range(1, n_pred + 1):
        if (pred_ids == c).sum() < min_pred:
            pred_ids[pred_ids == c] = 0
    roi = labels != VOID
    gt_ids, pred_ids = gt_ids[roi], pred_ids[roi]
    siou_gt, ppv = [], []
    for k in np.unique(gt_ids[gt_ids > 0]):
        touching = np.unique(pred_ids[(gt_ids == k) & (pred_ids > 0)])
        in_touching = np.isin(pred_ids, touching)
        intersection = np.sum((gt_ids == k) & in_touching)
        adjustment = np.sum(~np.isin(gt_ids, [0, k]) & in_touching)
        union = in_touching.sum() + (gt_ids == k).sum() - intersection - adjustment
        siou_gt.append(intersection / union)
    siou_pred = []
    for p in np.unique(pred_ids[pred_ids > 0]):
        touching = np.unique(gt_ids[(pred_ids == p) & (gt_ids > 0)])
        in_touching = np.isin(gt_ids, touching)
        intersection = np.sum((pred_ids == p) & in_touching)
        adjustment = np.sum(~np.isin(pred_ids, [0, p]) & in_touching)
        union = in_touching.sum() + (pred_ids == p).sum() - intersection - adjustment
        siou_pred.append(intersection / union)
        ppv.append(intersection / np.sum(pred_ids == p))
    return np.array(siou_gt), np.array(ppv), np.array(siou_pred)


def blobs(rng, shape):
    """Random smooth fields: labels with blob-shaped anomalies and voids, correlated scores."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    labels = (field > 0.12).astype(np.uint8)
    labels[ndimage.gaussian_filter(rng.normal(size=shape), 3.0) > 0.12] = VOID
    scores = field + 0.08 * ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    return scores.astype(np.float32), labels


def test_matches_literal_reference_and_merge_equals_single_pass():
    rng = np.random.default_rng(3)
    frames = [blobs(rng, (48, 64)) for _ in range(6)]
    bf16 = torch.from_numpy(frames[5][0]).to(torch.bfloat16)  # passed as a bfloat16 tensor below
    frames[5] = (bf16.float().numpy(), frames[5][1])
    threshold, min_pred, min_gt = 0.1, 12, 8
    reference = [reference_components(s, lab, threshold, min_pred, min_gt) for s, lab in frames]
    siou_gt, ppv, siou_pred = (np.concatenate(parts) for parts in zip(*reference, strict=True))
    assert siou_gt.size > 10 and ppv.size > 10  # the random frames exercise many components

    settings = dict(min_pred_size=min_pred, min_gt_size=min_gt)
    single = ComponentMetric(threshold, **settings)
    single.update(np.stack([s for s, _ in frames]), np.stack([lab for _, lab in frames]))
    first, second = ComponentMetric(threshold, **settings), ComponentMetric(threshold, **settings)
    for i, (s, lab) in enumerate(frames):
        scores = torch.from_numpy(s).to(torch.bfloat16 if i == 5 else torch.float32)
        (first if i < 2 else second).update(scores, torch.from_numpy(lab), f"f{i}")
    merged = first.merge(second).compute()
    out = single.compute()

    tp = np.array([(siou_gt >= t).sum() for t in SIOU_THRESHOLDS])
    fp = np.array([(ppv < t).sum() for t in SIOU_THRESHOLDS])
    np.testing.assert_array_equal(out["tp"], tp)
    np.testing.assert_array_equal(out["fn"], siou_gt.size - tp)
    np.testing.assert_array_equal(out["fp"], fp)
    assert out["siou_gt"] == pytest.approx(siou_gt.mean())
    assert out["ppv"] == pytest.approx(ppv.mean())
    assert out["siou_pred"] == pytest.approx(siou_pred.mean())
    f1 = 2 * tp / (2 * tp + (siou_gt.size - tp) + fp)
    assert out["f1_mean"] == pytest.approx(f1.mean())
    for key, value in out.items():
        np.testing.assert_allclose(merged[key], value, rtol=1e-12, err_msg=key)


def test_state_dict_round_trip_and_merge_checks():
    rng = np.random.default_rng(4)
    metric = ComponentMetric(0.1, track="obstacle", min_pred_size=5)
    metric.update(*blobs(rng, (40, 40)))
    restored = ComponentMetric(0.1, track="obstacle", min_pred_size=5)
    restored.load_state_dict(metric.state_dict())
    assert restored.compute()["f1"].tolist() == metric.compute()["f1"].tolist()
    with pytest.raises(ValueError, match="state has settings"):
        ComponentMetric(0.2).load_state_dict(metric.state_dict())
    with pytest.raises(ValueError, match="cannot merge ComponentMetric states: settings"):
        metric.merge(ComponentMetric(0.1))
    metric.reset()
    assert metric.n_frames == 0 and np.isnan(metric.compute()["f1_mean"])


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (np.zeros((2, 2)), np.full((2, 2), 2), r"labels in frame 'x' must be 0, 1 or .*found 2"),
        (np.zeros((2, 3)), np.zeros((2, 2)), r"shape mismatch in frame 'x'"),
        (np.full((2, 2), np.nan), np.zeros((2, 2)), r"scores in frame 'x' contain NaN"),
        (np.zeros(4), np.zeros(4), r"expected \(H, W\) or \(N, H, W\) maps in frame 'x'"),
    ],
)
def test_bad_input_is_a_clear_error(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        ComponentMetric(0.5).update(scores, labels, frame="x")


def sklearn_best_f1(scores, labels):
    """Best F1 and its threshold from scikit-learn's precision-recall operating points."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    best = np.argmax(f1[:-1])  # the last PR point (recall 0) has no threshold
    return thresholds[best], f1[best]


@pytest.mark.parametrize("tied", [False, True])
def test_best_f1_threshold_matches_sklearn(tied):
    from ood_bench.metrics.pixel import PixelOODMetric

    rng = np.random.default_rng(5)
    labels = (rng.random((3, 20, 30)) < 0.15).astype(np.uint8)
    scores = rng.normal(size=labels.shape) + 1.2 * labels
    if tied:
        scores = np.round(scores, 1)
    labels[:, :2] = VOID
    pixel = PixelOODMetric(exact=True)
    for frame_scores, frame_labels in zip(scores, labels, strict=True):
        pixel.update(frame_scores, frame_labels)
    keep = labels != VOID
    expected_threshold, expected_f1 = sklearn_best_f1(scores[keep], labels[keep])
    threshold, f1 = best_f1_threshold(pixel)
    assert threshold == pytest.approx(expected_threshold)
    assert f1 == pytest.approx(expected_f1)
    metric = ComponentMetric.from_pixel_metric(pixel, track="obstacle")
    assert (metric.threshold, metric.inclusive, metric.min_pred_size) == (threshold, True, 50)
