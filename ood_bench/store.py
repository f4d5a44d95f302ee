"""The score store: one HDF5 file per (model, method, dataset), resumable and crash-safe.

Layout of ``<model>__<method>__<dataset>.h5`` (format version 2)::

    /                      attrs: format, format_version, config (JSON), config_hash,
                           package_version, metric_spec_version, dataset_frames, store_dtype,
                           n_frames, content_hash, created, updated
    /frames/               the frame table: one row per stored frame, in the order of commit
        index              (N,) int64   frame index in the dataset
        name, domain       (N,) str     frame id, covariate condition ("" if none)
        sha256             (N,) str     digest of the frame's content (``StoredFrame.digest``)
        shape              (N, 2) int64 height and width of the frame's maps
        offset             (N,) int64   first element of the frame in maps/score and
                                        maps/prediction (both hold every frame)
        ood_offset, semantic_offset     first element in maps/ood, maps/semantic; -1: no labels
    /maps/                 each map kind: the frames' H×W maps flattened and back to back
        score              float32 (or float16, gzip) anomaly scores, higher = more anomalous
        prediction         uint8 predicted trainIds
        ood, semantic      uint8 labels as the adapter delivered them (labelled frames only)
                           (uint8 maps of frames of >= 65536 pixels are gzip-compressed)

A frame's scores are ``maps/score[offset : offset + height * width].reshape(height, width)``.
One stacked dataset per map kind (instead of HDF5 objects per frame) makes a commit a few large
appends and a metric pass a few large reads.

HDF5 is not crash-safe: a process killed while it writes can leave the whole file unreadable.
So the HDF5 file is never written in place. Each finished batch of frames first lands as one
``<first>-<last>.frames`` file in the journal folder ``<store>.journal/`` (written under a
temporary name, then renamed: a journal file is either complete or absent): one JSON line
(indices, names, domains, shapes, which maps are present, their dtypes), then each map kind's
maps back to back as raw bytes. ``commit()`` copies the store to a temporary file, appends the
journal's frames, and renames the copy over the store; only then are the journal files deleted.
A kill at any point leaves the previous store plus the journal, i.e. every finished frame, and a
rerun picks up from there. A frame is journalled once (reruns skip finished frames) and ranks of
a distributed run score disjoint batches, so journal files never collide and several ranks
write into the same journal safely.

A run holds an exclusive ``fcntl.flock`` on ``<store>.lock`` while it writes, so a second run on
the same store is refused instead of interleaving with the first.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ood_bench import __version__
from ood_bench.cache import config_hash
from ood_bench.errors import DataNotFoundError, OodBenchError
from ood_bench.io import atomic_path, atomic_write
from ood_bench.metrics.spec import METRIC_SPEC_VERSION

T = TypeVar("T")

FORMAT = "oodbench-score-store"
FORMAT_VERSION = 2
STORE_DTYPES = ("float32", "float16")
_LABELS = ("ood", "semantic")
_MAPS = ("score", "prediction", *_LABELS)
#: The frame-table column holding each map kind's position in its maps/ dataset.
_OFFSET_COLUMN = {"score": "offset", "prediction": "offset", "ood": "ood_offset",
                  "semantic": "semantic_offset"}
_GZIP_SCORES = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
_GZIP_MAPS = {"compression": "gzip", "compression_opts": 1}
#: uint8 maps are gzip-compressed when frames have at least this many pixels.
_COMPRESS_FROM_PIXELS = 1 << 16
#: HDF5 chunk length of the maps/ datasets: the first commit's pixels, within these bounds.
_MAP_CHUNK = (1 << 12, 1 << 18)
_TABLE_CHUNK = 1024
#: Journal bytes appended to the store at once, pixels read from it at once.
_COMMIT_BYTES = 64 << 20
_READ_PIXELS = 1 << 22
_READ_CACHE_BYTES = 16 << 20
_JOURNAL_SUFFIX = ".frames"
#: Buffers per ``os.writev`` call: the system's limit (POSIX guarantees 16; -1: no limit).
_IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
#: The dtypes journalled maps may have: scores, and predictions and labels.
_JOURNAL_DTYPES = {"score": {np.dtype(name) for name in ("float16", "float32", "float64")},
                   "labels": {np.dtype(np.uint8)}}
_HEADER = "header.json"


class StoreLockedError(OodBenchError):
    """Another process holds the store's lock (a second run on the same store)."""


