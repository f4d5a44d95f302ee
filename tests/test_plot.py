"""ROC/PR curves and uncertainty-map grids from score stores written by the store's own API."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from ood_bench.adapters.base import VOID, get_dataset
from ood_bench.cli import main
from ood_bench.plots import (
    GRID_GAP,
    GRID_HEADER,
    GRID_MARGIN,
    grid_size,
    select_frames,
    store_curves,
    uncertainty_grid,
)
from ood_bench.store import ScoreStore, StoredFrame, store_filename
from ood_bench.viz import label_colours

DATASET = "synth-roadanomaly"
N_FRAMES = 6


def _scores(method: str, sample, seed: int) -> np.ndarray:
    """A good method (OOD pixels score higher) and an uninformative one."""
    noise = np.random.default_rng(seed).normal(size=sample.ood.shape).astype(np.float32)
    return noise + (2.0 * (sample.ood == 1) if method == "good" else 0.0)


def _write_store(folder, method: str, model: str = "deeplabv3plus-small"):
    dataset = get_dataset(DATASET, length=8)
    store = ScoreStore(folder / store_filename(model, method, DATASET))
    with store.locked():
        # the config shape `oodbench run` records (only the dataset part is read back)
        config = {"model": {"name": model}, "method": {"name": method},
                  "dataset": {"name": DATASET, "options": {"length": 8}}}
        store.prepare(config, len(dataset), "float32")
        for index in range(N_FRAMES):
            sample = dataset[index]
            store.write_frame(StoredFrame(
                index, sample.name, _scores(method, sample, index),
                np.zeros(sample.ood.shape, np.uint8), sample.ood, sample.semantic,
                sample.domain,
            ))
        store.commit()
    return store.path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two stores written once for the module (tests only read them)."""
    folder = tmp_path_factory.mktemp("plots") / "stores"
    return {method: _write_store(folder, method) for method in ("good", "noise")}


def _pooled(method: str):
    dataset = get_dataset(DATASET)
    scores, labels = [], []
    for index in range(N_FRAMES):
        sample = dataset[index]
        keep = sample.ood != VOID
        scores.append(_scores(method, sample, index)[keep])
        labels.append(sample.ood[keep])
    return np.concatenate(labels), np.concatenate(scores)


@pytest.mark.parametrize("method", ["good", "noise"])
def test_curves_are_the_pooled_pixels_curves(stores, method):
    curves, metrics = store_curves(stores[method])
    labels, scores = _pooled(method)
    roc, pr = curves["roc"], curves["pr"]
    # ROC runs from (0, 0) to (1, 1); PR ends at full recall with the OOD pixel fraction
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert pr["recall"][-1] == 1.0
    assert pr["precision"][-1] == pytest.approx(labels.mean())
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    # the plotted curve is the one the metrics come from, and both agree with scikit-learn
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(roc_auc_score(labels, scores))
    bound = metrics["error_bound"]  # certified |binned - exact| of the metric engine
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=bound["auroc"])
    assert metrics["ap"] == pytest.approx(average_precision_score(labels, scores),
                                          abs=bound["ap"] + 1e-12)


