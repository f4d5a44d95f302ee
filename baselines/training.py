"""The training loop shared by the trained methods (RPL, RuleAug, OOD + RuleAug).

What every loop gets from here:

* **Determinism.** torch runs deterministic kernels on ``threads`` threads (bit-identical on
  CPU; as far as the kernels allow on CUDA) and every random
  choice of a step comes from a generator seeded by ``(seed, step, …)`` (:func:`sample_rng`,
  :func:`step_generator`), never from a global stream. The same seed gives bit-identical weights,
  and a resumed run continues exactly where the interrupted one stopped.
* **Resumable checkpoints.** Every ``checkpoint_every`` steps the trained module, the optimizer
  state and the step count are written atomically (``ood_bench.io``) beside the cached result;
  a rerun with the same key resumes from there. The learning rate is a pure function of the step
  (poly decay, :func:`poly_factor`), so no scheduler state is needed.
* **Caching.** The finished weights are stored as safetensors under
  ``cache_dir("methods", name)``, keyed by :func:`ood_bench.cache.config_hash` of the method
  name, the frozen model's weights, the training set and the recipe; a second fit loads them.
* **DDP.** When the methods' ``fit`` is called with ``distributed=True`` on every rank, under
  ``torchrun`` (``WORLD_SIZE > 1``) or inside an initialised process group, the trained module
  is wrapped in ``DistributedDataParallel`` (gloo on CPU, nccl on CUDA). Rank r
  takes the frames ``r·B … r·B + B − 1`` of the step's ``W·B`` global batch, drawn exactly as
  one process with batch ``W·B`` would draw them. Rank 0 writes the files.
* **Progress.** A rich progress bar with the loss terms and images per second (rank 0 only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ood_bench import distributed
from ood_bench.adapters.base import NUM_CLASSES, VOID
from ood_bench.cache import cache_dir, config_hash
from ood_bench.errors import OodBenchError
from ood_bench.io import atomic_path

#: Bump when checkpoints or results change meaning, so stale cache files are not reused.
FORMAT_VERSION = 1

#: ``step_fn(trainable, step) -> (loss, terms)``: one step's loss and the named floats to show.
StepFunction = Callable[[nn.Module, int], tuple[torch.Tensor, dict[str, float]]]


@contextlib.contextmanager
def deterministic(seed: int, threads: int, device: torch.device) -> Iterator[None]:
    """Seed torch and use deterministic kernels on ``threads`` CPU threads; restore after.

    On CPU every kernel used here has a deterministic version (bit-identical reruns). On CUDA
    some backward kernels (bilinear upsampling) have none, so there determinism is requested
    with ``warn_only=True``: reruns agree as far as the kernels allow.
    """
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1], warn_only=previous[2])


def poly_factor(step: int, total: int, power: float = 0.9) -> float:
    """The poly learning-rate factor ``(1 − step / total) ** power`` (RPL, DeepLab)."""
    return (1.0 - step / total) ** power


def sample_rng(seed: int, step: int, position: int) -> np.random.Generator:
    """The generator of one training sample: global batch ``position`` of ``step``.

    It depends on neither the rank nor the history, so a resumed or distributed run draws the
    same crops, flips, pastes and augmentations as one uninterrupted process.
    """
    return np.random.default_rng([seed, step, position])


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A torch generator for the tensor-side sampling of one step on one rank (e.g. CoroCL)."""
    generator = torch.Generator()
    generator.manual_seed(int(np.random.default_rng([seed, step, rank, 1]).integers(2**62)))
    return generator


def frame_indices(seed: int, step: int, batch_size: int, length: int,
                  dist: distributed.Dist) -> list[tuple[int, int]]:
    """This rank's ``(position in the global batch, frame index)`` pairs of ``step``.

    The global batch of ``W·B`` positions walks through epochs of seeded permutations of the
    ``length`` frames (every frame once per epoch); rank r takes positions ``r·B … r·B + B − 1``.
    """
    first = (step * dist.world_size + dist.rank) * batch_size
    pairs = []
    for offset in range(batch_size):
        position = first + offset
        epoch, within = divmod(position, length)
        order = np.random.default_rng([seed, epoch, length]).permutation(length)
        pairs.append((position - step * dist.world_size * batch_size, int(order[within])))
    return pairs


def training_frame(sample: Any, rng: np.random.Generator, crop: tuple[int, int] | None,
                   flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """A training frame's image (uint8 H×W×3) and trainId label (ids ≥ 19 set to 255).

    ``crop`` (height, width) cuts a uniformly random window (zero image / void label padding
    where the frame is smaller); ``flip`` mirrors the frame horizontally with probability 0.5.
    """
    if sample.semantic is None:
        raise OodBenchError(f"training frame {sample.name!r} has no semantic labels")
    image = np.asarray(sample.image)
    label = np.where(sample.semantic < NUM_CLASSES, sample.semantic, VOID).astype(np.uint8)
    if crop is not None:
        height, width = crop
        pad_h, pad_w = max(height - label.shape[0], 0), max(width - label.shape[1], 0)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=VOID)
        y = int(rng.integers(label.shape[0] - height + 1))
        x = int(rng.integers(label.shape[1] - width + 1))
        image, label = image[y:y + height, x:x + width], label[y:y + height, x:x + width]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


