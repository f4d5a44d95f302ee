"""The runner: numbers against an independent reference, determinism, resume, eval, grid."""

import json

import numpy as np
import pytest
import torch
from runner_helpers import TOLERANCE, metrics_of, reference_metrics, tiny_loaded

from ood_bench.adapters import get_dataset
from ood_bench.adapters.base import Sample, SegDataset, register_dataset
from ood_bench.baselines import Method, MethodOutput, register_method
from ood_bench.errors import OodBenchError
from ood_bench.metrics.component import ComponentMetric
from ood_bench.metrics.pixel import PixelOODMetric
from ood_bench.results import read_results
from ood_bench.runner import Progress, RunOptions, evaluate_store, run_grid, run_one
from ood_bench.store import ScoreStore, StoreMismatchError

DATASET = "synth-roadanomaly"


def test_metrics_match_an_independent_reference(tmp_path):
    loaded = tiny_loaded()
    row = run_one(loaded, "energy", DATASET, RunOptions(out=tmp_path, limit=5, batch_size=2))
    reference = reference_metrics(loaded.module, "energy", DATASET, 5)
    for key, value in reference.items():
        assert row[key] == pytest.approx(value, abs=TOLERANCE), key
    assert row["n_frames"] == row["n_labelled"] == 5 and row["dataset_frames"] == 100


def test_same_seed_same_numbers_and_eval_reproduces_them(tmp_path):
    """70 frames = two metric chunks, built while scoring; eval rebuilds them from the store."""
    rows = [run_one(tiny_loaded(), "msp", DATASET, RunOptions(out=tmp_path / str(k), limit=70))
            for k in range(2)]
    assert metrics_of(rows[0]) == metrics_of(rows[1])
    assert rows[0]["config_hash"] == rows[1]["config_hash"]
    digests = [ScoreStore(r["store"]).header()["content_hash"] for r in rows]
    assert digests[0] == digests[1]
    evaluated = evaluate_store(rows[0]["store"])
    assert metrics_of(evaluated) == metrics_of(rows[0])


def test_chunk_states_built_while_scoring_equal_those_read_back(tmp_path, monkeypatch):
    """Batches of 10 straddle the chunk boundary at frame 64: both chunk states are still built
    while scoring (no store read), and equal the states eval rebuilds from the store."""
    import ood_bench.runner as runner

    reads = []
    original = runner._pixel_chunk
    monkeypatch.setattr(runner, "_pixel_chunk", lambda store, chunk: reads.append(chunk[0])
                        or original(store, chunk))
    row = run_one(tiny_loaded(), "msp", DATASET, RunOptions(out=tmp_path, limit=70,
                                                             batch_size=10))
    assert reads == []
    evaluated = evaluate_store(row["store"])
    assert reads == [0, 64]
    assert metrics_of(evaluated) == metrics_of(row) and row["n_labelled"] == 70


def test_interrupted_run_resumes_to_identical_numbers(tmp_path):
    """Ctrl-C after 3 frames, rerun: finished frames are skipped, the numbers are identical."""
    options = RunOptions(out=tmp_path / "whole", limit=7, batch_size=1)
    whole = run_one(tiny_loaded(), "msp", DATASET, options)

    seen = []

    def interrupt(n):
        seen.append(n)
        if len(seen) == 3:
            raise KeyboardInterrupt

    resumed_options = RunOptions(out=tmp_path / "resumed", limit=7, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        run_one(tiny_loaded(), "msp", DATASET, resumed_options, progress=Progress(
            advance=interrupt))
    store = ScoreStore(tmp_path / "resumed" / "stores" / "deeplabv3plus-small__msp__"
                       f"{DATASET}.h5")
    assert store.finished_indices() == {0, 1, 2} and not store.path.exists()
    totals = []
    resumed = run_one(tiny_loaded(), "msp", DATASET, resumed_options,
                      progress=Progress(start=lambda d, total: totals.append(total)))
    assert totals == [4]  # only the missing frames were scored
    assert metrics_of(resumed) == metrics_of(whole)
    assert store.header()["content_hash"] == ScoreStore(whole["store"]).header()["content_hash"]


def test_rerun_of_a_finished_store_scores_nothing(tmp_path):
    options = RunOptions(out=tmp_path, limit=3)
    first = run_one(tiny_loaded(), "msp", DATASET, options)
    started = []
    again = run_one(tiny_loaded(), "msp", DATASET, options,
                    progress=Progress(start=lambda d, total: started.append(total)))
    assert started == [] and metrics_of(again) == metrics_of(first)


@pytest.mark.parametrize("change", ["method option", "model weights", "seed"])
def test_resume_with_another_configuration_is_refused(tmp_path, change):
    run_one(tiny_loaded(), "msp", DATASET, RunOptions(out=tmp_path, limit=2))
    loaded = tiny_loaded(seed=1 if change == "model weights" else 0)
    options = RunOptions(out=tmp_path, limit=2, seed=5 if change == "seed" else 0)
    method_options = {"smoothing": True} if change == "method option" else None
    with pytest.raises(StoreMismatchError, match="another configuration"):
        run_one(loaded, "msp", DATASET, options, method_options=method_options)


def test_grid_writes_one_row_per_pair_and_replaces_reruns(tmp_path):
    options = RunOptions(out=tmp_path, limit=2)
    rows = run_grid(["msp", "energy"], [DATASET, "synth-acdc-poc"], options,
                    loaded=tiny_loaded())
    assert [(r["method"], r["dataset"]) for r in rows] == [
        ("msp", DATASET), ("energy", DATASET), ("msp", "synth-acdc-poc"),
        ("energy", "synth-acdc-poc")]
    run_grid(["msp"], [DATASET], options, loaded=tiny_loaded())
    table = read_results(tmp_path)
    assert len(table) == 4 and list(table.columns[:5]) == ["model", "method", "dataset",
                                                          "auroc", "ap"]
    for column in ("fpr95", "miou", "macc", "n_frames", "metric_spec", "config_hash",
                   "version", "started", "finished", "store"):
        assert column in table.columns
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["model"] for line in lines)
    assert (tmp_path / "results.csv").read_text().count("\n") == 5


