"""SegmentationMetric: hand-computed confusion matrix, scikit-learn, merge, state, errors."""

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score, recall_score

from ood_bench.metrics.segmentation import SegmentationMetric, segmentation_metrics


def test_hand_computed_confusion_matrix():
    # 4 classes; class 3 appears nowhere. Target 255 pixels are dropped (their predictions,
    # including the out-of-range 9, are never looked at).
    target = np.array([[0, 0, 0, 1], [1, 1, 2, 255], [2, 2, 255, 255]])
    pred = np.array([[0, 0, 1, 1], [1, 2, 2, 9], [0, 2, 0, 3]])
    # evaluated pairs (target, pred): (0,0) (0,0) (0,1) (1,1) (1,1) (1,2) (2,2) (2,0) (2,2)
    expected_cm = np.array(
        [[2, 1, 0, 0],
         [0, 2, 1, 0],
         [1, 0, 2, 0],
         [0, 0, 0, 0]]
    )
    out = segmentation_metrics(pred, target, num_classes=4)
    np.testing.assert_array_equal(out["confusion_matrix"], expected_cm)
    # IoU: class 0 = 2/(3+3-2) = 1/2; class 1 = 2/(3+3-2) = 1/2; class 2 = 2/(3+3-2) = 1/2
    np.testing.assert_allclose(out["iou"][:3], [0.5, 0.5, 0.5])
    assert np.isnan(out["iou"][3]) and np.isnan(out["acc"][3])
    # per-class recall 2/3 each; pixel accuracy 6/9
    np.testing.assert_allclose(out["acc"][:3], [2 / 3] * 3)
    assert out["miou"] == pytest.approx(0.5)
    assert out["macc"] == pytest.approx(2 / 3)
    assert out["pixel_acc"] == pytest.approx(6 / 9)


def test_miou_counts_classes_only_predicted_and_macc_only_ground_truth():
    # class 1 is predicted but never in the ground truth: IoU 0 enters mIoU, recall is NaN.
    target = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 1, 1])
    out = segmentation_metrics(pred, target, num_classes=3)
    np.testing.assert_allclose(out["iou"][:2], [0.5, 0.0])
    assert np.isnan(out["iou"][2]) and np.isnan(out["acc"][1])
    assert out["miou"] == pytest.approx(0.25)
    assert out["macc"] == pytest.approx(0.5)


def test_matches_sklearn_on_random_data_with_merge_and_torch_inputs():
    rng = np.random.default_rng(0)
    k = 7
    target = rng.integers(0, k, size=(5, 33, 41))
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, k, size=target.shape))
    pred[target == 255] = rng.integers(0, k, size=int((target == 255).sum()))

    whole = SegmentationMetric(num_classes=k)
    for i in range(3):
        whole.update(torch.from_numpy(pred[i]), torch.from_numpy(target[i]))
    rest = SegmentationMetric(num_classes=k)
    rest.update(pred[3:], target[3:].astype(np.uint8))
    out = whole.merge(rest).compute()

    keep = target.ravel() != 255
    t, p = target.ravel()[keep], pred.ravel()[keep]
    labels = list(range(k))
    np.testing.assert_array_equal(out["confusion_matrix"], confusion_matrix(t, p, labels=labels))
    np.testing.assert_allclose(out["iou"], jaccard_score(t, p, labels=labels, average=None))
    assert out["miou"] == pytest.approx(jaccard_score(t, p, labels=labels, average="macro"))
    assert out["macc"] == pytest.approx(recall_score(t, p, labels=labels, average="macro"))
    assert out["pixel_acc"] == pytest.approx(np.mean(t == p))


def test_state_dict_round_trip_and_reset():
    metric = SegmentationMetric(num_classes=3, ignore_index=None)
    metric.update(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    restored = SegmentationMetric(num_classes=3, ignore_index=None)
    restored.load_state_dict(metric.state_dict())
    np.testing.assert_array_equal(restored.compute()["confusion_matrix"], metric.confusion_matrix)
    metric.reset()
    assert metric.confusion_matrix.sum() == 0
    with pytest.raises(ValueError, match="no evaluated pixel"):
        metric.compute()
    with pytest.raises(ValueError, match="num_classes/ignore_index 3/None"):
        SegmentationMetric(num_classes=4).load_state_dict(restored.state_dict())


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (np.array([0, 1]), np.array([0, 7]), r"target has values outside \[0, 3\).*: 7"),
        (np.array([0, 3]), np.array([0, 1]), r"pred has values outside \[0, 3\).*: 3"),
        (np.array([0, -1]), np.array([0, 1]), r"pred has values .*: -1"),
        (np.array([0, 1]), np.array([[0, 1]]), r"shape mismatch: pred \(2,\) vs target \(1, 2\)"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "pred must hold integer class ids.*float64"),
    ],
)
def test_bad_input_is_a_clear_error(pred, target, message):
    with pytest.raises(ValueError, match=message):
        SegmentationMetric(num_classes=3).update(pred, target)


def test_merge_refuses_different_settings():
    with pytest.raises(ValueError, match="different settings"):
        SegmentationMetric(num_classes=3).merge(SegmentationMetric(num_classes=4))
