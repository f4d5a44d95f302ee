"""The score store: one HDF5 file per (model, method, dataset), resumable and crash-safe.

Layout of ``<model>__<method>__<dataset>.h5``::

    /                      attrs: format, format_version, config (JSON), config_hash,
                           package_version, metric_spec_version, dataset_frames, store_dtype,
                           n_frames, content_hash, created, updated
    /frames/<index:06d>/   attrs: name, domain ("" if none), sha256 (of the frame's content)
        score              H×W float32 (or float16, gzip) anomaly scores, higher = more anomalous
        prediction         H×W uint8 predicted trainIds
        ood, semantic      H×W uint8 labels as the adapter delivered them (absent if unlabelled)
                           (uint8 maps of >= 65536 pixels are gzip-compressed)

HDF5 is not crash-safe: a process killed while it writes can leave the whole file unreadable.
So the HDF5 file is never written in place. Each finished batch of frames first lands as one
small ``<first>-<last>.npz`` in the journal folder ``<store>.journal/`` (written under a
temporary name, then renamed: a journal file is either complete or absent). ``commit()`` copies
the store to a temporary file, appends the journal's frames, and renames the copy over the store;
only then are the journal files deleted. A kill at any point leaves the previous store plus the
journal, i.e. every finished frame, and a rerun picks up from there. A frame is journalled once
(reruns skip finished frames) and ranks of a distributed run score disjoint batches, so journal
files never collide and several ranks write into the same journal safely.

A run holds an exclusive ``fcntl.flock`` on ``<store>.lock`` while it writes, so a second run on
the same store is refused instead of interleaving with the first.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ood_bench import __version__
from ood_bench.cache import config_hash
from ood_bench.errors import DataNotFoundError, OodBenchError
from ood_bench.io import atomic_path, atomic_write
from ood_bench.metrics.spec import METRIC_SPEC_VERSION

FORMAT = "oodbench-score-store"
FORMAT_VERSION = 1
STORE_DTYPES = ("float32", "float16")
_LABELS = ("ood", "semantic")
_MAPS = ("score", "prediction", *_LABELS)
_GZIP_SCORES = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
_GZIP_MAPS = {"compression": "gzip", "compression_opts": 1}
#: uint8 maps of at least this many pixels are gzip-compressed.
_COMPRESS_FROM_PIXELS = 1 << 16
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


def cast_scores(scores: np.ndarray, dtype: str, frame: str) -> np.ndarray:
    """Scores in the store's dtype; refuses values float16 cannot hold instead of storing inf."""
    if dtype not in STORE_DTYPES:
        raise OodBenchError(f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    with np.errstate(over="ignore"):
        cast = np.asarray(scores, dtype=dtype)
    if dtype == "float16" and not np.isfinite(cast).all() and np.isfinite(scores).all():
        peak = float(np.abs(scores).max())
        raise OodBenchError(
            f"frame {frame!r}: scores up to {peak:.4g} overflow float16 (max 65504); "
            "use --store-dtype float32"
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
        wanted = {"config": config, "dataset_frames": dataset_frames, "store_dtype": store_dtype}
        existing = self.header() or self._journal_header()
        if existing is not None:
            found = {key: existing.get(key) for key in wanted}
            differences = _differences(found, wanted)
            if differences:
                raise StoreMismatchError(
                    f"score store {str(self.path)!r} was written with another configuration "
                    f"({'; '.join(differences)}). Rerun with the original arguments, or use "
                    "another --out (or delete the store) to start afresh."
                )
        if self._journal_header() is None:
            self.journal.mkdir(parents=True, exist_ok=True)
            header = {**wanted, "config_hash": config_hash(config), "created": _now()}
            with atomic_write(self.journal / _HEADER, "w") as handle:
                json.dump(header, handle, indent=1, default=str)

    # ---- writing -----------------------------------------------------------------------------
    def write_frame(self, frame: StoredFrame) -> None:
        """Journal one finished frame atomically."""
        self.write_frames([frame])

    def write_frames(self, frames: Sequence[StoredFrame]) -> None:
        """Journal finished frames (one batch) as one file, atomically: all or none of them.

        Each map kind is stored as one flat array of the frames' maps back to back plus their
        shapes (a handful of zip members per batch instead of four per frame: cheap to write
        and to read back at commit).
        """
        if not frames:
            return
        arrays: dict[str, Any] = {
            "index": np.array([f.index for f in frames], np.int64),
            "name": np.array([f.name for f in frames], np.str_),
            "domain": np.array([f.domain or "" for f in frames], np.str_),
        }
        for key in _MAPS:
            maps = [getattr(f, key) for f in frames]
            present = [np.asarray(m) for m in maps if m is not None]
            if len({m.dtype for m in present}) > 1:
                raise OodBenchError(f"frames of one batch hold {key} maps of several dtypes")
            arrays[f"{key}_present"] = np.array([m is not None for m in maps])
            arrays[f"{key}_shape"] = np.array([m.shape for m in present] or np.zeros((0, 2)),
                                              np.int64)
            arrays[key] = (np.concatenate([m.ravel() for m in present]) if present
                           else np.zeros(0, np.uint8))
        name = f"{frames[0].index:06d}-{frames[-1].index:06d}.npz"
        with atomic_path(self.journal / name, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)

    def _journal_files(self) -> list[Path]:
        if not self.journal.is_dir():
            return []
        return sorted(self.journal.glob("[0-9]*.npz"))

    @staticmethod
    def _read_journal(path: Path, frames_only: bool = True) -> list[StoredFrame] | list[int]:
        """The frames of one journal file (or only their indices)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                indices = [int(i) for i in data["index"]]
                if not frames_only:
                    return indices
                maps = {key: _split_maps(data[key], data[f"{key}_shape"],
                                         data[f"{key}_present"]) for key in _MAPS}
                names, domains = data["name"], data["domain"]
                return [
                    StoredFrame(index=index, name=str(names[k]), domain=str(domains[k]) or None,
                                **{key: maps[key][k] for key in _MAPS})
                    for k, index in enumerate(indices)
                ]
        except (OSError, ValueError, KeyError) as error:
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
            return {int(key) for key in h5["frames"]} if "frames" in h5 else set()

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
        h5py = _h5py()
        added = 0
        if pending or not self.path.exists():
            with atomic_path(self.path, suffix=".h5") as tmp:
                if self.path.exists():
                    shutil.copyfile(self.path, tmp)
                with h5py.File(tmp, "a") as h5:
                    if "format" not in h5.attrs:
                        _write_root(h5, header)
                    frames = h5.require_group("frames")
                    written: dict[str, str] = {}  # digests of the frames added now
                    for path in pending:
                        for frame in self._read_journal(path):
                            key = f"{frame.index:06d}"
                            if key not in frames:
                                written[key] = _write_frame(frames, frame, header["store_dtype"])
                    added = len(written)
                    digests = [written.get(key) or frames[key].attrs["sha256"]
                               for key in sorted(frames)]
                    h5.attrs["n_frames"] = len(digests)
                    h5.attrs["content_hash"] = content_hash(digests)
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
        """The committed store opened read-only; a clear error if it is missing or unreadable."""
        h5py = _h5py()
        if not self.path.is_file():
            raise DataNotFoundError(f"score store {str(self.path)!r} does not exist")
        try:
            h5 = h5py.File(self.path, "r")
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
            yield h5

    def read_frames(self, indices: Iterable[int]) -> Iterator[StoredFrame]:
        """The committed frames ``indices`` in the given order."""
        with self.reader() as h5:
            frames = h5["frames"]
            for index in indices:
                key = f"{index:06d}"
                if key not in frames:
                    raise OodBenchError(f"score store {str(self.path)!r} has no frame {index}")
                yield _read_frame(frames[key])


def verify_store(store: ScoreStore) -> list[str]:
    """Integrity problems of a committed store: frames whose content no longer matches their
    recorded SHA-256, a wrong frame count or content hash (empty list: the store is intact)."""
    problems, digests = [], []
    with store.reader() as h5:
        frames = h5["frames"] if "frames" in h5 else {}
        keys = sorted(frames)
        for key in keys:
            frame = _read_frame(frames[key])
            digest = frame.digest()
            if digest != frames[key].attrs["sha256"]:
                problems.append(f"frame {key} ({frame.name}) does not match its sha256")
            digests.append(frames[key].attrs["sha256"])
        if int(h5.attrs.get("n_frames", -1)) != len(keys):
            problems.append(f"n_frames is {h5.attrs.get('n_frames')}, the store holds {len(keys)}")
        if h5.attrs.get("content_hash") != content_hash(digests):
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


def _write_frame(frames, frame: StoredFrame, store_dtype: str) -> str:
    """Add ``frame`` to the ``/frames`` group; return its digest (its ``sha256`` attribute)."""
    group = frames.create_group(f"{frame.index:06d}")
    score_options = _GZIP_SCORES if store_dtype == "float16" else {}
    _create_dataset(group, "score", frame.score.astype(store_dtype, copy=False), score_options)
    # small maps are stored contiguous: chunked compression costs more than it saves there
    map_options = _GZIP_MAPS if frame.prediction.size >= _COMPRESS_FROM_PIXELS else {}
    _create_dataset(group, "prediction", frame.prediction, map_options)
    for key in _LABELS:
        if getattr(frame, key) is not None:
            _create_dataset(group, key, getattr(frame, key), map_options)
    digest = frame.digest()
    group.attrs.update({"name": frame.name, "domain": frame.domain or "", "sha256": digest})
    return digest


def _create_dataset(group, name: str, data: np.ndarray, options: dict[str, Any]) -> None:
    """``group.create_dataset(name, data=data, **options)``; a plain contiguous dataset is made
    with h5py's low-level calls (the same file objects: contiguous layout, no time stamps,
    default fill), which costs about half as much per frame as the high-level call."""
    if options:
        group.create_dataset(name, data=data, **options)
        return
    h5py = _h5py()
    data = np.ascontiguousarray(data)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dataset = h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(data.dtype),
                              h5py.h5s.create_simple(data.shape), dcpl=dcpl)
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, data)


def _split_maps(flat: np.ndarray, shapes: np.ndarray,
                present: np.ndarray) -> list[np.ndarray | None]:
    """Per-frame maps (``None`` where absent) of a journal's flat array and their shapes."""
    sizes = [int(np.prod(shape)) for shape in shapes]
    ends = np.cumsum(sizes)
    pieces = iter(flat[end - size:end].reshape(shape)
                  for size, end, shape in zip(sizes, ends, shapes, strict=True))
    return [next(pieces) if has else None for has in present]


def _read_frame(group) -> StoredFrame:
    attrs = group.attrs
    return StoredFrame(
        index=int(group.name.rsplit("/", 1)[-1]), name=str(attrs["name"]),
        score=group["score"][()], prediction=group["prediction"][()],
        ood=group["ood"][()] if "ood" in group else None,
        semantic=group["semantic"][()] if "semantic" in group else None,
        domain=str(attrs["domain"]) or None,
    )


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