class StoreMismatchError(OodBenchError):
    """The store was written with another configuration than the current run's."""


@dataclass
class StoredFrame:
    """One frame of a store: its scores, predicted trainIds and (if public) labels."""

    index: int
    name: str
    score: np.ndarray
    prediction: np.ndarray
    ood: np.ndarray | None = None
    semantic: np.ndarray | None = None
    domain: str | None = None

    def digest(self) -> str:
        """SHA-256 of everything the frame holds (index, name, arrays with dtype and shape)."""
        sha = hashlib.sha256(f"{self.index}\0{self.name}\0{self.domain}".encode())
        for array in (self.score, self.prediction, self.ood, self.semantic):
            if array is None:
                sha.update(b"\0none")
                continue
            array = np.ascontiguousarray(array)
            sha.update(f"\0{array.dtype.str}{array.shape}".encode())
            sha.update(array.data)
        return sha.hexdigest()


def store_filename(model: str, method: str, dataset: str) -> str:
    """``<model>__<method>__<dataset>.h5`` (registry names contain no ``__``)."""
    return f"{model}__{method}__{dataset}.h5"


def cast_scores(scores: np.ndarray, dtype: str, frame: str | Sequence[str]) -> np.ndarray:
    """Scores in the store's dtype; refuses values float16 cannot hold instead of storing inf.

    ``frame`` names the frame in errors; for a batch (scores of shape N×H×W), the N names.
    """
    if dtype not in STORE_DTYPES:
        raise OodBenchError(f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    with np.errstate(over="ignore"):
        cast = np.asarray(scores, dtype=dtype)
    if dtype == "float16" and not np.isfinite(cast).all():
        scores = np.asarray(scores)
        overflow = ~np.isfinite(cast) & np.isfinite(scores)
        if overflow.any():
            if not isinstance(frame, str):  # a batch: name its first frame that overflows
                first = int(np.argmax(overflow.reshape(len(frame), -1).any(axis=1)))
                frame, scores, overflow = frame[first], scores[first], overflow[first]
            raise OodBenchError(
                f"frame {frame!r}: scores up to {float(np.abs(scores[overflow]).max()):.4g} "
                "overflow float16 (max 65504); use --store-dtype float32"
            )
    return cast


def content_hash(digests: Iterable[str]) -> str:
    """SHA-256 over the per-frame digests in frame order: equal stores have equal hashes."""
    sha = hashlib.sha256()
    for digest in digests:
        sha.update(digest.encode())
    return sha.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _h5py():
    import h5py

    return h5py


class ScoreStore:
    """A store file plus its journal and lock (see the module docstring for the scheme)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.journal = self.path.with_name(self.path.name + ".journal")
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # ---- locking -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[ScoreStore]:
        """Hold the store's exclusive lock for the block; refuse if another run holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"score store {str(self.path)!r} is in use by another oodbench run (lock "
                f"{str(self.lock_path)!r}); wait for it to finish or use another --out"
            ) from None
        try:
            self._remove_stale_temporaries()
            yield self
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files a killed run left behind (only ever called under the lock)."""
        patterns = [(self.path.parent, f".{self.path.name}.*.tmp*")]
        if self.journal.is_dir():
            patterns.append((self.journal, ".*.tmp*"))
        for folder, pattern in patterns:
            for leftover in folder.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    # ---- header and configuration ------------------------------------------------------------
    def header(self) -> dict[str, Any] | None:
        """Root attributes of the committed store (``config`` parsed), or ``None`` if absent."""
        if not self.path.exists():
            return None
        with self.reader() as h5:
            attrs = dict(h5.attrs)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
        attrs["config"] = json.loads(attrs["config"])
        return attrs

    def _journal_header(self) -> dict[str, Any] | None:
        path = self.journal / _HEADER
        return json.loads(path.read_text()) if path.exists() else None

    def prepare(self, config: dict[str, Any], dataset_frames: int, store_dtype: str) -> None:
        """Check ``config`` against the store (or an uncommitted journal); record it if new.

        Call under :meth:`locked`. Raises :class:`StoreMismatchError` naming the differences.
        """
        if store_dtype not in STORE_DTYPES:
            raise OodBenchError(f"store dtype must be one of {', '.join(STORE_DTYPES)}, "
                                f"got {store_dtype!r}")
        journal = self._journal_header()
        if journal is not None and journal.get("format_version", 1) != FORMAT_VERSION:
            raise OodBenchError(
                f"the journal {str(self.journal)!r} was written by another oodbench version "
                f"(format {journal.get('format_version', 1)}, this one writes {FORMAT_VERSION});"
                " delete that folder to score its frames again"
            )
        wanted = {"config": config, "dataset_frames": dataset_frames, "store_dtype": store_dtype}
        existing = self.header() or journal
        if existing is not None:
            found = {key: existing.get(key) for key in wanted}
            differences = _differences(found, wanted)
            if differences:
                raise StoreMismatchError(
                    f"score store {str(self.path)!r} was written with another configuration "
                    f"({'; '.join(differences)}). Rerun with the original arguments, or use "
                    "another --out (or delete the store) to start afresh."
                )
        if journal is None:
            self.journal.mkdir(parents=True, exist_ok=True)
            header = {**wanted, "config_hash": config_hash(config), "created": _now(),
                      "format_version": FORMAT_VERSION}
            with atomic_write(self.journal / _HEADER, "w") as handle:
                json.dump(header, handle, indent=1, default=str)

    # ---- writing -----------------------------------------------------------------------------
    def write_frame(self, frame: StoredFrame) -> None:
        """Journal one finished frame atomically."""
        self.write_frames([frame])

    def write_frames(self, frames: Sequence[StoredFrame]) -> None:
        """Journal finished frames (one batch) as one file, atomically: all or none of them.

        The file is a JSON line describing the frames, then each map kind's maps back to back as
        raw bytes: one small write per map, nothing to encode.
        """
        if not frames:
            return
        header: dict[str, Any] = {"index": [int(f.index) for f in frames],
                                  "name": [f.name for f in frames],
                                  "domain": [f.domain or "" for f in frames],
                                  "shape": [_frame_shape(f) for f in frames]}
        maps = {}
        for key in _MAPS:
            arrays = [getattr(f, key) for f in frames]
            maps[key] = [np.ascontiguousarray(m) for m in arrays if m is not None]
            dtypes = {m.dtype for m in maps[key]}  # dtype objects: no per-array name lookup
            allowed = _JOURNAL_DTYPES["score" if key == "score" else "labels"]
            if len(dtypes) > 1 or not dtypes <= allowed:
                raise OodBenchError(
                    f"frames {frames[0].name!r}..{frames[-1].name!r}: {key} maps must all have "
                    f"one dtype of {', '.join(sorted(d.name for d in allowed))}, got "
                    f"{', '.join(sorted(d.name for d in dtypes))}"
                )
            header[key] = {"present": [m is not None for m in arrays],
                           "dtype": maps[key][0].dtype.str if maps[key] else "|u1"}
        name = f"{frames[0].index:06d}-{frames[-1].index:06d}{_JOURNAL_SUFFIX}"
        # "r+b", not "wb": the temporary file exists (empty), and truncating it would make ext4
        # flush it to disk on close (auto_da_alloc), so that deleting it at commit waits for IO
        with atomic_path(self.journal / name, suffix=_JOURNAL_SUFFIX) as tmp, \
                open(tmp, "r+b") as handle:
            _write_all(handle.fileno(), [json.dumps(header).encode() + b"\n",
                                         *(array for key in _MAPS for array in maps[key])])

    def _journal_files(self) -> list[Path]:
        if not self.journal.is_dir():
            return []
        return sorted(self.journal.glob(f"[0-9]*{_JOURNAL_SUFFIX}"))

    @staticmethod
    def _read_journal(path: Path, frames_only: bool = True) -> list[StoredFrame] | list[int]:
        """The frames of one journal file (or only their indices); their maps are read-only
        views of the file mapped into memory (journal files never change once written)."""
        try:
            with open(path, "rb") as handle:
                header = json.loads(handle.readline())
                if not frames_only:
                    return [int(i) for i in header["index"]]
                start = handle.tell()
                data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # no copy
            shapes = [tuple(shape) for shape in header["shape"]]
            maps, position = {}, start
            for key in _MAPS:
                dtype, maps[key] = np.dtype(header[key]["dtype"]), []
                for shape, present in zip(shapes, header[key]["present"], strict=True):
                    count = shape[0] * shape[1] if present else 0
                    maps[key].append(np.frombuffer(data, dtype, count, position).reshape(shape)
                                     if present else None)
                    position += count * dtype.itemsize
            if position != len(data):
                raise ValueError(f"{len(data) - start} bytes of maps, the header describes "
                                 f"{position - start}")
            return [
                StoredFrame(index=int(index), name=name, domain=domain or None,
                            **{key: maps[key][k] for key in _MAPS})
                for k, (index, name, domain) in enumerate(zip(
                    header["index"], header["name"], header["domain"], strict=True))
            ]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise OodBenchError(f"unreadable journal file {str(path)!r}: {error}") from None

    def journal_indices(self) -> set[int]:
        """Frame indices waiting in the journal (complete files only)."""
        return {i for path in self._journal_files()
                for i in self._read_journal(path, frames_only=False)}

    def committed_indices(self) -> set[int]:
        """Frame indices in the committed HDF5 store."""
        if not self.path.exists():
            return set()
        with self.reader() as h5:
            return set(_column(h5, "index").tolist())

    def finished_indices(self) -> set[int]:
        """Every finished frame: committed or journalled."""
        return self.committed_indices() | self.journal_indices()

    def commit(self) -> int:
        """Merge the journal into the store by copy-and-rename; return the frames added.

        Call under :meth:`locked`. The store is rewritten to a temporary copy and renamed, so a
        kill at any moment leaves either the old or the new store, never a damaged one; journal
        files are removed only after the rename (a frame found in both is skipped next time).
        """
        pending = self._journal_files()
        header = self._journal_header()
        if header is None:
            return 0
        added = 0
        if pending or not self.path.exists():
            with atomic_path(self.path, suffix=".h5") as tmp:
                if self.path.exists():
                    shutil.copyfile(self.path, tmp)
                with _h5py().File(tmp, "a") as h5:
                    if "format" not in h5.attrs:
                        _write_root(h5, header)
                    for group in _groups_by_size(pending, _COMMIT_BYTES):
                        frames = [frame for path in group for frame in self._read_journal(path)]
                        added += _append_frames(h5, frames, header["store_dtype"])
                    index, digests = _column(h5, "index"), _column(h5, "sha256")
                    h5.attrs["n_frames"] = index.size
                    h5.attrs["content_hash"] = content_hash(digests[np.argsort(index)])
                    h5.attrs["updated"] = _now()
                _fsync(tmp)
        for path in pending:
            path.unlink()
        (self.journal / _HEADER).unlink()
        with contextlib.suppress(OSError):
            self.journal.rmdir()
        return added

    # ---- reading -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def reader(self):
        """The committed store opened read-only; a clear error if it is missing, unreadable or
        of another format version."""
        h5py = _h5py()
        if not self.path.is_file():
            raise DataNotFoundError(f"score store {str(self.path)!r} does not exist")
        try:
            h5 = h5py.File(self.path, "r", rdcc_nbytes=_READ_CACHE_BYTES)
        except OSError as error:
            raise OodBenchError(
                f"score store {str(self.path)!r} is not a readable HDF5 file ({error})"
            ) from None
        with h5:
            if h5.attrs.get("format") != FORMAT:
                raise OodBenchError(
                    f"{str(self.path)!r} is not an oodbench score store (no format={FORMAT!r} "
                    "attribute)"
                )
            version = int(h5.attrs.get("format_version", 0))
            if version != FORMAT_VERSION:
                raise OodBenchError(
                    f"score store {str(self.path)!r} has format version {version}; this "
                    f"oodbench ({__version__}) reads version {FORMAT_VERSION}. Rerun the job "
                    "into another --out (or delete the store) to write it in the current format"
                )
            yield h5

    def frame_names(self) -> dict[int, str]:
        """Frame index -> frame id of every committed frame."""
        with self.reader() as h5:
            return dict(zip(_column(h5, "index").tolist(), _column(h5, "name").tolist(),
                            strict=True))

    def labelled_pixels(self) -> dict[int, int]:
        """Frame index -> pixel count of every committed frame that holds OOD labels."""
        with self.reader() as h5:
            index, shape = _column(h5, "index"), _column(h5, "shape")
            labelled = _column(h5, "ood_offset") >= 0
        return dict(zip(index[labelled].tolist(), shape[labelled].prod(axis=1).tolist(),
                        strict=True))

    def read_frames(self, indices: Iterable[int]) -> Iterator[StoredFrame]:
        """The committed frames ``indices`` in the given order (frames that lie back to back
        in the store are read together)."""
        indices = list(indices)
        with self.reader() as h5:
            table = _read_table(h5)
            row_of = {index: row for row, index in enumerate(table["index"].tolist())}
            missing = [index for index in indices if index not in row_of]
            if missing:
                raise OodBenchError(f"score store {str(self.path)!r} has no frame {missing[0]}")
            for rows in _runs([row_of[index] for index in indices], table["shape"]):
                yield from _read_rows(h5, table, rows)


def verify_store(store: ScoreStore) -> list[str]:
    """Integrity problems of a committed store: frames whose content no longer matches their
    recorded SHA-256, a wrong frame count or content hash (empty list: the store is intact)."""
    problems = []
    with store.reader() as h5:
        table = _read_table(h5)
        recorded = dict(zip(table["index"].tolist(), table["sha256"].tolist(), strict=True))
        order = sorted(recorded)
        digests = [recorded[index] for index in order]
        n_frames = int(h5.attrs.get("n_frames", -1))
        stored_hash = h5.attrs.get("content_hash")
    for frame in store.read_frames(order):
        if frame.digest() != recorded[frame.index]:
            problems.append(f"frame {frame.index:06d} ({frame.name}) does not match its sha256")
    if n_frames != len(order) or len(order) != table["index"].size:
        problems.append(f"n_frames is {n_frames}, the store holds {table['index'].size} rows "
                        f"for {len(order)} frames")
    if stored_hash != content_hash(digests):
        problems.append("content_hash does not match the frames")
    return problems


def _differences(found: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: store has X, this run Y`` for every leaf where two nested dicts differ."""
    out = []
    for key in sorted(set(found) | set(wanted)):
        a, b = found.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True,
                                                                      default=str):
            out.append(f"{prefix}{key}: store has {a!r}, this run {b!r}")
    return out


