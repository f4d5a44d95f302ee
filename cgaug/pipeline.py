"""The resumable CG-Aug generation loop.

For every frame of a source dataset: draw a novel object, paste it on the road of the frame's
label map, generate an image from the pasted map, filter it (regenerating with a new object,
position and seed up to ``max_tries`` times), and write a Cityscapes-like tree::

    out/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    out/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png   (trainIds, 254 = object,
                                                                 255 = void)
    out/manifest.jsonl                                           (one record per frame)

``<city>`` is the part of the frame name before the first ``_``. The label is the source label
with the filter's OOD mask set to 254; pasted pixels outside that mask become void (255). A
generator that draws no object (``Generated.drawn`` False: the domain-shift-only ablation)
skips the filter, and the label is the source label unchanged.
Everything about a frame derives from ``(seed, frame index, try)``, so a resumed run writes the
same files; frames with both files and a manifest record are skipped. Images and labels are
written atomically, then the frame's manifest line is appended in one write (a torn last line
from a crash is ignored on resume and the frame is redone).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ood_bench.adapters.base import OUTLIER_EXPOSURE, VOID, SegDataset
from ood_bench.errors import OodBenchError
from ood_bench.io import atomic_path

from .filtering import AutoFilter
from .generators import Generator
from .paste import DEFAULT_PASTE, PasteConfig, paste_on_road
from .sources import ObjectSource

MANIFEST = "manifest.jsonl"


@dataclass
class GenerationStats:
    """Counts of one run: frames written, skipped (already done), without road, given up after
    ``max_tries`` rejections, and rejected tries in total."""

    written: int = 0
    skipped: int = 0
    no_road: int = 0
    exhausted: int = 0
    rejected: int = 0
    seconds: float = 0.0
    records: list[dict] = field(default_factory=list)


def output_paths(out: Path, split: str, name: str) -> tuple[Path, Path]:
    """(image, label) paths of frame ``name`` in the Cityscapes-like tree."""
    city = name.split("_")[0]
    return (out / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
            out / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png")


def read_manifest(out: Path) -> dict[str, dict]:
    """Manifest records by frame name; unparsable (torn) lines are ignored."""
    records = {}
    path = out / MANIFEST
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["frame"]] = record
    return records


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(array).save(tmp)


def _append_record(out: Path, record: dict) -> None:
    path = out / MANIFEST
    torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as handle:
        handle.write(("\n" if torn else "") + json.dumps(record) + "\n")
        handle.flush()


def final_label(source: np.ndarray, pasted_mask: np.ndarray, ood_mask: np.ndarray) -> np.ndarray:
    """Source trainIds with ``ood_mask`` = 254 and pasted pixels outside it void."""
    label = source.copy()
    label[pasted_mask & ~ood_mask] = VOID
    label[ood_mask] = OUTLIER_EXPOSURE
    return label


def generate_dataset(
    dataset: SegDataset,
    generator: Generator,
    objects: ObjectSource,
    out: str | Path,
    *,
    filter: AutoFilter | None = None,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    max_tries: int = 5,
    paste: PasteConfig = DEFAULT_PASTE,
    on_frame: Callable[[], None] | None = None,
) -> GenerationStats:
    """Generate one accepted image per frame of ``dataset`` (the first ``limit`` frames) into
    ``out``; ``on_frame`` is called after each frame (progress bars)."""
    if max_tries < 1:
        raise OodBenchError(f"max_tries must be >= 1, got {max_tries!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    filter = filter or AutoFilter()
    done = read_manifest(out)
    stats = GenerationStats()
    start = time.perf_counter()
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in range(count):
        name = dataset.frame_name(index)
        image_path, label_path = output_paths(out, split, name)
        if name in done and image_path.exists() and label_path.exists():
            stats.skipped += 1
        else:
            record = _generate_frame(dataset, index, generator, objects, filter, seed,
                                     max_tries, paste, stats)
            if record is not None:
                image, label, record = record
                _save_png(image_path, image)
                _save_png(label_path, label)
                _append_record(out, record)
                stats.written += 1
                stats.records.append(record)
        if on_frame is not None:
            on_frame()
    stats.seconds = time.perf_counter() - start
    return stats


def _generate_frame(dataset, index, generator, objects, filter, seed, max_tries, paste, stats):
    sample = dataset[index]
    if sample.semantic is None:
        raise OodBenchError(f"frame {sample.name!r} has no semantic label to paste onto")
    layout = None
    if generator.needs_layout:
        if not hasattr(dataset, "layout"):
            raise OodBenchError(f"the {generator.name} generator needs a synthetic source "
                                f"dataset (synth-*), got {getattr(dataset, 'name', '')!r}")
        layout = dataset.layout(index)
    for attempt in range(max_tries):
        frame_seed = int(np.random.SeedSequence([seed, index, attempt]).generate_state(1)[0])
        rng = np.random.default_rng(frame_seed)
        pasted = paste_on_road(sample.semantic, objects.draw(rng), rng, paste)
        if pasted is None:
            stats.no_road += 1
            return None
        generated = generator.generate(pasted, frame_seed, layout)
        record = {
            "frame": sample.name, "source_index": index, "prompt": generated.prompt.text,
            "negative_prompt": generated.prompt.negative, "seed": frame_seed, "try": attempt,
            "domain": generated.domain, "generator": generator.name,
        }
        if not generated.drawn:  # domain shift only: nothing to filter, the label is the source's
            record.update(object_class=None, mask_source=None)
            return generated.image, sample.semantic.copy(), record
        result = filter(generated.image, pasted.mask, sample.semantic)
        if result.accepted:
            label = final_label(sample.semantic, pasted.mask, result.ood_mask)
            record.update(object_class=pasted.object_class, mask_source=filter.mask_source,
                          **result.scores())
            return generated.image, label, record
        stats.rejected += 1
    stats.exhausted += 1
    return None
