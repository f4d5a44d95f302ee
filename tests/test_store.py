"""The score store: journal → HDF5 commit, crash leftovers, locking, config checks, export."""

import json
import os

import h5py
import numpy as np
import pytest

from ood_bench.errors import DataNotFoundError, OodBenchError
from ood_bench.export import export_smiyc, smiyc_folder
from ood_bench.store import (
    ScoreStore,
    StoredFrame,
    StoreLockedError,
    StoreMismatchError,
    cast_scores,
    content_hash,
    verify_store,
)

CONFIG = {"model": {"name": "m"}, "method": {"name": "msp"},
          "dataset": {"name": "smiyc-ra21-val", "options": {}}, "seed": 0,
          "store_dtype": "float32"}


def make_frame(index, shape=(6, 8), labelled=True):
    rng = np.random.default_rng(index)
    ood = (rng.random(shape) < 0.3).astype(np.uint8)
    ood[0] = 255
    return StoredFrame(
        index=index, name=f"validation{index:04d}",
        score=rng.normal(size=shape).astype(np.float32),
        prediction=rng.integers(0, 19, shape).astype(np.uint8),
        ood=ood if labelled else None,
        semantic=rng.integers(0, 19, shape).astype(np.uint8) if labelled else None,
        domain="fog" if index % 2 else None,
    )


def fill(store, frames, dtype="float32", config=CONFIG, frames_total=10):
    with store.locked():
        store.prepare(config, frames_total, dtype)
        store.write_frames(frames)
        store.commit()


def assert_same(a: StoredFrame, b: StoredFrame):
    assert (a.index, a.name, a.domain) == (b.index, b.name, b.domain)
    for key in ("score", "prediction", "ood", "semantic"):
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y)


def test_commit_round_trip_layout_and_attributes(tmp_path):
    store = ScoreStore(tmp_path / "s.h5")
    frames = [make_frame(i, labelled=i != 2) for i in range(4)]
    fill(store, frames)
    assert not store.journal.exists()
    for want, got in zip(frames, store.read_frames(range(4)), strict=True):
        assert_same(want, got)
    assert store.frame_names() == {f.index: f.name for f in frames}
    with h5py.File(store.path, "r") as h5:  # the documented layout, read with plain h5py
        assert json.loads(h5.attrs["config"]) == CONFIG
        assert h5.attrs["format_version"] == 2
        assert h5.attrs["dataset_frames"] == 10 and h5.attrs["n_frames"] == 4
        assert h5.attrs["metric_spec_version"] == "1" and h5.attrs["package_version"]
        table = {key: h5["frames"][key][()] for key in h5["frames"]}
        assert table["index"].tolist() == [0, 1, 2, 3]
        assert table["shape"].tolist() == [[6, 8]] * 4
        assert table["offset"].tolist() == [0, 48, 96, 144]
        assert table["ood_offset"].tolist() == table["semantic_offset"].tolist() == [0, 48, -1, 96]
        assert h5["frames/name"].asstr()[1] == "validation0001"
        assert h5["frames/domain"].asstr()[1] == "fog" and h5["frames/domain"].asstr()[0] == ""
        assert h5["maps/score"].dtype == np.float32 and h5["maps/prediction"].dtype == np.uint8
        assert h5["maps/score"].shape == (4 * 48,) and h5["maps/ood"].shape == (3 * 48,)
        np.testing.assert_array_equal(h5["maps/score"][48:96].reshape(6, 8), frames[1].score)
        np.testing.assert_array_equal(h5["maps/semantic"][96:144].reshape(6, 8),
                                      frames[3].semantic)
        assert h5["frames/sha256"].asstr()[3] == frames[3].digest()
        assert h5.attrs["content_hash"] == content_hash(f.digest() for f in frames)
    assert verify_store(store) == []
    with h5py.File(store.path, "r+") as h5:  # damage one score value of frame 3
        h5["maps/score"][144] += 1
    assert verify_store(store) == ["frame 000003 (validation0003) does not match its sha256"]


def test_frames_read_back_in_any_order_across_commits(tmp_path, monkeypatch):
    """Frames committed by several runs (out of index order, some unlabelled, two sizes) read
    back exactly in any requested order, also when reads are cut into small runs."""
    import ood_bench.store as module

    store = ScoreStore(tmp_path / "s.h5")
    frames = {i: make_frame(i, shape=(6, 8) if i % 3 else (5, 7), labelled=i % 4 != 1)
              for i in range(9)}
    for part in ([4, 5, 6], [0, 1], [8, 2, 3, 7]):
        fill(store, [frames[i] for i in part])
    order = [7, 0, 1, 2, 8, 3, 6, 5, 4]
    for limit in (module._READ_PIXELS, 100):
        monkeypatch.setattr(module, "_READ_PIXELS", limit)
        for index, got in zip(order, store.read_frames(order), strict=True):
            assert_same(frames[index], got)
    assert store.header()["n_frames"] == 9 and verify_store(store) == []
    assert store.labelled_pixels() == {i: 48 if i % 3 else 35 for i in range(9) if i % 4 != 1}
    with pytest.raises(OodBenchError, match="has no frame 12"):
        list(store.read_frames([1, 12]))