def _write_root(h5, header: dict[str, Any]) -> None:
    h5.attrs.update({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(header["config"], sort_keys=True, default=str),
        "config_hash": header["config_hash"],
        "package_version": __version__,
        "metric_spec_version": METRIC_SPEC_VERSION,
        "dataset_frames": int(header["dataset_frames"]),
        "store_dtype": header["store_dtype"],
        "created": header["created"],
    })


def _frame_shape(frame: StoredFrame) -> list[int]:
    """The frame's H×W, checked against every map it holds."""
    shape = np.shape(frame.score)
    for key in _MAPS:
        array = getattr(frame, key)
        if array is not None and (np.ndim(array) != 2 or np.shape(array) != shape):
            raise OodBenchError(f"frame {frame.name!r}: {key} map has shape {np.shape(array)}, "
                                f"expected the H×W of its score map {shape}")
    return [int(n) for n in shape]


def _table_columns() -> dict[str, tuple[Any, tuple[int, ...]]]:
    """The frame table's columns: dtype and per-row shape."""
    text = _h5py().string_dtype()
    return {"index": (np.int64, ()), "name": (text, ()), "domain": (text, ()),
            "sha256": (text, ()), "shape": (np.int64, (2,)), "offset": (np.int64, ()),
            "ood_offset": (np.int64, ()), "semantic_offset": (np.int64, ())}


