"""The benchmark pipeline: dataset → model → method → score store → metrics → a results row.

:func:`run_grid` runs every (method, dataset) pair of a grid with one model; :func:`run_one` runs
one pair; :func:`evaluate_store` recomputes the metrics of a finished store without the model
(``oodbench eval``). A run is resumable: frames already in the store (or its journal) are skipped,
and the metrics are always computed from the stored frames (as they are written, or read back
from the store), so an interrupted-and-resumed run, a run sharded over K processes and
``oodbench eval`` all give the same numbers, bit for bit.

Scoring: frames are scored in fixed batches ``[0, B), [B, 2B), ...`` (``B`` = batch size); a
resumed run rescores the whole batch of a missing frame and a distributed run gives rank r the
pending batches r, r + K, ..., so every frame is computed in the same batch as in an
uninterrupted one-process run (bit-identical scores, given the same per-process thread count:
CPU kernels split work by thread count; torchrun sets ``OMP_NUM_THREADS=1``).

Metric pass: the evaluated frames are cut into fixed chunks of :data:`CHUNK_FRAMES` consecutive
frames; each chunk's metric state is built frame by frame (while scoring when the process
scored the whole chunk, else from the store), and the chunk states are merged in chunk order.
Chunks are spread over the ranks of a distributed run (rank r takes chunks r, r + K, ...) and
their states gathered, so the merge order, and hence every floating-point sum and every
binned-histogram re-layout, is the same for any number of processes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ood_bench import __version__
from ood_bench.cache import config_hash
from ood_bench.distributed import Dist, device_for, shard
from ood_bench.errors import DataNotFoundError, OodBenchError
from ood_bench.metrics.spec import METRIC_SPEC_VERSION
from ood_bench.store import STORE_DTYPES, ScoreStore, StoredFrame, cast_scores, store_filename

#: Frames per metric chunk (see the module docstring): fixes the merge order of metric states.
CHUNK_FRAMES = 64
#: Frames read back from a store per :meth:`ChunkState.add` (bounds memory).
FRAMES_PER_UPDATE = 8
#: Memory budget of a chunk's binned ROC state per pixel of a chunk, and its bounds in bytes
#: (see :class:`ChunkState`).
CHUNK_BYTES_PER_PIXEL = 32
CHUNK_STATE_BYTES = (4 << 20, 64 << 20)
#: The architecture of the synthetic benchmark's base model.
SYNTHETIC_MODEL = "deeplabv3plus-small"
SYNTHETIC_SOURCE = "synthetic-base"
#: Training datasets that fit-requiring methods use, per model source.
FIT_DATASETS = {SYNTHETIC_SOURCE: "synth-cityscapes", "checkpoint": "cityscapes-train"}
NUM_CLASSES = 19
#: Pixel OOD metrics, segmentation metrics and SMIYC component metrics of a results row.
PIXEL_KEYS = ("auroc", "ap", "fpr95")
SEGMENTATION_KEYS = ("miou", "macc")
COMPONENT_KEYS = ("siou_gt", "ppv", "f1_mean")


def is_synthetic(dataset: str) -> bool:
    return dataset.startswith("synth-")


def component_track(dataset: str) -> str | None:
    """The SMIYC track (``anomaly``/``obstacle``) of an ``smiyc-*`` dataset, else ``None``."""
    if not dataset.startswith("smiyc-"):
        return None
    from ood_bench.adapters.base import DATASETS

    return DATASETS.defaults(dataset).get("track", "anomaly")


@dataclass
class RunOptions:
    """How to run (none of these change the numbers, except ``seed`` and ``store_dtype``)."""

    out: Path = Path("runs")
    device: str = "cpu"
    batch_size: int = 8
    workers: int = 0
    seed: int = 0
    store_dtype: str = "float32"
    limit: int | None = None
    data_root: Path | None = None
    fit_dataset: str | None = None
    fit_frames: int | None = None
    fit_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.store_dtype not in STORE_DTYPES:
            raise OodBenchError(f"--store-dtype must be one of {', '.join(STORE_DTYPES)}, "
                                f"got {self.store_dtype!r}")
        if self.batch_size < 1:
            raise OodBenchError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise OodBenchError("--workers must be >= 0")
        if self.limit is not None and self.limit < 1:
            raise OodBenchError(f"--limit must be >= 1, got {self.limit}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise OodBenchError("--device cuda: no CUDA device is available (use --device cpu)")
        if self.data_root is not None and not Path(self.data_root).is_dir():
            raise DataNotFoundError(f"--data-root {str(self.data_root)!r} is not a folder")


@dataclass
class LoadedModel:
    """A model ready to score, with what identifies its weights in store configs."""

    name: str
    module: nn.Module
    source: str
    options: dict[str, Any] = field(default_factory=dict)
    fit_dataset: str = FIT_DATASETS["checkpoint"]

    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """Architecture, options and a digest of the weights (what a store must match)."""
        from ood_bench.baselines.base import model_fingerprint

        return {"name": self.name, "options": self.options,
                "weights_sha256": model_fingerprint(self.module)}


def load_run_model(
    name: str | None, checkpoint: Path | None, options: dict[str, Any], dataset: str
) -> LoadedModel:
    """The model a run uses on ``dataset``: ``checkpoint`` loaded into ``name``, or (synthetic
    dataset, no checkpoint) the synthetic base model of architecture ``name`` (default
    :data:`SYNTHETIC_MODEL`; one per entry of ``train.SHIPPED_NAMES``), trained and cached on
    first use when its shipped weights are stale."""
    if checkpoint is None:
        if not is_synthetic(dataset):
            raise OodBenchError(
                f"dataset {dataset!r} needs trained weights: pass --checkpoint FILE and --model "
                "NAME (only synth-* datasets default to the synthetic base model)"
            )
        from ood_bench.train import DEFAULT_MODEL_OPTIONS, SHIPPED_NAMES, load_synthetic_base_model

        name = name or SYNTHETIC_MODEL
        if name not in SHIPPED_NAMES or options:
            raise OodBenchError(
                f"without --checkpoint a synthetic base model ({', '.join(SHIPPED_NAMES)}) is "
                f"used, without model options; pass --checkpoint to run --model {name}"
                + (f" with options {options}" if options else "")
            )
        module = load_synthetic_base_model(name)
        return LoadedModel(name, module, SYNTHETIC_SOURCE,
                           dict(DEFAULT_MODEL_OPTIONS.get(name, {})),
                           FIT_DATASETS[SYNTHETIC_SOURCE])
    if name is None:
        raise OodBenchError("--checkpoint needs --model NAME (the architecture to load it into)")
    if not Path(checkpoint).is_file():
        raise DataNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist")
    from ood_bench.models import load_model

    module = load_model(name, checkpoint, **options)
    return LoadedModel(name, module, str(checkpoint), dict(options))


def _as_list(batch: list) -> list:
    return batch


class _IndexedFrames(torch.utils.data.Dataset):
    """``(index, sample)`` pairs of a dataset (the DataLoader's batch sampler picks indices)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]


def _same_size_groups(batch: list) -> Iterator[list]:
    """Split a batch into runs of frames with equal image size (stacked into one tensor)."""
    group: list = []
    for item in batch:
        if group and item[1].image.shape != group[0][1].image.shape:
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def pending_batches(total: int, finished: set[int], batch_size: int) -> list[list[int]]:
    """The fixed batches ``[0, B), [B, 2B), ...`` of frames ``0..total-1`` that hold an
    unfinished frame. A frame is always scored in the same batch, whatever was finished
    before and however batches are spread over ranks, so its scores are bit-identical."""
    blocks = [list(range(i, min(i + batch_size, total))) for i in range(0, total, batch_size)]
    return [block for block in blocks if not finished.issuperset(block)]


def score_frames(
    store: ScoreStore,
    dataset,
    batches: Sequence[Sequence[int]],
    finished: set[int],
    method,
    model: nn.Module,
    options: RunOptions,
    device: str,
    advance: Callable[[int], None] = lambda n: None,
    collector: ChunkCollector | None = None,
) -> None:
    """Score ``batches`` of ``dataset`` and journal each frame not in ``finished``; frames also
    go to ``collector`` (metric states built while scoring)."""
    from ood_bench.models import normalize_images

    loader = torch.utils.data.DataLoader(
        _IndexedFrames(dataset), batch_sampler=[list(b) for b in batches],
        num_workers=options.workers, collate_fn=_as_list,
    )
    for batch in loader:
        for group in _same_size_groups(batch):
            images = normalize_images(np.stack([sample.image for _, sample in group]), device)
            frames = _stored_frames(group, method.score(model, images), finished, options)
            store.write_frames(frames)
            if collector is not None:
                collector.add(frames)
            advance(len(frames))


def _stored_frames(group: list, output, finished: set[int],
                   options: RunOptions) -> list[StoredFrame]:
    """The frames of a scored same-size group that are not ``finished``: scores in the store
    dtype, predictions as uint8 (checked and converted once for the whole group)."""
    names = [sample.name for _, sample in group]
    expected = (len(group), *group[0][1].image.shape[:2])
    scores = output.scores.detach().float().cpu().numpy()
    predictions = output.prediction.detach().cpu().numpy()
    if scores.shape != expected or predictions.shape != expected:
        raise OodBenchError(
            f"frames {names[0]!r}..{names[-1]!r}: method output {scores.shape} / "
            f"{predictions.shape} does not match the images (N×H×W {expected})"
        )
    if predictions.min() < 0 or predictions.max() > 254:
        bad = ((predictions < 0) | (predictions > 254)).reshape(len(group), -1).any(axis=1)
        raise OodBenchError(f"frame {names[int(np.argmax(bad))]!r}: predicted class ids must "
                            "fit in 0..254")
    scores = cast_scores(scores, options.store_dtype, names)
    predictions = predictions.astype(np.uint8)
    return [StoredFrame(index, sample.name, score, prediction, sample.ood, sample.semantic,
                        sample.domain)
            for (index, sample), score, prediction in zip(group, scores, predictions, strict=True)
            if index not in finished]


# ---- metrics from a store --------------------------------------------------------------------
def _chunks(indices: Sequence[int]) -> list[list[int]]:
    return [list(indices[i:i + CHUNK_FRAMES]) for i in range(0, len(indices), CHUNK_FRAMES)]


def _reduce_chunks(dist: Dist, chunks: list, build: Callable[[int, list], Any],
                   merge: Callable[[Any], None]) -> None:
    """Build chunk states round-robin over the ranks, gather them, merge in chunk order."""
    for start in range(0, len(chunks), dist.world_size):
        mine = start + dist.rank
        state = build(mine, chunks[mine]) if mine < len(chunks) else None
        for gathered in dist.gather(state):
            if gathered is not None:
                merge(gathered)


def pixel_state_bytes(frame_pixels: int) -> int:
    """Memory budget of a binned ROC state for frames of ``frame_pixels`` pixels:
    :data:`CHUNK_BYTES_PER_PIXEL` × pixels × :data:`CHUNK_FRAMES`, within
    :data:`CHUNK_STATE_BYTES` -- large enough to keep the frames' resolution, small enough that
    tiny frames do not pay for (allocating and re-laying out) a 64 MiB state."""
    return int(np.clip(CHUNK_BYTES_PER_PIXEL * frame_pixels * CHUNK_FRAMES, *CHUNK_STATE_BYTES))


class ChunkState:
    """Pixel OOD and segmentation state of one chunk, fed its frames in index order.

    The binned ROC state's memory budget is :func:`pixel_state_bytes` of the chunk's first
    labelled frame.
    """

    def __init__(self) -> None:
        from ood_bench.metrics.segmentation import SegmentationMetric

        self.pixel = None
        self.segmentation = SegmentationMetric(NUM_CLASSES, ignore_index=255)
        self.labelled = self.segmented = 0

    def add(self, frames: Sequence[StoredFrame]) -> None:
        """Add consecutive frames of the chunk: the ROC state frame by frame (its binning
        follows the order of updates), the confusion matrix once for all of them (a sum)."""
        from ood_bench.metrics.pixel import PixelOODMetric

        for frame in frames:
            if frame.ood is None:
                continue
            if self.pixel is None:
                self.pixel = PixelOODMetric(max_state_bytes=pixel_state_bytes(frame.ood.size))
            self.pixel.update(frame.score, frame.ood, frame=frame.name)
            self.labelled += 1
        segmented = [frame for frame in frames if frame.semantic is not None]
        if segmented:
            semantic = np.concatenate([frame.semantic.ravel() for frame in segmented])
            self.segmentation.update(
                np.concatenate([frame.prediction.ravel() for frame in segmented]),
                np.where(semantic < NUM_CLASSES, semantic, 255))
            self.segmented += len(segmented)

    def counts(self) -> dict[str, int]:
        """Frames with OOD labels and with semantic labels; OOD and in-distribution pixels."""
        pos, neg = (0, 0) if self.pixel is None else self.pixel.pool_sizes()
        return {"labelled": self.labelled, "segmented": self.segmented, "pos": pos, "neg": neg}

    def state_dict(self) -> dict[str, Any]:
        """The state as plain data, for gathering across processes."""
        pixel = None if self.pixel is None else self.pixel.state_dict()
        return {"pixel": pixel, "segmentation": self.segmentation.state_dict(),
                "counts": self.counts()}


class ChunkCollector:
    """Chunk states built on the fly from frames as they are scored (no re-read from disk).

    Only chunks whose every frame is scored here, in order, are kept; the metric pass reads
    the others from the store. Both give the same state (the frames are the stored ones).
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.ready: dict[int, ChunkState] = {}
        self._open: dict[int, tuple[ChunkState, int]] = {}  # chunk -> (state, next index)

    def add(self, frames: Sequence[StoredFrame]) -> None:
        """Add a scored batch (frames in index order)."""
        for chunk, run in itertools.groupby(frames, lambda frame: frame.index // CHUNK_FRAMES):
            run = list(run)
            state, expected = self._open.pop(chunk, (None, chunk * CHUNK_FRAMES))
            if [frame.index for frame in run] != list(range(expected, expected + len(run))):
                continue  # a frame of this chunk was scored elsewhere
            state = state or ChunkState()
            state.add(run)
            end = min((chunk + 1) * CHUNK_FRAMES, self.total)
            if run[-1].index + 1 == end:
                self.ready[chunk] = state
            else:
                self._open[chunk] = (state, run[-1].index + 1)


def _pixel_chunk(store: ScoreStore, indices: list[int]) -> ChunkState:
    state = ChunkState()
    frames = store.read_frames(indices)
    for _ in range(0, len(indices), FRAMES_PER_UPDATE):
        state.add(list(itertools.islice(frames, FRAMES_PER_UPDATE)))
    return state


def _component_chunk(store: ScoreStore, indices: list[int], settings: dict) -> dict[str, Any]:
    from ood_bench.metrics.component import ComponentMetric

    metric = ComponentMetric(**settings)
    for frame in store.read_frames(indices):
        if frame.ood is not None:
            metric.update(frame.score, frame.ood, frame=frame.name)
    return metric.state_dict()


def compute_metrics(
    store: ScoreStore, indices: Sequence[int], track: str | None, dist: Dist | None = None,
    ready: dict[int, ChunkState] | None = None,
) -> dict[str, Any]:
    """Pixel OOD, segmentation and (with ``track``) SMIYC component metrics of stored frames.

    Fractions in [0, 1]; NaN where the frames hold no labels to compute a metric from
    (``n_labelled`` counts frames with OOD labels). ``ready`` holds chunk states already built
    while scoring (:class:`ChunkCollector`), keyed by chunk number.

    The run's binned ROC state gets the budget of the largest chunk state (that of the largest
    labelled frame): a bin merged in a chunk is never split again, so on any page the run's
    resolution is at most the coarsest chunk's there, and a larger state would only add
    allocation and re-layout time (it helps only when chunks' scores fall on different pages).
    """
    from ood_bench.metrics.component import ComponentMetric, best_f1_threshold
    from ood_bench.metrics.pixel import PixelOODMetric
    from ood_bench.metrics.segmentation import SegmentationMetric

    dist = dist or Dist()
    sizes = store.labelled_pixels() if indices else {}
    largest = max((sizes.get(index, 0) for index in indices), default=0)
    pixel = PixelOODMetric(max_state_bytes=pixel_state_bytes(largest))
    segmentation = SegmentationMetric(NUM_CLASSES, ignore_index=255)
    counts = {"labelled": 0, "segmented": 0, "pos": 0, "neg": 0}

    def build(number: int, chunk: list[int]) -> ChunkState | dict[str, Any]:
        state = ready.get(number) or _pixel_chunk(store, chunk)
        return state if dist.world_size == 1 else state.state_dict()  # plain data to gather

    def merge(state: ChunkState | dict[str, Any]) -> None:
        if isinstance(state, ChunkState):  # built here: merged page by page
            if state.pixel is not None:
                pixel.merge(state.pixel)
            segmentation.merge(state.segmentation)
            part = state.counts()
        else:
            if state["pixel"] is not None:
                pixel.load_state_dict(state["pixel"], add=True)
            segmentation.merge(_segmentation_from(state["segmentation"]))
            part = state["counts"]
        for key in counts:
            counts[key] += part[key]

    chunks = _chunks(indices)
    ready = ready or {}
    _reduce_chunks(dist, chunks, build, merge)
    nan = float("nan")
    result: dict[str, Any] = dict.fromkeys((*PIXEL_KEYS, *SEGMENTATION_KEYS), nan)
    has_both = counts["pos"] > 0 and counts["neg"] > 0  # else AUROC etc. are undefined
    if has_both:
        pixel_result = pixel.compute()
        result.update({key: float(pixel_result[key]) for key in PIXEL_KEYS})
        result["error_bound"] = max(float(v) for v in pixel_result["error_bound"].values())
    if counts["segmented"] and segmentation.confusion_matrix.sum():
        seg_result = segmentation.compute()
        result.update({key: float(seg_result[key]) for key in SEGMENTATION_KEYS})
    if track is not None:
        result.update(dict.fromkeys(COMPONENT_KEYS, nan))
        if has_both:
            threshold, _ = best_f1_threshold(pixel)
            settings = {"threshold": threshold, "track": track, "inclusive": True}
            component = ComponentMetric(**settings)
            _reduce_chunks(dist, chunks,
                           lambda _, chunk: _component_chunk(store, chunk, settings),
                           lambda s: component.merge(_component_from(s, settings)))
            comp_result = component.compute()
            result.update({key: float(comp_result[key]) for key in COMPONENT_KEYS})
            result["component_threshold"] = threshold
    result.update(n_frames=len(indices), n_labelled=counts["labelled"])
    return result


def _segmentation_from(state: dict[str, Any]):
    from ood_bench.metrics.segmentation import SegmentationMetric

    metric = SegmentationMetric(state["num_classes"], ignore_index=state["ignore_index"])
    metric.load_state_dict(state)
    return metric


def _component_from(state: dict[str, Any], settings: dict[str, Any]):
    from ood_bench.metrics.component import ComponentMetric

    metric = ComponentMetric(**settings)
    metric.load_state_dict(state)
    return metric


def evaluate_store(path: str | Path, dist: Dist | None = None) -> dict[str, Any]:
    """A results row recomputed from a committed store alone (no model, no dataset files)."""
    store = ScoreStore(path)
    header = store.header()
    if header is None:
        raise DataNotFoundError(f"score store {str(path)!r} does not exist")
    config = header["config"]
    indices = sorted(store.committed_indices())
    started = _now()
    metrics = compute_metrics(store, indices, component_track(config["dataset"]["name"]), dist)
    return _row(config, header.get("config_hash", config_hash(config)), metrics, store.path,
                started, dataset_frames=int(header["dataset_frames"]))


# ---- the pipeline ----------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _row(config: dict[str, Any], digest: str, metrics: dict[str, Any], path: Path,
         started: str, dataset_frames: int) -> dict[str, Any]:
    """One tidy results row (metric fractions, provenance and timing)."""
    return {
        "model": config["model"]["name"],
        "method": config["method"]["name"],
        "dataset": config["dataset"]["name"],
        **metrics,
        "dataset_frames": dataset_frames,
        "seed": config["seed"],
        "store_dtype": config["store_dtype"],
        "metric_spec": METRIC_SPEC_VERSION,
        "config_hash": digest,
        "version": __version__,
        "started": started,
        "finished": _now(),
        "store": str(path),
    }


@dataclass
class Progress:
    """Callbacks the CLI passes to show progress (all optional)."""

    start: Callable[[str, int], None] = lambda description, total: None
    advance: Callable[[int], None] = lambda n: None


def run_one(
    loaded: LoadedModel,
    method_name: str,
    dataset_name: str,
    options: RunOptions,
    *,
    method_options: dict[str, Any] | None = None,
    dataset_options: dict[str, Any] | None = None,
    dist: Dist | None = None,
    progress: Progress | None = None,
    fitted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one (model, method, dataset): resume the store, score missing frames, evaluate.

    ``fitted`` caches fitted methods by name across calls (a grid fits each method once).
    Returns the results row (also written on rank 0 to ``results.jsonl``/``.csv``).
    """
    from ood_bench.adapters import get_dataset
    from ood_bench.baselines import get_method
    from ood_bench.results import append_result

    dist = dist or Dist()
    progress = progress or _QUIET
    method_options = dict(method_options or {})
    dataset_options = dict(dataset_options or {})
    started = _now()
    dataset = get_dataset(dataset_name, data_root=options.data_root, **dataset_options)
    fitted = {} if fitted is None else fitted
    fresh = get_method(method_name, **method_options)  # its config is the unfitted one
    method = fitted.get(method_name, fresh)
    fit = {"dataset": options.fit_dataset or loaded.fit_dataset, "frames": options.fit_frames,
           "options": options.fit_options}
    config = {
        "model": loaded.identity,
        "method": {**fresh.config(), "name": method_name,
                   "fit": fit if method.requires_fit else None},
        "dataset": {"name": dataset_name, "options": dataset_options},
        "seed": options.seed,
        "store_dtype": options.store_dtype,
    }
    store = ScoreStore(options.out / "stores" / store_filename(loaded.name, method_name,
                                                               dataset_name))
    total = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    indices = list(range(total))
    device = device_for(options.device, dist)
    with _rank0_lock(store, dist):
        error = None
        if dist.is_main:
            try:
                store.prepare(config, len(dataset), options.store_dtype)
            except OodBenchError as caught:
                error = caught
        dist.check(error)
        finished = dist.broadcast(store.finished_indices() if dist.is_main else None)
        batches = pending_batches(total, finished, options.batch_size)
        collector = ChunkCollector(total)
        mine = shard(batches, dist.rank, dist.world_size)
        todo = sum(1 for batch in mine for index in batch if index not in finished)
        if batches:
            model = loaded.module.to(device).eval()
            if method.requires_fit and method_name not in fitted:
                with dist.main_first():
                    _fit(method, model, fit, options, device, show=dist.is_main and
                         progress is not _QUIET)
                fitted[method_name] = method
            _seed(options.seed)
            progress.start(f"{method_name} on {dataset_name}", todo)
            score_frames(store, dataset, mine, finished, method, model, options, device,
                         progress.advance, collector)
        dist.barrier()
        if dist.is_main:
            store.commit()
        dist.barrier()
    metrics = compute_metrics(store, indices, component_track(dataset_name), dist,
                              collector.ready)
    row = _row(config, config_hash(config), metrics, store.path, started, len(dataset))
    row["checkpoint"] = loaded.source
    if dist.is_main:
        append_result(options.out, row)
    return row


_QUIET = Progress()


def _fit(method, model: nn.Module, fit: dict[str, Any], options: RunOptions, device: str,
         show: bool) -> None:
    """Fit a ``requires_fit`` method on its training dataset (methods cache their fits); a
    method that needs no data for this model is fitted without reading the dataset."""

    from ood_bench.adapters import get_dataset

    needs_data = method.needs_training_data(model, fit["options"])
    train = get_dataset(fit["dataset"], data_root=options.data_root) if needs_data else ()
    accepted = _fit_options(type(method))
    extra = {"max_frames": fit["frames"], "progress": show, "batch_size": options.batch_size,
             **fit["options"]}
    extra = {k: v for k, v in extra.items() if k in accepted and v is not None}
    _seed(options.seed)
    method.fit(model, train, device=device, seed=options.seed, **extra)


def _fit_options(method_class) -> set[str]:
    """Keyword options a method's ``fit`` takes besides model, dataset, device and seed."""
    import inspect

    parameters = inspect.signature(method_class.fit).parameters
    return set(parameters) - {"self", "model", "train_dataset", "device", "seed"}


@contextlib.contextmanager
def _rank0_lock(store: ScoreStore, dist: Dist) -> Iterator[None]:
    """Hold the store lock on rank 0 for the block; a refused lock stops every rank."""
    with contextlib.ExitStack() as stack:
        error = None
        if dist.is_main:
            try:
                stack.enter_context(store.locked())
            except OodBenchError as caught:
                error = caught
        dist.check(error)
        yield


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def parse_grid(values: Sequence[str]) -> list[str]:
    """Repeated and comma-separated option values as one list, duplicates dropped, order kept."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return list(dict.fromkeys(names))


def run_grid(
    methods: Sequence[str],
    datasets: Sequence[str],
    options: RunOptions,
    *,
    model: str | None = None,
    checkpoint: Path | None = None,
    model_options: dict[str, Any] | None = None,
    method_options: dict[str, Any] | None = None,
    loaded: LoadedModel | None = None,
    dist: Dist | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Every (method, dataset) pair with one model; returns the results rows in grid order.

    Names are validated up front (unknown names fail before any frame is scored). ``loaded``
    bypasses model loading (Python API: score an ``nn.Module`` you built yourself).
    """
    from ood_bench.adapters.base import DATASETS
    from ood_bench.baselines.base import METHODS

    for name in methods:
        METHODS.factory(name)
    for name in datasets:
        DATASETS.factory(name)
    if not methods or not datasets:
        raise OodBenchError("give at least one --method and one --dataset")
    real = [name for name in datasets if not is_synthetic(name)]
    if loaded is None and checkpoint is None and real:
        load_run_model(model, None, {}, real[0])  # raises: real data needs trained weights
    from ood_bench.adapters import get_dataset

    for name in datasets:  # missing data fails now, not after the model was loaded
        get_dataset(name, data_root=options.data_root)
    fitting = [METHODS.factory(name) for name in methods if METHODS.factory(name).requires_fit]
    takes = set().union(*map(_fit_options, fitting)) if fitting else set()
    unknown = sorted(set(options.fit_options) - takes)
    if unknown:  # an option is passed to every fitted method that takes it
        raise OodBenchError(f"no method of this run takes fit option(s) {', '.join(unknown)}; "
                            f"valid --fit-option keys: {', '.join(sorted(takes)) or '(none)'}")
    dist = dist or Dist()
    models: dict[str, LoadedModel] = {}
    if fitting and loaded is None and checkpoint is not None:  # does the checkpoint need data?
        with dist.main_first():
            models[str(checkpoint)] = load_run_model(model, checkpoint,
                                                     dict(model_options or {}), datasets[0])
    given = loaded or models.get(str(checkpoint))
    if given is not None:
        fitting = [method for method in fitting
                   if method.needs_training_data(given.module, options.fit_options)]
    if fitting:
        source = SYNTHETIC_SOURCE if checkpoint is None else "checkpoint"
        default = loaded.fit_dataset if loaded is not None else FIT_DATASETS[source]
        get_dataset(options.fit_dataset or default, data_root=options.data_root)
    fitted: dict[str, dict[str, Any]] = {}
    rows = []
    for dataset_name in datasets:
        if loaded is None:
            key = SYNTHETIC_SOURCE if checkpoint is None else str(checkpoint)
            if key not in models:
                with dist.main_first():  # rank 0 trains/caches the synthetic base model once
                    models[key] = load_run_model(model, checkpoint, dict(model_options or {}),
                                                 dataset_name)
            current = models[key]
        else:
            current = loaded
        for method_name in methods:
            rows.append(run_one(
                current, method_name, dataset_name, options, method_options=method_options,
                dist=dist, progress=progress, fitted=fitted.setdefault(current.source, {}),
            ))
    return rows