def test_resume_adds_frames_and_content_hash_is_order_free(tmp_path):
    frames = [make_frame(i) for i in range(5)]
    one = ScoreStore(tmp_path / "one.h5")
    fill(one, frames)
    two = ScoreStore(tmp_path / "two.h5")
    fill(two, [frames[3], frames[0]])
    fill(two, [frames[4], frames[1], frames[2]])
    assert two.committed_indices() == set(range(5))
    assert two.header()["content_hash"] == one.header()["content_hash"]


def test_float16_store_is_compressed_and_refuses_overflow(tmp_path):
    store = ScoreStore(tmp_path / "h.h5")
    frame = make_frame(0)
    frame.score = cast_scores(frame.score, "float16", frame.name)
    fill(store, [frame], dtype="float16", config={**CONFIG, "store_dtype": "float16"})
    with h5py.File(store.path, "r") as h5:
        score = h5["maps/score"]
        assert score.dtype == np.float16 and score.compression == "gzip"
        assert h5["maps/ood"].compression is None  # small frames: uint8 maps stay plain
    with pytest.raises(OodBenchError, match="overflow float16"):
        cast_scores(np.array([1e6], np.float32), "float16", "f")
    batch = np.zeros((3, 2, 2), np.float32)
    batch[2, 1, 0], batch[0, 0, 0] = -7e4, np.inf  # frame a: inf stays inf, frame c overflows
    with pytest.raises(OodBenchError, match=r"frame 'c': scores up to 7e\+04 overflow"):
        cast_scores(batch, "float16", ["a", "b", "c"])


def test_uint8_maps_of_large_frames_are_compressed(tmp_path):
    store = ScoreStore(tmp_path / "big.h5")
    frame = make_frame(0, shape=(256, 256))
    fill(store, [frame])
    with h5py.File(store.path, "r") as h5:
        assert h5["maps/score"].compression is None
        assert {h5["maps"][key].compression for key in ("prediction", "ood", "semantic")} == {
            "gzip"}
    assert_same(frame, next(store.read_frames([0])))


def test_journal_frames_survive_and_count_as_finished(tmp_path):
    """A run killed before its commit leaves complete journal files only; they are reused."""
    store = ScoreStore(tmp_path / "s.h5")
    with store.locked():
        store.prepare(CONFIG, 10, "float32")
        store.write_frames([make_frame(0), make_frame(1)])
    # what a kill -9 mid-write leaves: temporaries beside the store and in the journal
    (store.journal / ".000002-000003.npz.abc.tmp.npz").write_bytes(b"partial")
    (tmp_path / ".s.h5.xyz.tmp.h5").write_bytes(b"partial hdf5")
    assert store.finished_indices() == {0, 1}
    with store.locked():  # taking the lock removes the leftovers
        assert not list(tmp_path.glob(".*tmp*")) and not list(store.journal.glob(".*"))
        store.prepare(CONFIG, 10, "float32")
        store.commit()
    assert store.committed_indices() == {0, 1}


def test_failed_commit_keeps_the_old_store_and_the_journal(tmp_path, monkeypatch):
    import ood_bench.store as module

    store = ScoreStore(tmp_path / "s.h5")
    fill(store, [make_frame(0)])
    before = store.path.read_bytes()
    with store.locked():
        store.prepare(CONFIG, 10, "float32")
        store.write_frames([make_frame(1)])
        store.write_frames([make_frame(2)])
        original = module._append_frames

        def crash_after_writing(*args):
            original(*args)
            raise RuntimeError("disk full")

        monkeypatch.setattr(module, "_append_frames", crash_after_writing)
        with pytest.raises(RuntimeError):
            store.commit()
        monkeypatch.setattr(module, "_append_frames", original)
        assert store.path.read_bytes() == before
        assert store.journal_indices() == {1, 2}
        store.commit()
    assert store.committed_indices() == {0, 1, 2}