@dataclass
class TrainingBatch:
    """One rank's frames of a step: uint8 images N×H×W×3 and labels N×H×W (trainIds, 254 on
    pasted objects, 255 void), plus the outlier-source ("OoD context") images and labels that
    were pasted from, when outlier exposure is on."""

    images: np.ndarray
    labels: np.ndarray
    context_images: np.ndarray | None = None
    context_labels: np.ndarray | None = None


def training_batch(dataset: Sequence, seed: int, step: int, batch_size: int,
                   dist: distributed.Dist, *, crop: tuple[int, int] | None, flip: bool = True,
                   outliers: Sequence | None = None, outlier_scales: Sequence[float] = (1.0,),
                   augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
                   ) -> TrainingBatch:
    """This rank's frames of ``step``: cropped/flipped (:func:`training_frame`), with one
    outlier source pasted into each when ``outliers`` is given (rescaled by a random factor of
    ``outlier_scales``), then ``augment``-ed. Each frame draws from its own :func:`sample_rng`.
    """
    from .outlier_exposure import draw_outlier, paste_objects

    images, labels, context_images, context_labels = [], [], [], []
    for position, index in frame_indices(seed, step, batch_size, len(dataset), dist):
        rng = sample_rng(seed, step, position)
        image, label = training_frame(dataset[index], rng, crop, flip)
        if outliers is not None:
            source = draw_outlier(outliers, outlier_scales, *label.shape, rng)
            image, label = paste_objects(image, label, source, rng)
            context_images.append(source.image)
            context_labels.append(source.label)
        if augment is not None:
            image = augment(image, rng)
        images.append(image)
        labels.append(label)
    if outliers is None:
        return TrainingBatch(np.stack(images), np.stack(labels))
    return TrainingBatch(np.stack(images), np.stack(labels), np.stack(context_images),
                         np.stack(context_labels))


def dataset_identity(dataset: Sequence) -> dict[str, Any]:
    """What determines a training set's frames, for cache keys.

    A registered dataset is named by its name, class version and simple attributes (root,
    length, options); an unnamed sequence of samples (a plain list) by a digest of its content.
    """
    name = getattr(dataset, "name", "")
    if name:
        simple = (str, int, float, bool, tuple, Path, type(None))
        attributes = {k: v for k, v in sorted(vars(dataset).items())
                      if not k.startswith("_") and isinstance(v, simple)}
        return {"name": name, "version": getattr(dataset, "version", None),
                "frames": len(dataset), "attributes": attributes}
    digest = hashlib.sha256()
    for sample in dataset:
        for array in (sample.image, sample.semantic):
            if array is not None:
                digest.update(np.ascontiguousarray(array).tobytes())
    return {"content": digest.hexdigest(), "frames": len(dataset)}


def current_dist(device: str | torch.device = "cpu", *, joint: bool = True) -> distributed.Dist:
    """This process's place in a training job.

    ``joint=False`` (the default of the methods' ``fit``) trains in this process alone, as the
    runner does when it fits on rank 0 first. ``joint=True`` trains with every rank: those of an
    initialised process group, else those torchrun announces (``WORLD_SIZE``, ``RANK``).
    """
    import torch.distributed as torch_dist

    if not joint:
        return distributed.Dist()
    if torch_dist.is_available() and torch_dist.is_initialized():
        rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
        return distributed.Dist(rank, world, int(os.environ.get("LOCAL_RANK", rank)))
    return distributed.context(torch.device(device).type)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Keep ``model`` in eval mode (BatchNorm statistics fixed) with no parameter gradients
    inside the block; its train flag and ``requires_grad`` flags are restored afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
        model.train(was_training)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int ≥ 1, else a clear error naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OodBenchError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_recipe_name(name: str, recipes: dict[str, Any]) -> str:
    """``name`` if it is ``"auto"`` or a key of ``recipes``, else a clear error."""
    if name != "auto" and name not in recipes:
        raise OodBenchError(f"recipe must be 'auto' or one of {sorted(recipes)}, got {name!r}")
    return name


def pick_recipe(name: str, dataset: Sequence, recipes: dict[str, Any]) -> Any:
    """``recipes[name]``; ``"auto"`` means ``"synthetic"`` for the synthetic benchmark's frames
    (and unnamed in-memory frames) and ``"real"`` otherwise."""
    if check_recipe_name(name, recipes) == "auto":
        dataset_name = str(getattr(dataset, "name", ""))
        synthetic = dataset_name.startswith("synth-") or not dataset_name
        name = "synthetic" if synthetic else "real"
    return recipes[name]


@dataclass(frozen=True)
class LoopSettings:
    """How a loop runs (not what it learns): length, seed, checkpointing, threads, progress."""

    steps: int
    seed: int = 0
    checkpoint_every: int = 50
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        check_positive_int("checkpoint_every", self.checkpoint_every)
        check_positive_int("threads", self.threads)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise OodBenchError(f"seed must be an integer, got {self.seed!r}")


