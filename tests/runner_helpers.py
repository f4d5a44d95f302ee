"""Shared pieces of the runner tests: a tiny seeded model and an independent metric reference."""

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from ood_bench.adapters import get_dataset
from ood_bench.baselines import get_method
from ood_bench.models import create_model, normalize_images, save_checkpoint
from ood_bench.runner import LoadedModel

WIDTH = 8
#: Metric values are binned (certified error ~1e-6 here); the reference is exact.
TOLERANCE = 1e-4
METRICS = ("auroc", "ap", "fpr95", "miou", "macc")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return create_model("deeplabv3plus-small", width=WIDTH).eval()


def tiny_loaded(seed=0):
    return LoadedModel("deeplabv3plus-small", tiny_model(seed), "test", {"width": WIDTH},
                       "synth-cityscapes-val")


def tiny_checkpoint(path, seed=0):
    return save_checkpoint(tiny_model(seed), path)


def reference_metrics(model, method_name, dataset_name, limit):
    """AUROC/AP (scikit-learn), FPR@95 (first TPR >= 0.95) and mIoU/mAcc from a plain loop."""
    dataset = get_dataset(dataset_name)
    method = get_method(method_name)
    scores, labels, confusion = [], [], np.zeros((19, 19), np.int64)
    for index in range(limit):
        sample = dataset[index]
        output = method.score(model, normalize_images(sample.image))
        score, pred = output.scores[0].numpy(), output.prediction[0].numpy()
        keep = sample.ood != 255
        scores.append(score[keep])
        labels.append(sample.ood[keep])
        valid = sample.semantic < 19
        confusion += np.bincount(sample.semantic[valid].astype(np.int64) * 19 + pred[valid],
                                 minlength=361).reshape(19, 19)
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    order = np.argsort(-scores, kind="stable")
    distinct = np.r_[np.flatnonzero(np.diff(scores[order])), scores.size - 1]
    tp = np.cumsum(labels[order])[distinct]
    fp = (distinct + 1) - tp
    tpr, fpr = tp / labels.sum(), fp / (labels.size - labels.sum())
    tp_c, gt, pred_c = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(gt + pred_c - tp_c > 0, tp_c / (gt + pred_c - tp_c), np.nan)
        acc = np.where(gt > 0, tp_c / gt, np.nan)
    return {"auroc": roc_auc_score(labels, scores), "ap": average_precision_score(labels, scores),
            "fpr95": float(fpr[np.argmax(tpr >= 0.95)]), "miou": float(np.nanmean(iou)),
            "macc": float(np.nanmean(acc))}


def metrics_of(row):
    return {key: row[key] for key in METRICS}
