"""Original training frames paired with their CG-Aug generated partners.

* :class:`GeneratedTree` reads a generated Cityscapes-like tree (the output of
  ``oodbench augment`` or of the reference release)::

      root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
      root/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png   (trainIds, 254, 255)

* :class:`PairedFrames` pairs each original frame with one generated image whose stem starts
  with the original's name followed by ``_`` or nothing — Cityscapes' ``city_seq_frame``
  prefix, so both our stems (``aachen_000000_000019``) and the reference's
  (``aachen_000000_000019_rainy_night_Tokyo_bed_0.93``) pair. Where several generated images
  share a prefix one is picked at random (seeded), as the reference does when it builds its
  dataset; originals without a partner are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ood_bench.adapters.base import NUM_CLASSES, OUTLIER_EXPOSURE, VOID, Sample
from ood_bench.adapters.cityscapes import IMAGE_SUFFIX, paired_files, require_labels
from ood_bench.adapters.files import FileDataset, Frame
from ood_bench.errors import OodBenchError

LABEL_SUFFIX = "_gtFine_labelTrainIds.png"


class GeneratedTree(FileDataset):
    """A generated Cityscapes-like tree; ``semantic`` keeps 254 on the novel object and
    ``ood`` is 1 there (0 on trainIds, 255 on void)."""

    layout = (f"<root>/leftImg8bit/<split>/<city>/<stem>{IMAGE_SUFFIX} + "
              f"<root>/gtFine/<split>/<city>/<stem>{LABEL_SUFFIX}")

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.split = split
        super().__init__(root)
        self.name = f"cgaug-generated:{self.root}"

    def list_frames(self) -> list[Frame]:
        pairs = paired_files(self.root, "leftImg8bit", "gtFine", self.split, (LABEL_SUFFIX,),
                             self.layout)
        return require_labels(pairs, self.root, "gtFine", self.split, LABEL_SUFFIX)

    def convert(self, label: np.ndarray, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        allowed = (label < NUM_CLASSES) | (label == OUTLIER_EXPOSURE) | (label == VOID)
        if not allowed.all():
            bad = sorted(set(np.unique(label[~allowed]).tolist()))[:5]
            raise OodBenchError(f"{str(frame.label)!r} holds values {bad}; expected trainIds "
                                "0..18, 254 (novel object) or 255 (void)")
        semantic = label.astype(np.uint8)
        ood = np.where(semantic == VOID, VOID, 0).astype(np.uint8)
        ood[semantic == OUTLIER_EXPOSURE] = 1
        return ood, semantic


def partner_key(stem: str, originals: set[str]) -> str | None:
    """The shortest ``_``-prefix of ``stem`` that is an original frame's name, if any."""
    fields = stem.split("_")
    for length in range(1, len(fields) + 1):
        prefix = "_".join(fields[:length])
        if prefix in originals:
            return prefix
    return None


class PairedFrames(Sequence):
    """``(original Sample, generated Sample)`` pairs; ``len`` = originals with a partner."""

    def __init__(self, originals: Sequence[Sample], generated: Sequence[Sample],
                 seed: int = 0) -> None:
        names = [_frame_name(originals, i) for i in range(len(originals))]
        index_of = {name: i for i, name in enumerate(names)}
        partners: dict[str, list[int]] = {}
        for j in range(len(generated)):
            key = partner_key(_frame_name(generated, j), set(index_of))
            if key is not None:
                partners.setdefault(key, []).append(j)
        if not partners:
            raise OodBenchError(
                f"no generated image pairs with an original frame: generated stems must start "
                f"with an original's name (e.g. {names[0]!r}) followed by '_' or nothing")
        rng = np.random.default_rng(seed)
        self.pairs = [(index_of[name], options[int(rng.integers(len(options)))])
                      for name, options in sorted(partners.items(), key=lambda kv:
                                                  index_of[kv[0]])]
        self.originals, self.generated = originals, generated
        self.name = f"{getattr(originals, 'name', '')}+{getattr(generated, 'name', '')}"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Sample, Sample]:
        original, generated = self.pairs[index]
        return self.originals[original], self.generated[generated]


def _frame_name(dataset: Sequence[Sample], index: int) -> str:
    """A frame's name without decoding it where the dataset can tell (adapters)."""
    if hasattr(dataset, "frame_name"):
        return dataset.frame_name(index)
    return dataset[index].name