def _create_layout(h5, store_dtype: str, first: list[StoredFrame]) -> None:
    """The empty frame table and map datasets, chunked for the sizes of the first frames."""
    table = h5.create_group("frames")
    for name, (dtype, shape) in _table_columns().items():
        table.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                             chunks=(_TABLE_CHUNK, *shape))
    pixels = [frame.score.size for frame in first]
    chunk = int(np.clip(1 << int(np.ceil(np.log2(max(sum(pixels), 1)))), *_MAP_CHUNK))
    maps = h5.create_group("maps")
    for key in _MAPS:
        if key == "score":
            dtype, options = store_dtype, _GZIP_SCORES if store_dtype == "float16" else {}
        else:
            dtype, options = np.uint8, _GZIP_MAPS if pixels[0] >= _COMPRESS_FROM_PIXELS else {}
        maps.create_dataset(key, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk,),
                            **options)


def _append(dataset, values: np.ndarray) -> int:
    """Append ``values`` to a resizable dataset; return where they start."""
    start = dataset.shape[0]
    if len(values):
        dataset.resize((start + len(values), *dataset.shape[1:]))
        dataset[start:] = values
    return start


def _append_frames(h5, frames: list[StoredFrame], store_dtype: str) -> int:
    """Append the frames not in the store yet (first copy wins) to the frame table and the
    map datasets; return how many were added."""
    known = set(_column(h5, "index").tolist()) if "frames" in h5 else set()
    new = []
    for frame in frames:
        if frame.index not in known:
            known.add(frame.index)
            new.append(frame)
    if not new:
        return 0
    if "frames" not in h5:
        _create_layout(h5, store_dtype, new)
    for frame in new:  # scores in the store's dtype before they are digested
        if frame.score.dtype != store_dtype:
            frame.score = cast_scores(frame.score, store_dtype, frame.name)
    columns: dict[str, Any] = {
        "index": np.array([frame.index for frame in new], np.int64),
        "name": np.array([frame.name for frame in new], object),
        "domain": np.array([frame.domain or "" for frame in new], object),
        "sha256": np.array([frame.digest() for frame in new], object),
        "shape": np.array([frame.score.shape for frame in new], np.int64).reshape(-1, 2),
    }
    for key in _MAPS:
        dataset = h5["maps"][key]
        arrays = [getattr(frame, key) for frame in new]
        present = [array for array in arrays if array is not None]
        start = _append(dataset, np.concatenate([a.ravel() for a in present]) if present
                        else np.zeros(0, dataset.dtype))
        ends = start + np.cumsum([array.size if array is not None else 0 for array in arrays])
        columns[_OFFSET_COLUMN[key]] = np.where([a is not None for a in arrays],
                                                ends - columns["shape"].prod(axis=1), -1)
    for name, values in columns.items():
        _append(h5["frames"][name], values)
    return len(new)


