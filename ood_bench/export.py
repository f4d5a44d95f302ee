"""Export a score store in the SegmentMeIfYouCan toolkit's submission layout.

The toolkit (``road-anomaly-benchmark``) reads one HDF5 file per frame,
``<out>/<method>/<dataset>/<frame id>.hdf5``, holding a single dataset ``value``: the H×W
anomaly score map as float16, gzip level 9, no attributes. Its datasets keep outputs under a
"persistence" name: every RoadAnomaly21 split under ``AnomalyTrack-all``, every RoadObstacle21
split under ``ObstacleTrack-all``, Lost and Found under ``LostAndFound-{train,test}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ood_bench.errors import OodBenchError
from ood_bench.io import atomic_path
from ood_bench.store import ScoreStore, cast_scores

#: oodbench dataset-name prefix → the toolkit's output folder name.
SMIYC_FOLDERS = {
    "smiyc-ra21": "AnomalyTrack-all",
    "smiyc-ro21": "ObstacleTrack-all",
    "lostandfound-test": "LostAndFound-test",
    "lostandfound-train": "LostAndFound-train",
}


def smiyc_folder(dataset: str) -> str:
    """The toolkit's output folder for ``dataset`` (its own name when the toolkit has none)."""
    for prefix, folder in SMIYC_FOLDERS.items():
        if dataset == prefix or dataset.startswith(prefix + "-"):
            return folder
    return dataset


def export_smiyc(store_path: str | Path, out: str | Path, method: str | None = None) -> Path:
    """Write every frame of a store as ``<out>/<method>/<dataset>/<frame>.hdf5``; return the
    frame folder. ``method`` overrides the stored method name (the submission's name)."""
    import h5py

    store = ScoreStore(store_path)
    header = store.header()
    if header is None:
        raise OodBenchError(f"score store {str(store_path)!r} does not exist")
    config = header["config"]
    method = method or config["method"]["name"]
    if not method or "/" in method or method.startswith("."):
        raise OodBenchError(f"method name {method!r} cannot be a folder name")
    folder = Path(out) / method / smiyc_folder(config["dataset"]["name"])
    for frame in store.read_frames(sorted(store.committed_indices())):
        if "/" in frame.name or frame.name.startswith("."):
            raise OodBenchError(f"frame name {frame.name!r} cannot be a file name")
        value = cast_scores(np.asarray(frame.score, np.float32), "float16", frame.name)
        with atomic_path(folder / f"{frame.name}.hdf5", suffix=".hdf5") as tmp:
            with h5py.File(tmp, "w") as h5:
                h5.create_dataset("value", data=value, compression="gzip", compression_opts=9)
    return folder