class TrainingRun:
    """One cached, resumable training of ``module`` with ``optimizer``.

    ``key`` is everything that determines the result besides the loop settings' ``steps`` and
    ``seed`` (which are added to it): the method name, model fingerprint, dataset identity and
    recipe. :meth:`run` either loads the cached result or trains (resuming a checkpoint).
    """

    def __init__(self, name: str, key: dict[str, Any], module: nn.Module,
                 optimizer: torch.optim.Optimizer, settings: LoopSettings) -> None:
        self.module, self.optimizer, self.settings = module, optimizer, settings
        self.key_config = {**key, "method": name, "steps": settings.steps, "seed": settings.seed,
                           "format": FORMAT_VERSION}
        self.key = config_hash(self.key_config)
        folder = cache_dir("methods", name)
        self.result_path = folder / f"{self.key}.safetensors"
        self.checkpoint_path = folder / f"{self.key}.checkpoint.pt"
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    def run(self, step_fn: StepFunction, *, batch_images: int, dist: distributed.Dist,
            on_step: Callable[[int], None] | None = None) -> Path:
        """Train for ``settings.steps`` steps (or load the cached result); returns its path.

        With an active ``dist`` every rank must call this (DDP); ``batch_images`` (images per
        step on this rank) feeds the images/s readout; ``on_step`` is called after every
        finished step with the number of steps done.
        """
        if self.result_path.is_file():
            self._load_result()
            return self.result_path
        settings = self.settings
        device = next(self.module.parameters()).device
        with deterministic(settings.seed, settings.threads, device):
            start = self._resume()
            trainable = self._wrap(dist)
            self.module.train()
            with self._progress(dist, start) as advance:
                for step in range(start, settings.steps):
                    factor = poly_factor(step, settings.steps)
                    for group, base in zip(self.optimizer.param_groups, self.base_lrs,
                                           strict=True):
                        group["lr"] = base * factor
                    loss, terms = step_fn(trainable, step)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    done = step + 1
                    if dist.is_main and (done % settings.checkpoint_every == 0
                                         and done < settings.steps):
                        self._save_checkpoint(done)
                    advance(loss.item(), terms, batch_images)
                    if on_step is not None:
                        on_step(done)
            self._sync_buffers(dist)
        self.module.eval()
        if dist.is_main:
            self._save_result()
            self.checkpoint_path.unlink(missing_ok=True)
        dist.barrier()
        return self.result_path

    # -- pieces ---------------------------------------------------------------------------------
    def _wrap(self, dist: distributed.Dist) -> nn.Module:
        if not dist.active:
            return self.module
        from torch.nn.parallel import DistributedDataParallel

        device = next(self.module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # Parameters outside the loss (e.g. a model's unused ood_head) must not stall the
        # gradient reduction.
        return DistributedDataParallel(self.module, device_ids=ids, find_unused_parameters=True)

    def _sync_buffers(self, dist: distributed.Dist) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics of the last step)."""
        if dist.active:
            import torch.distributed as torch_dist

            for buffer in self.module.buffers():
                torch_dist.broadcast(buffer, src=0)

    def _resume(self) -> int:
        if not self.checkpoint_path.is_file():
            return 0
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if state.get("key") != self.key:
            raise OodBenchError(f"checkpoint {str(self.checkpoint_path)!r} belongs to another "
                                "training run; delete it to start over")
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])

    def _save_checkpoint(self, step: int) -> None:
        state = {"key": self.key, "step": step, "module": self.module.state_dict(),
                 "optimizer": self.optimizer.state_dict()}
        with atomic_path(self.checkpoint_path, ".pt") as tmp:
            torch.save(state, tmp)

    def _save_result(self) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in self.module.state_dict().items()}
        metadata = {"oodbench": json.dumps(self.key_config, sort_keys=True, default=str)}
        with atomic_path(self.result_path, ".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    def _load_result(self) -> None:
        from safetensors.torch import load_file

        device = next(self.module.parameters()).device
        self.module.load_state_dict(load_file(str(self.result_path), device=str(device)))
        self.module.eval()

    @contextlib.contextmanager
    def _progress(self, dist: distributed.Dist, start: int):
        """Yield ``advance(loss, terms, images)``; a rich bar on rank 0 when progress is on."""
        from ood_bench.progress import progress_bar

        enabled = self.settings.progress and dist.is_main
        with progress_bar(disable=not enabled) as progress:
            task = progress.add_task(f"train {self.key_config['method']}", completed=start,
                                     total=self.settings.steps, info="")
            began, images = time.perf_counter(), 0

            def advance(loss: float, terms: dict[str, float], batch_images: int) -> None:
                nonlocal images
                images += batch_images * dist.world_size
                rate = images / max(time.perf_counter() - began, 1e-9)
                shown = " ".join(f"{k} {v:.3f}" for k, v in {"loss": loss, **terms}.items())
                progress.update(task, advance=1, info=f"{shown} · {rate:.0f} img/s")

            yield advance
