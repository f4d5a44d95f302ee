"""``oodbench metrics`` on tiny score/label files written in the released on-disk layouts."""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from ood_bench.cli import main
from ood_bench.metrics.component import ComponentMetric

VOID = 255


def make_frames(seed, n=3, shape=(24, 32)):
    """Random frames: blob-free labels with void, scores correlated with the labels."""
    rng = np.random.default_rng(seed)
    frames = {}
    for i in range(n):
        labels = (rng.random(shape) < 0.2).astype(np.uint8)
        labels[: shape[0] // 6] = VOID
        scores = rng.normal(size=shape) + 1.5 * labels
        frames[f"frame{i}"] = (scores.astype(np.float32), labels)
    return frames


def write_png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)


def pooled(frames, ood_value=1):
    scores = np.concatenate([s.ravel() for s, _ in frames.values()]).astype(np.float64)
    labels = np.concatenate([lab.ravel() for _, lab in frames.values()])
    keep = labels != VOID
    return scores[keep], (labels[keep] == ood_value).astype(int)


def first_fpr_at_95(scores, labels):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fpr[np.argmax(tpr >= 0.95)]


def invoke(*args):
    return CliRunner().invoke(main, ["metrics", *map(str, args)])


def test_npy_folder_matches_sklearn_and_writes_json(tmp_path):
    frames = make_frames(0)
    for name, (scores, labels) in frames.items():
        (tmp_path / "scores").mkdir(exist_ok=True)
        np.save(tmp_path / "scores" / f"{name}.npy", scores)
        write_png(tmp_path / "labels" / f"{name}.png", labels)
    out = tmp_path / "res" / "metrics.json"
    result = invoke("--scores", tmp_path / "scores", "--labels", tmp_path / "labels",
                    "--json", out)
    assert result.exit_code == 0, result.output
    scores, labels = pooled(frames)
    data = json.loads(out.read_text())
    assert data["n_frames"] == 3
    assert data["pixel"]["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert data["pixel"]["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert data["pixel"]["fpr95"] == pytest.approx(first_fpr_at_95(scores, labels), abs=1e-9)
    assert data["pixel"]["n_pos"] == labels.sum()
    assert data["pixel"]["n_neg"] == labels.size - labels.sum()
    assert f"{100 * roc_auc_score(labels, scores):.3f}" in result.output
    assert f"{100 * average_precision_score(labels, scores):.3f}" in result.output
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]  # no temp file left