def test_float16_store_numbers_follow_the_stored_scores(tmp_path):
    row = run_one(tiny_loaded(), "msp", DATASET,
                  RunOptions(out=tmp_path, limit=3, store_dtype="float16"))
    store = ScoreStore(row["store"])
    metric = PixelOODMetric(exact=True)
    for frame in store.read_frames(range(3)):
        assert frame.score.dtype == np.float16
        metric.update(frame.score, frame.ood)
    assert row["auroc"] == pytest.approx(metric.compute()["auroc"], abs=TOLERANCE)


def test_run_state_gets_the_budget_of_the_largest_chunk_state(tmp_path, monkeypatch):
    """A chunk's binned state is sized by its first labelled frame (64×64: 8 MiB), the run's
    by the largest labelled frame (64×128: 16 MiB); the numbers still match exact counts."""
    from ood_bench.runner import CHUNK_BYTES_PER_PIXEL, CHUNK_FRAMES, compute_metrics
    from ood_bench.store import StoredFrame

    rng = np.random.default_rng(0)
    frames = [StoredFrame(i, f"f{i}", rng.random((64, w), np.float32),
                          np.zeros((64, w), np.uint8), (rng.random((64, w)) < 0.1).astype(np.uint8))
              for i, w in enumerate((64, 128, 96))]
    frames.append(StoredFrame(3, "unlabelled", np.zeros((64, 256), np.float32),
                              np.zeros((64, 256), np.uint8)))
    store = ScoreStore(tmp_path / "s.h5")
    with store.locked():
        store.prepare({"test": 1}, 4, "float32")
        store.write_frames(frames)
        store.commit()
    budgets = []
    original = PixelOODMetric.__init__
    monkeypatch.setattr(PixelOODMetric, "__init__", lambda self, *args, **kwargs: budgets.append(
        kwargs.get("max_state_bytes")) or original(self, *args, **kwargs))
    result = compute_metrics(store, range(4), None)
    assert budgets == [CHUNK_BYTES_PER_PIXEL * CHUNK_FRAMES * 64 * w for w in (128, 64)]
    exact = PixelOODMetric(exact=True)
    for frame in frames[:3]:
        exact.update(frame.score, frame.ood)
    assert result["auroc"] == pytest.approx(exact.compute()["auroc"], abs=TOLERANCE)


# ---- SMIYC component metrics, on a tiny registered dataset ----------------------------------
@register_dataset("smiyc-unittest", track="obstacle")
class _BlobFrames(SegDataset):
    """Three frames (64×128, 64×96, 64×128) with one obstacle each (a stand-in SMIYC split)."""

    def __init__(self, track="obstacle"):
        self.track = track

    def __len__(self):
        return 3

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        width = 96 if index == 1 else 128
        image = rng.integers(0, 255, (64, width, 3), dtype=np.uint8)
        ood = np.zeros((64, width), np.uint8)
        ood[20:30, 40 + 10 * index:55 + 10 * index] = 1
        ood[:4] = 255
        image[ood == 1] = 255
        return Sample(image, ood, None, f"frame{index}", None)


@register_method("unittest-brightness")
class _Brightness(Method):
    """Scores = mean normalised intensity (the test obstacles are white)."""

    def score(self, model, images):
        prediction = model(images).logits.argmax(1)
        return MethodOutput(images.mean(1), prediction)


@register_method("unittest-bad-class-ids")
class _BadClassIds(Method):
    """Predicts class 255 on the second frame of every batch but the first (not a trainId)."""

    batches = 0

    def score(self, model, images):
        prediction = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.int64)
        prediction[1, 0, 0] = 255 if self.batches else 0
        self.batches += 1
        return MethodOutput(images.mean(1), prediction)


def test_bad_method_output_names_the_frame(tmp_path):
    name = get_dataset(DATASET)[5].name  # the second frame of the second batch
    with pytest.raises(OodBenchError, match=f"frame '{name}': predicted class ids must fit"):
        run_one(tiny_loaded(), "unittest-bad-class-ids", DATASET,
                RunOptions(out=tmp_path, batch_size=4, limit=8))


def test_smiyc_splits_get_component_metrics(tmp_path):
    row = run_one(tiny_loaded(), "unittest-brightness", "smiyc-unittest",
                  RunOptions(out=tmp_path, batch_size=3))  # one batch of mixed image sizes
    assert row["f1_mean"] > 0.5 and row["auroc"] > 0.9
    store = ScoreStore(row["store"])
    pixel = PixelOODMetric()
    frames = list(store.read_frames(range(3)))
    assert [f.score.shape for f in frames] == [(64, 128), (64, 96), (64, 128)]
    for frame in frames:
        pixel.update(frame.score, frame.ood)
    component = ComponentMetric.from_pixel_metric(pixel, track="obstacle")
    for frame in frames:
        component.update(frame.score, frame.ood)
    expected = component.compute()
    for key in ("siou_gt", "ppv", "f1_mean"):
        assert row[key] == pytest.approx(expected[key], nan_ok=True), key
    assert np.isnan(row["miou"])  # no semantic labels in this split