def test_curves_cli_png_and_pdf(stores, tmp_path):
    runner = CliRunner()
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        out = tmp_path / f"curves{suffix}"
        result = runner.invoke(main, ["plot", "curves", "--store", str(stores["good"]),
                                      "--store", str(stores["noise"]), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert out.read_bytes().startswith(magic) and out.stat().st_size > 5000
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # atomic: no leftovers


def test_grid_layout_and_pixels(stores):
    frames = select_frames(stores, count=3)
    dataset = get_dataset(DATASET)
    # three frames spread over the six stored ones, the same in every store
    assert [f.index for f in frames["good"]] == [0, 2, 5]
    assert [f.name for f in frames["noise"]] == [dataset[i].name for i in (0, 2, 5)]
    images = [dataset[f.index].image for f in frames["good"]]
    grid = uncertainty_grid(images, frames, cell_height=64)  # frames are 64 x 128: no resize
    # hand-computed: header + 4 rows (image, truth, 2 methods) x 64 px + 3 gaps;
    # margin + 3 columns x 128 px + 2 gaps
    assert grid.shape == (GRID_HEADER + 4 * 64 + 3 * GRID_GAP,
                          GRID_MARGIN + 3 * 128 + 2 * GRID_GAP, 3)
    assert grid.shape[:2] == grid_size((64, 128), 3, 2, 64)
    second = GRID_MARGIN + 128 + GRID_GAP  # x of the second column
    sample = dataset[2]
    top = GRID_HEADER
    assert np.array_equal(grid[top:top + 64, second:second + 128], sample.image)
    top += 64 + GRID_GAP
    assert np.array_equal(grid[top:top + 64, second:second + 128], label_colours(sample))
    ratios = []
    for row in (2, 3):  # good, then noise: OOD pixels are brighter only in the good map
        y = GRID_HEADER + row * (64 + GRID_GAP)
        brightness = grid[y:y + 64, second:second + 128].astype(float).sum(axis=2)
        ratios.append(brightness[sample.ood == 1].mean() / brightness[sample.ood == 0].mean())
    assert ratios[0] > 1.4 and 0.85 < ratios[1] < 1.15


def test_maps_cli_png_size(stores, tmp_path):
    out = tmp_path / "maps.png"
    result = CliRunner().invoke(main, [
        "plot", "maps", "--store", str(stores["good"]), "--store", str(stores["noise"]),
        "--frames", "2", "--cell-height", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as picture:
        # 32-px cells of a 64 x 128 frame are 64 px wide
        assert picture.size == (GRID_MARGIN + 2 * 64 + GRID_GAP,
                                GRID_HEADER + 4 * 32 + 3 * GRID_GAP)


def test_maps_by_frame_name(stores):
    name = get_dataset(DATASET)[4].name
    frames = select_frames(stores, names=[name])
    assert [f.index for f in frames["noise"]] == [4]
    with pytest.raises(ValueError, match="no frame named"):
        select_frames(stores, names=["nope"])


def _results(folder, stores, store_folder=None):
    """results.jsonl as the runner writes it; ``store_folder`` fakes where the run wrote."""
    rows = [{"model": "deeplabv3plus-small", "method": method, "dataset": DATASET,
             "auroc": 0.5, "ap": 0.1, "fpr95": 0.9, "miou": None, "macc": None,
             "store": str((store_folder or path.parent) / path.name),
             "finished": "2026-01-01T00:00:00"}
            for method, path in stores.items()]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("moved", [False, True])
def test_plots_from_results_folder(stores, tmp_path, moved):
    # moved: the run wrote elsewhere, its folder was copied here (stores/ found beside results)
    if moved:
        shutil.copytree(stores["good"].parent, tmp_path / "stores")
    _results(tmp_path, stores, tmp_path / "gone" / "stores" if moved else None)
    for command in ("curves", "maps"):
        out = tmp_path / f"{command}.png"
        result = CliRunner().invoke(main, ["plot", command, "--results", str(tmp_path),
                                           "--methods", "good", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 5000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "x.png"], "give either --store"),
        (["--store", "a__b__c.h5", "--out", "x.gif"], "unsupported figure extension '.gif'"),
        (["--store", "nothing.h5", "--out", "x.png"], "not named like a score store"),
        (["--store", "m__msp__roadanomaly.h5", "--out", "x.png"], "do not exist"),
        (["--results", "{dir}", "--dataset", "roadanomaly", "--out", "x.png"],
         f"datasets there: {DATASET}"),
        (["--results", "{dir}", "--methods", "msp", "--out", "x.png"],
         "methods there: good, noise"),
        (["--results", "{empty}", "--out", "x.png"], "no results.jsonl in"),
    ],
)
def test_bad_input_exits_2(stores, tmp_path, args, message):
    _results(tmp_path, stores)
    (tmp_path / "empty").mkdir()
    args = [a.format(dir=tmp_path, empty=tmp_path / "empty") for a in args]
    for command in ("curves", "maps"):
        result = CliRunner().invoke(main, ["plot", command, *args])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_store_without_labels_is_refused(tmp_path):
    store = ScoreStore(tmp_path / store_filename("m", "msp", DATASET))
    with store.locked():
        store.prepare({}, 1, "float32")
        store.write_frame(StoredFrame(0, "f", np.zeros((4, 4), np.float32),
                                      np.zeros((4, 4), np.uint8)))
        store.commit()
    with pytest.raises(ValueError, match="no frame with OOD labels"):
        store_curves(store.path)