def test_smiyc_layout_with_components_at_best_f1(tmp_path):
    # outputs/anomaly_p/<method>/<dataset>/<fid>.hdf5 (dataset "value", float16, gzip 9) and
    # dataset_ObstacleTrack/labels_masks/<fid>_labels_semantic.png (+ a _color image to skip)
    frames = make_frames(1)
    score_dir = tmp_path / "anomaly_p" / "M" / "ObstacleTrack-all"
    label_dir = tmp_path / "dataset_ObstacleTrack" / "labels_masks"
    score_dir.mkdir(parents=True)
    for name, (scores, labels) in frames.items():
        with h5py.File(score_dir / f"{name}.hdf5", "w") as handle:
            handle.create_dataset("value", data=scores.astype(np.float16), compression=9)
        write_png(label_dir / f"{name}_labels_semantic.png", labels)
        write_png(label_dir / f"{name}_labels_semantic_color.png", labels * 80)
    out = tmp_path / "out.json"
    result = invoke("--scores", score_dir, "--labels", label_dir, "--components", "obstacle",
                    "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())

    # float16 scores, as stored; best F1 = max 2PR/(P+R) over sklearn's PR operating points
    frames16 = {k: (s.astype(np.float16), lab) for k, (s, lab) in frames.items()}
    scores, labels = pooled(frames16)
    assert data["pixel"]["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    best_threshold = thresholds[np.argmax(f1[:-1])]
    comp = data["components"]
    assert comp["threshold"] == pytest.approx(best_threshold)
    reference = ComponentMetric(best_threshold, track="obstacle", inclusive=True)
    for scores16, labels_frame in frames16.values():
        reference.update(scores16, labels_frame)
    expected = reference.compute()
    assert comp["n_gt"] == expected["n_gt"] > 0 and comp["n_pred"] == expected["n_pred"]
    assert comp["f1_mean"] == pytest.approx(expected["f1_mean"])
    assert comp["tp"] == expected["tp"].tolist()
    assert (comp["min_pred_size"], comp["min_gt_size"]) == (50, 10)
    assert "mean F1 (%)" in result.output

    # an explicit threshold binarises strictly (score > t), as SMIYC does
    result = invoke("--scores", score_dir, "--labels", label_dir, "--components", "anomaly",
                    "--threshold", 0.5, "--json", out)
    assert result.exit_code == 0, result.output
    comp = json.loads(out.read_text())["components"]
    reference = ComponentMetric(0.5, track="anomaly")
    for scores16, labels_frame in frames16.values():
        reference.update(scores16, labels_frame)
    assert comp["tp"] == reference.compute()["tp"].tolist()
    assert (comp["threshold"], comp["inclusive"], comp["min_pred_size"]) == (0.5, False, 500)


def test_single_hdf5_file_with_ood_value_and_streaming(tmp_path):
    # RoadAnomaly-style labels: background 0, anomaly 2, no void
    frames = {k: (s, np.where(lab == 1, 2, 0).astype(np.uint8))
              for k, (s, lab) in make_frames(2).items()}
    with h5py.File(tmp_path / "scores.h5", "w") as handle:
        for name, (scores, labels) in frames.items():
            handle.create_dataset(name, data=scores[None])  # a singleton axis is squeezed
            write_png(tmp_path / "labels" / f"{name}.png", labels)
    out = tmp_path / "out.json"
    result = invoke("--scores", tmp_path / "scores.h5", "--labels", tmp_path / "labels",
                    "--ood-value", 2, "--streaming", "--fpr-at", "closest", "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    scores, labels = pooled(frames, ood_value=2)
    bound = data["pixel"]["error_bound"]
    bound = max(bound.values()) if isinstance(bound, dict) else bound
    assert data["pixel"]["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=bound + 1e-12)
    assert data["pixel"]["ap"] == pytest.approx(
        average_precision_score(labels, scores), abs=bound + 1e-12
    )
    assert data["settings"]["fpr_at"] == "closest" and data["settings"]["exact"] is False


def error_of(result):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    return result.output


def test_errors_name_the_problem(tmp_path):
    scores_dir, labels_dir = tmp_path / "scores", tmp_path / "labels"
    scores_dir.mkdir()
    labels_dir.mkdir()
    assert "score path" in error_of(invoke("--scores", tmp_path / "nope", "--labels", labels_dir))
    assert "label folder" in error_of(invoke("--scores", scores_dir, "--labels", tmp_path / "x"))
    assert "no score maps" in error_of(invoke("--scores", scores_dir, "--labels", labels_dir))

    np.save(scores_dir / "a.npy", np.zeros((4, 4), np.float32))
    output = error_of(invoke("--scores", scores_dir, "--labels", labels_dir))
    assert "Error: no label for frame 'a'" in output and "a_labels_semantic.png" in output

    write_png(labels_dir / "a.png", np.zeros((4, 5)))
    output = error_of(invoke("--scores", scores_dir, "--labels", labels_dir))
    assert "shape mismatch in frame 'a'" in output

    write_png(labels_dir / "a.png", np.full((4, 4), 3))
    output = error_of(invoke("--scores", scores_dir, "--labels", labels_dir))
    assert "Error:" in output and "3" in output and "'a'" in output

    write_png(labels_dir / "a.png", np.zeros((4, 4)))
    output = error_of(invoke("--scores", scores_dir / "a.npy", "--labels", labels_dir))
    assert "must be a folder of score maps or an .hdf5/.h5 file" in output

    (scores_dir / "b.npy").write_bytes(b"not a numpy file")
    write_png(labels_dir / "b.png", np.zeros((4, 4)))
    output = error_of(invoke("--scores", scores_dir, "--labels", labels_dir))
    assert "cannot read" in output and "b.npy" in output
