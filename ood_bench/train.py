"""Train a segmentation model, deterministically, with a cached result.

``train(config)`` renders the training frames once into memory, trains with AdamW (random
horizontal flips, labels outside the trainIds ignored), evaluates on the validation dataset, and
stores the weights (safetensors) and a JSON record under ``cache_dir("models")``, keyed by
``config_hash(config)``: a second call with the same config loads the stored weights instantly.
Per-pixel models (DeepLabv3+) learn with cross-entropy and a one-cycle schedule; Mask2Former
models (``model.family == "mask2former"``) with the set criterion of
:mod:`ood_bench.models.mask2former_loss` and a warm-up + poly decay, as Mask2Former. Each model
has its own default recipe (:data:`DEFAULT_RECIPES`). With the same config and machine the
weights are bit-identical: the seed fixes initialisation, data order and the loss's sampled
points; torch runs deterministic algorithms on ``threads`` threads (one by default: on a shared
CPU one thread trains faster than two that keep waiting for each other).

``load_synthetic_base_model(model)`` returns a base model shipped in ``ood_bench/weights``
(trained by ``oodbench train --model <model> --dataset synth-cityscapes``; see
:data:`SHIPPED_NAMES`), or trains it when the shipped record no longer matches the default
config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ood_bench.adapters.base import DATASETS, NUM_CLASSES
from ood_bench.cache import cache_dir, config_hash
from ood_bench.errors import OodBenchError
from ood_bench.io import atomic_write

#: Model options used when the config names none (a model small enough for CPU training).
DEFAULT_MODEL_OPTIONS: dict[str, dict[str, Any]] = {"deeplabv3plus-small": {"width": 16}}
#: Per-model training recipes: :class:`TrainConfig` fields that differ from its defaults.
#: The Mask2Former recipe trains in about 7.5 minutes on one CPU thread (see the README).
DEFAULT_RECIPES: dict[str, dict[str, Any]] = {
    "mask2former-tiny": {
        "steps": 2500, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.05, "warmup": 0.02,
        "schedule": "poly",
        "criterion": {"class_weight": 2.0, "mask_weight": 5.0, "dice_weight": 5.0,
                      "no_object_weight": 0.1, "num_points": 1024, "deep_supervision": True},
    },
}
WEIGHTS_DIR = Path(__file__).parent / "weights"
#: The shipped synthetic base checkpoints (``<name>.safetensors`` + ``.json``) per model.
SHIPPED_NAMES = {"deeplabv3plus-small": "synth-base", "mask2former-tiny": "synth-m2f"}
SHIPPED_NAME = SHIPPED_NAMES["deeplabv3plus-small"]
SCHEDULES = ("onecycle", "poly")
#: Fields added after the first shipped checkpoint and their defaults: ``to_dict`` leaves them
#: out while at the default, so the configs (and hashes) of existing checkpoints do not change.
_LATER_FIELDS: dict[str, Any] = {"schedule": "onecycle", "criterion": {}}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (and so the cache key)."""

    model: str = "deeplabv3plus-small"
    dataset: str = "synth-cityscapes"
    val_dataset: str | None = "synth-cityscapes-val"
    seed: int = 0
    steps: int = 3200
    batch_size: int = 8
    lr: float = 6e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1
    threads: int = 1
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    #: The dataset generator's version (``SegDataset.version``): a changed synthetic world
    #: changes the hash, so cached and shipped weights never outlive the frames they learnt.
    dataset_version: str | None = None
    #: Learning-rate schedule: ``onecycle`` (warm-up fraction ``warmup``, cosine anneal) or
    #: ``poly`` (linear warm-up over ``warmup`` of the steps, then ``(1 − t)^0.9``).
    schedule: str = "onecycle"
    #: ``SetCriterion`` options of Mask2Former models (ignored by per-pixel models).
    criterion: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise OodBenchError(f"schedule must be one of {', '.join(SCHEDULES)}, "
                                f"got {self.schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, default in _LATER_FIELDS.items():
            if data[name] == default:
                del data[name]
        return data

    @property
    def hash(self) -> str:
        return config_hash(self.to_dict())


def default_config(
    model: str = "deeplabv3plus-small", dataset: str = "synth-cityscapes", **overrides: Any
) -> TrainConfig:
    """The standard recipe for ``model`` on ``dataset``; ``overrides`` replace fields."""
    val = f"{dataset}-val" if f"{dataset}-val" in DATASETS else None
    config = TrainConfig(
        model=model,
        dataset=dataset,
        val_dataset=val,
        model_options=dict(DEFAULT_MODEL_OPTIONS.get(model, {})),
        dataset_version=getattr(DATASETS.factory(dataset), "version", None),
    )
    return replace(config, **{**DEFAULT_RECIPES.get(model, {}), **overrides})


@dataclass
class TrainResult:
    """A trained model and its record (config, hash, metrics, timing, where it is stored)."""

    model: nn.Module
    record: dict[str, Any]
    path: Path
    cached: bool


@contextlib.contextmanager
def deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels on ``threads`` threads; restore settings after."""
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def train_ids(semantic: np.ndarray) -> np.ndarray:
    """``semantic`` with every value outside the 19 trainIds (void, 254) set to 255."""
    return np.where(semantic < NUM_CLASSES, semantic, 255).astype(np.uint8)


def load_frames(dataset, progress: Callable[[int], None] | None = None):
    """All frames of ``dataset`` as uint8 arrays: images N×H×W×3, trainId labels N×H×W.

    Labels outside the 19 trainIds (void, outlier-exposure 254) become 255 (ignored).
    """
    if len(dataset) == 0:
        raise OodBenchError(f"dataset {dataset.name!r} is empty")
    first = dataset[0]
    if first.semantic is None:
        raise OodBenchError(f"dataset {dataset.name!r} has no semantic labels to train on")
    n, (h, w) = len(dataset), first.semantic.shape
    images = np.empty((n, h, w, 3), np.uint8)
    labels = np.empty((n, h, w), np.uint8)
    for index in range(n):
        sample = first if index == 0 else dataset[index]
        if sample.image.shape[:2] != (h, w):
            raise OodBenchError(
                f"dataset {dataset.name!r}: frame {sample.name} is {sample.image.shape[:2]}, "
                f"expected {(h, w)} like the first frame (training needs one resolution)"
            )
        images[index] = sample.image
        labels[index] = train_ids(sample.semantic)
        if progress is not None:
            progress(1)
    return images, labels


def _batches(n: int, batch_size: int, steps: int, rng: np.random.Generator):
    """Indices and flip flags per step: epochs of a seeded permutation, truncated at ``steps``."""
    order = np.empty(0, np.int64)
    for _ in range(steps):
        if order.size < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        index, order = order[:batch_size], order[batch_size:]
        yield index, rng.random(batch_size) < 0.5


def evaluate_segmentation(model: nn.Module, dataset, batch_size: int = 32) -> dict[str, Any]:
    """mIoU, mAcc and pixel accuracy of ``model`` on ``dataset`` (labels ≥ 19 ignored)."""
    from ood_bench.metrics.segmentation import SegmentationMetric
    from ood_bench.models.inference import normalize_images

    metric = SegmentationMetric(NUM_CLASSES, ignore_index=255)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = np.stack([s.image for s in samples])
            target = np.stack([train_ids(s.semantic) for s in samples])
            pred = model(normalize_images(images)).logits.argmax(1)
            metric.update(pred.numpy(), target)
    result = metric.compute()
    return {
        "miou": result["miou"],
        "macc": result["macc"],
        "pixel_acc": result["pixel_acc"],
        "iou": [None if np.isnan(v) else round(float(v), 4) for v in result["iou"]],
    }


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """The config's schedule over ``config.steps`` steps, peaking at ``config.lr``."""
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=config.warmup
        )
    warmup = max(round(config.warmup * config.steps), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return (1 - (step - warmup) / max(config.steps - warmup, 1)) ** 0.9

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_loss(model: nn.Module, config: TrainConfig) -> Callable[[Any, torch.Tensor], Any]:
    """``loss(output, labels)`` for ``model``: cross-entropy (void 255 ignored) on the logits,
    or Mask2Former's set criterion (options ``config.criterion``, points seeded by the seed)."""
    if getattr(model, "family", None) == "mask2former":
        from ood_bench.models.mask2former_loss import SetCriterion

        criterion = SetCriterion(seed=config.seed, **config.criterion)
        return lambda output, labels: criterion(output, labels)[0]
    return lambda output, labels: nn.functional.cross_entropy(
        output.logits, labels, ignore_index=255
    )


def fit(
    config: TrainConfig, images: np.ndarray, labels: np.ndarray, on_step=None
) -> nn.Module:
    """Train a fresh model on in-memory frames; ``on_step(step, loss)`` reports progress."""
    from ood_bench.models import create_model
    from ood_bench.models.inference import normalize_images

    with deterministic_torch(config.seed, config.threads):
        model = create_model(config.model, num_classes=NUM_CLASSES, **config.model_options)
        model.train()
        loss_function = training_loss(model, config)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        schedule = learning_rate_schedule(optimizer, config)
        rng = np.random.default_rng(config.seed)
        batches = _batches(len(images), config.batch_size, config.steps, rng)
        for step, (index, flip) in enumerate(batches):
            x, y = images[index], labels[index]
            x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
            y = np.where(flip[:, None, None], y[:, :, ::-1], y)
            output = model(normalize_images(x))
            loss = loss_function(output, torch.from_numpy(y.astype(np.int64)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if on_step is not None:
                on_step(step, loss.item())
    return model.eval()


def checkpoint_paths(config: TrainConfig, folder: Path | None = None) -> tuple[Path, Path]:
    """Where the weights and the JSON record of ``config`` live (the cache by default)."""
    folder = folder or cache_dir("models")
    stem = f"{config.model}-{config.dataset}-{config.hash}"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def _load(config: TrainConfig, weights: Path) -> nn.Module:
    from ood_bench.models.checkpoint import load_model

    return load_model(
        config.model, weights, num_classes=NUM_CLASSES, **config.model_options
    )


def train(
    config: TrainConfig, *, retrain: bool = False, console=None, command: str | None = None
) -> TrainResult:
    """Train ``config`` (or load its cached weights unless ``retrain``); show rich progress."""
    from ood_bench.adapters import get_dataset
    from ood_bench.models.checkpoint import save_checkpoint
    from ood_bench.progress import progress_bar

    weights, record_path = checkpoint_paths(config)
    if weights.exists() and record_path.exists() and not retrain:
        record = json.loads(record_path.read_text())
        return TrainResult(_load(config, weights), record, weights, cached=True)

    dataset = get_dataset(config.dataset, **config.dataset_options)
    started = time.perf_counter()
    with progress_bar(console=console) as progress:
        render = progress.add_task("render frames", total=len(dataset), info="")
        images, labels = load_frames(dataset, lambda k: progress.advance(render, k))
        fit_task = progress.add_task("train", total=config.steps, info="")

        def on_step(step: int, loss: float) -> None:
            rate = (step + 1) * config.batch_size / (time.perf_counter() - fit_started)
            info = f"loss {loss:.3f} · {rate:.0f} img/s"
            progress.update(fit_task, advance=1, info=info)

        fit_started = time.perf_counter()
        model = fit(config, images, labels, on_step)
        train_seconds = time.perf_counter() - started
        metrics = {}
        if config.val_dataset:
            val = get_dataset(config.val_dataset, **config.dataset_options)
            progress.add_task(f"evaluate on {config.val_dataset}", total=None, info="")
            metrics[config.val_dataset] = evaluate_segmentation(model, val)
    record = {
        "command": command,
        "seed": config.seed,
        "config": config.to_dict(),
        "config_hash": config.hash,
        "metrics": metrics,
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
    }
    save_checkpoint(model, weights)
    record["weights_sha256"] = file_sha256(weights)
    write_record(record, record_path)
    return TrainResult(model, record, weights, cached=False)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (recorded beside checkpoints so a swapped file is detected)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_record(record: dict[str, Any], path: Path) -> None:
    with atomic_write(path, "w") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")


def _shipped_name(model: str) -> str:
    if model not in SHIPPED_NAMES:
        raise OodBenchError(f"no synthetic base model for {model!r}; the synthetic benchmark "
                            f"ships {', '.join(SHIPPED_NAMES)}")
    return SHIPPED_NAMES[model]


def shipped_record(model: str = "deeplabv3plus-small") -> dict[str, Any]:
    """The JSON record of the shipped synthetic base checkpoint of ``model``."""
    path = WEIGHTS_DIR / f"{_shipped_name(model)}.json"
    if not path.exists():
        raise OodBenchError(f"the shipped base-model record {str(path)!r} is missing")
    return json.loads(path.read_text())


def load_synthetic_base_model(model: str = "deeplabv3plus-small") -> nn.Module:
    """The synthetic benchmark's base model of architecture ``model``, in eval mode.

    Loads the checkpoint shipped with the package when its recorded config hash equals the
    current default config's; otherwise trains the default config (cached after the first
    call), so a changed recipe never silently returns stale weights.
    """
    config = default_config(model)
    weights = WEIGHTS_DIR / f"{_shipped_name(model)}.safetensors"
    if weights.exists() and shipped_record(model).get("config_hash") == config.hash:
        return _load(config, weights)
    return train(config).model