def test_frame_in_store_and_journal_is_not_duplicated(tmp_path):
    """Killed between the rename and the journal cleanup: the journal copy is skipped."""
    store = ScoreStore(tmp_path / "s.h5")
    fill(store, [make_frame(0)])
    with store.locked():
        store.prepare(CONFIG, 10, "float32")
        store.write_frames([make_frame(0), make_frame(1)])
        assert store.commit() == 1
    with h5py.File(store.path, "r") as h5:
        assert h5["frames/index"][()].tolist() == [0, 1] and h5.attrs["n_frames"] == 2
        assert h5["maps/score"].shape == (2 * 48,)


def test_second_writer_is_refused(tmp_path):
    store = ScoreStore(tmp_path / "s.h5")
    with store.locked():
        with pytest.raises(StoreLockedError, match="in use by another oodbench run"):
            with ScoreStore(tmp_path / "s.h5").locked():
                pass
    with ScoreStore(tmp_path / "s.h5").locked():  # released afterwards
        pass


@pytest.mark.parametrize("change", ["config", "frames", "dtype"])
def test_mismatched_configuration_is_refused(tmp_path, change):
    store = ScoreStore(tmp_path / "s.h5")
    fill(store, [make_frame(0)])
    config = {**CONFIG, "method": {"name": "msp", "smoothing": True}}
    args = {"config": (config, 10, "float32"), "frames": (CONFIG, 11, "float32"),
            "dtype": (CONFIG, 10, "float16")}[change]
    with store.locked(), pytest.raises(StoreMismatchError, match="another configuration"):
        store.prepare(*args)


def test_mismatch_against_uncommitted_journal(tmp_path):
    store = ScoreStore(tmp_path / "s.h5")
    with store.locked():
        store.prepare(CONFIG, 10, "float32")
        store.write_frames([make_frame(0)])
    with store.locked(), pytest.raises(StoreMismatchError, match="seed: store has 0, this run 1"):
        store.prepare({**CONFIG, "seed": 1}, 10, "float32")