def _column(h5, name: str) -> np.ndarray:
    """One column of the frame table (strings as ``str``); empty if the store has no frame."""
    if "frames" not in h5:
        dtype, shape = _table_columns()[name]
        return np.zeros((0, *shape), object if dtype is not np.int64 else np.int64)
    dataset = h5["frames"][name]
    return dataset.asstr()[()] if dataset.dtype.kind == "O" else dataset[()]


def _read_table(h5) -> dict[str, np.ndarray]:
    return {name: _column(h5, name) for name in _table_columns()}


def _runs(rows: list[int], shapes: np.ndarray) -> Iterator[list[int]]:
    """Split table rows into runs of consecutive rows (maps back to back in the store) of at
    most ``_READ_PIXELS`` pixels (or one frame)."""
    return _bounded_groups(rows, lambda row: int(shapes[row][0] * shapes[row][1]),
                           _READ_PIXELS, adjacent=lambda previous, row: row == previous + 1)


def _read_rows(h5, table: dict[str, np.ndarray], rows: list[int]) -> list[StoredFrame]:
    """The frames of table ``rows``, each map kind read with one slice."""
    shapes = table["shape"][rows]
    sizes = shapes.prod(axis=1)
    maps: dict[str, list[np.ndarray | None]] = {}
    for key in _MAPS:
        starts = table[_OFFSET_COLUMN[key]][rows]
        present = starts >= 0
        maps[key] = [None] * len(rows)
        if present.any():
            first, end = starts[present].min(), (starts + sizes)[present].max()
            block = h5["maps"][key][first:end]
            for k in np.flatnonzero(present):
                begin = starts[k] - first
                maps[key][k] = block[begin:begin + sizes[k]].reshape(shapes[k])
    return [StoredFrame(index=int(table["index"][row]), name=str(table["name"][row]),
                        domain=str(table["domain"][row]) or None,
                        **{key: maps[key][k] for key in _MAPS})
            for k, row in enumerate(rows)]


def _groups_by_size(paths: list[Path], limit: int) -> Iterator[list[Path]]:
    """Consecutive groups of files of at most ``limit`` bytes together (or one file)."""
    return _bounded_groups(paths, lambda path: path.stat().st_size, limit)


def _bounded_groups(items: Iterable[T], size: Callable[[T], int], limit: int,
                    adjacent: Callable[[T, T], bool] = lambda previous, item: True,
                    ) -> Iterator[list[T]]:
    """Consecutive groups of ``items`` whose ``size`` adds up to at most ``limit`` (or one
    item), also cut between two items that are not ``adjacent``."""
    group: list[T] = []
    total = 0
    for item in items:
        weight = size(item)
        if group and (not adjacent(group[-1], item) or total + weight > limit):
            yield group
            group, total = [], 0
        group.append(item)
        total += weight
    if group:
        yield group


def _write_all(fd: int, buffers: list) -> None:
    """Write ``buffers`` (bytes, contiguous arrays) back to back with as few system calls as
    ``os.writev`` allows, resuming after a partial write."""
    views = [memoryview(buffer).cast("B") for buffer in buffers]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first:first + _IOV_MAX])
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
