"""The registered synthetic benchmarks, generated on the fly from (dataset, index, seed).

| name | frames | domains | unknown objects |
|---|---|---|---|
| ``synth-cityscapes`` / ``synth-cityscapes-val`` | 2975 / 200 | clear | none |
| ``synth-roadanomaly`` | 100 | clear | 1–3 per frame |
| ``synth-acdc-poc`` | 200 | fog, night, rain, snow (cycling) | 1–3 per frame |
| ``synth-muad`` | 200 | clear, new-city, and new-city with each weather | 1–3 per frame |

Each frame draws a layout, pastes objects, and renders it, all from a ``SeedSequence`` of
(dataset key, seed, index): a frame is byte-identical across runs and independent of
which other frames were read.
"""

from __future__ import annotations

import zlib

import numpy as np

from ood_bench.adapters.base import (
    OOD,
    OUTLIER_EXPOSURE,
    VOID,
    Sample,
    SegDataset,
    register_dataset,
)
from ood_bench.errors import OodBenchError

from .layout import Layout, generate_layout
from .objects import place_on_road
from .render import parse_domain, render

#: Default resolution (H, W): small enough to train the base model on a CPU in minutes.
DEFAULT_SIZE = (64, 128)

_MUAD_DOMAINS = (
    "clear", "new-city", "new-city+fog", "new-city+night", "new-city+rain", "new-city+snow",
)  # fmt: skip


def _positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise OodBenchError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


_ADVERSE = ("fog", "night", "rain", "snow")


@register_dataset("synth-cityscapes", frames=2975, key="synth-cityscapes-train", length=2975)
@register_dataset("synth-cityscapes-val", frames=200, key="synth-cityscapes-val", length=200)
@register_dataset(
    "synth-roadanomaly", frames=100, key="synth-roadanomaly", length=100, anomalies=(1, 3)
)
@register_dataset(
    "synth-acdc-poc",
    frames=200,
    key="synth-acdc-poc",
    length=200,
    domains=_ADVERSE,
    anomalies=(1, 3),
)
@register_dataset(
    "synth-muad",
    frames=200,
    key="synth-muad",
    length=200,
    domains=_MUAD_DOMAINS,
    anomalies=(1, 3),
    severity=(0.3, 0.9),
)
class SyntheticDataset(SegDataset):
    """A synthetic street-scene benchmark; every frame is rendered when it is read.

    ``version`` changes whenever the generator's output changes (it keys trained checkpoints).
    ``key`` names the frame stream (mixed into every frame's seed with ``seed`` and the index).
    ``domains`` cycle over the frames (frame ``i`` gets ``domains[i % len(domains)]``);
    ``anomalies`` is the (min, max) number of unknown objects per frame; ``outliers`` the number
    of outlier-exposure objects pasted per frame (label 254 in ``semantic``, for training-time
    outlier exposure); ``severity`` the (min, max) weather strength.
    """

    version = "2"

    def __init__(
        self,
        *,
        key: str = "synthetic",
        length: int = 100,
        domains: tuple[str, ...] = ("clear",),
        anomalies: tuple[int, int] = (0, 0),
        outliers: int = 0,
        severity: tuple[float, float] = (0.6, 1.0),
        seed: int = 0,
        height: int = DEFAULT_SIZE[0],
        width: int = DEFAULT_SIZE[1],
    ) -> None:
        self.length = _positive("length", length)
        self.height = _positive("height", height)
        self.width = _positive("width", width)
        if self.height < 16 or self.width < 16:
            raise OodBenchError(f"resolution must be at least 16×16, got {height}×{width}")
        for domain in domains:
            parse_domain(domain)
        if len(anomalies) != 2 or not 0 <= anomalies[0] <= anomalies[1]:
            raise OodBenchError(f"anomalies must be a (min, max) count range, got {anomalies!r}")
        if outliers < 0:
            raise OodBenchError(f"outliers must be >= 0, got {outliers!r}")
        if len(severity) != 2 or not 0 <= severity[0] <= severity[1] <= 1:
            raise OodBenchError(f"severity must be a range within [0, 1], got {severity!r}")
        self.key = key
        self.domains = tuple(domains)
        self.anomalies = (int(anomalies[0]), int(anomalies[1]))
        self.outliers = int(outliers)
        self.severity = (float(severity[0]), float(severity[1]))
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        entropy = [zlib.crc32(self.key.encode()), self.seed, index, stream]
        return np.random.default_rng(entropy)

    def frame_name(self, index: int) -> str:
        return f"{self.key}_{index:05d}"

    def domain(self, index: int) -> str:
        return self.domains[index % len(self.domains)]

    def layout(self, index: int) -> Layout:
        """The scene layout of frame ``index`` (objects included)."""
        rng = self._rng(index, 0)
        canvas = generate_layout(self.height, self.width, rng)
        if self.anomalies[1] > 0:
            count = rng.integers(self.anomalies[0], self.anomalies[1] + 1)
            place_on_road(canvas, "anomaly", int(count), rng)
        if self.outliers:
            place_on_road(canvas, "outlier-exposure", self.outliers, rng)
        return canvas.layout()

    def __getitem__(self, index: int) -> Sample:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} frames")
        index %= self.length
        layout = self.layout(index)
        domain = self.domain(index)
        rng = self._rng(index, 1)
        severity = rng.uniform(*self.severity)
        image = render(layout, domain, seed=int(rng.integers(2**31)), severity=severity)
        semantic = layout.semantic
        ood = np.where(semantic == VOID, VOID, 0).astype(np.uint8)
        ood[(layout.ood == 1) | (semantic == OUTLIER_EXPOSURE)] = OOD
        return Sample(image, ood, semantic, self.frame_name(index), domain)