def test_unreadable_and_missing_stores(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(OodBenchError, match="not a readable HDF5 file"):
        ScoreStore(bad).header()
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = 1
    with pytest.raises(OodBenchError, match="not an oodbench score store"):
        ScoreStore(tmp_path / "other.h5").header()
    with pytest.raises(DataNotFoundError):
        list(ScoreStore(tmp_path / "none.h5").read_frames([0]))


def test_export_smiyc_layout(tmp_path):
    store = ScoreStore(tmp_path / "s.h5")
    frames = [make_frame(i) for i in range(3)]
    fill(store, frames)
    folder = export_smiyc(store.path, tmp_path / "out")
    assert folder == tmp_path / "out" / "msp" / "AnomalyTrack-all"
    assert sorted(p.name for p in folder.iterdir()) == [f"{f.name}.hdf5" for f in frames]
    with h5py.File(folder / "validation0001.hdf5", "r") as h5:  # what the toolkit reads
        assert list(h5) == ["value"] and not dict(h5.attrs)
        value = h5["value"]
        assert value.dtype == np.float16 and value.compression == "gzip"
        assert value.compression_opts == 9
        np.testing.assert_array_equal(value[()], frames[1].score.astype(np.float16))
    assert smiyc_folder("smiyc-ro21-test") == "ObstacleTrack-all"
    assert smiyc_folder("synth-roadanomaly") == "synth-roadanomaly"


@pytest.mark.parametrize("short_writes", [False, True])
def test_journal_batch_of_mixed_shapes_and_labels_reads_back_exactly(tmp_path, monkeypatch,
                                                                    short_writes):
    """One journal file: a JSON line, then each map kind's raw maps back to back; frames of
    other sizes and frames without labels in the same batch come back unchanged (same arrays,
    dtypes, digests), also when the system writes fewer buffers and bytes than asked."""
    if short_writes:
        import ood_bench.store as module

        monkeypatch.setattr(module, "_IOV_MAX", 3)
        calls = []

        def short_writev(fd, buffers):  # at most 3 buffers, at most 7 bytes per call
            assert len(buffers) <= 3
            calls.append(fd)
            return os.write(fd, b"".join(bytes(buffer) for buffer in buffers)[:7])

        monkeypatch.setattr(os, "writev", short_writev)
    store = ScoreStore(tmp_path / "j.h5")
    frames = [make_frame(0), make_frame(1, shape=(3, 5), labelled=False),
              make_frame(2, shape=(4, 2)), make_frame(3, labelled=False)]
    with store.locked():
        store.prepare(CONFIG, 10, "float32")
        store.write_frames(frames)
        (journal_file,) = store._journal_files()
        assert journal_file.name == "000000-000003.frames"
        header, raw = journal_file.read_bytes().split(b"\n", 1)
        header = json.loads(header)
        assert header["ood"] == {"present": [True, False, True, False], "dtype": "|u1"}
        pixels = 6 * 8 + 3 * 5 + 4 * 2 + 6 * 8
        assert len(raw) == pixels * (4 + 1) + (6 * 8 + 4 * 2) * 2
        np.testing.assert_array_equal(  # the first bytes: frame 0's scores
            np.frombuffer(raw, np.float32, 48).reshape(6, 8), frames[0].score)
        assert store.journal_indices() == {0, 1, 2, 3}
        for want, got in zip(frames, store._read_journal(journal_file), strict=True):
            assert_same(want, got)
            assert got.digest() == want.digest()
        unlabelled = [make_frame(4, labelled=False)]
        store.write_frames(unlabelled)  # no label maps at all in a batch
        assert store._read_journal(store._journal_files()[-1])[0].ood is None
        assert not short_writes or len(calls) >= journal_file.stat().st_size // 7
        journal_file.write_bytes(journal_file.read_bytes()[:-1])  # a damaged file is refused
        with pytest.raises(OodBenchError, match="unreadable journal file"):
            store._read_journal(journal_file)


def test_journal_refuses_maps_of_unexpected_dtypes(tmp_path):
    store = ScoreStore(tmp_path / "m.h5")
    half, wide = make_frame(1), make_frame(2)
    half.score = half.score.astype(np.float16)
    wide.ood = wide.ood.astype(np.int64)
    with store.locked():
        store.prepare(CONFIG, 10, "float32")
        with pytest.raises(OodBenchError, match="score maps must all have one dtype of float16, "
                                                "float32, float64, got float16, float32"):
            store.write_frames([make_frame(0), half])
        with pytest.raises(OodBenchError, match="ood maps must all have one dtype of uint8"):
            store.write_frames([wide])
        with pytest.raises(OodBenchError, match="prediction map has shape"):
            store.write_frames([StoredFrame(3, "x", np.zeros((2, 2), np.float32),
                                            np.zeros((2, 3), np.uint8))])


def test_scores_are_stored_in_the_store_dtype(tmp_path):
    """float64 scores are cast at commit (digest of the stored float32 values); scores that
    overflow a float16 store are refused and the store is left as it was."""
    store = ScoreStore(tmp_path / "c.h5")
    frame = make_frame(0)
    wide = StoredFrame(0, frame.name, frame.score.astype(np.float64), frame.prediction,
                       frame.ood, frame.semantic, frame.domain)
    fill(store, [wide])
    assert_same(frame, next(store.read_frames([0])))
    assert verify_store(store) == []
    half = ScoreStore(tmp_path / "h.h5")
    wide.score[0, 0] = 1e5
    with pytest.raises(OodBenchError, match="overflow float16"):
        fill(half, [wide], dtype="float16", config={**CONFIG, "store_dtype": "float16"})
    assert not half.path.exists() and half.journal_indices() == {0}


def test_stores_and_journals_of_format_1_are_refused(tmp_path):
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as h5:  # the format 1 layout: one group per frame
        h5.attrs.update({"format": "oodbench-score-store", "format_version": 1, "config": "{}"})
        h5["frames/000000/score"] = np.zeros((2, 2), np.float32)
    with pytest.raises(OodBenchError, match="has format version 1; this oodbench .* reads "
                                            "version 2"):
        ScoreStore(old).header()
    store = ScoreStore(tmp_path / "j.h5")
    store.journal.mkdir()
    (store.journal / "header.json").write_text(json.dumps(
        {"config": CONFIG, "dataset_frames": 10, "store_dtype": "float32"}))
    with store.locked(), pytest.raises(OodBenchError, match="written by another oodbench "
                                                            "version .format 1"):
        store.prepare(CONFIG, 10, "float32")


def test_bounded_groups_cut_at_the_limit_and_between_non_adjacent_items():
    from ood_bench.store import _bounded_groups

    sizes = {1: 3, 2: 3, 3: 5, 4: 1, 7: 1, 8: 9, 9: 1}
    # limit 6: 3+3 fits, +5 does not; 5+1 fits, +1 does not; 9 alone exceeds it: one item
    assert list(_bounded_groups(sizes, sizes.get, 6)) == [[1, 2], [3, 4], [7], [8], [9]]
    assert list(_bounded_groups(sizes, sizes.get, 100)) == [[1, 2, 3, 4, 7, 8, 9]]
    consecutive = list(_bounded_groups(sizes, sizes.get, 100, adjacent=lambda a, b: b == a + 1))
    assert consecutive == [[1, 2, 3, 4], [7, 8, 9]]
    assert list(_bounded_groups([], len, 1)) == []
