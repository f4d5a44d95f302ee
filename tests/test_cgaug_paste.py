"""Paste geometry (hand-computed cases), palette conversion, prompts, sources."""

import numpy as np
import pytest
from PIL import Image

from ood_bench.cgaug.ade20k import ADE20K_CLASSES, ADE20K_PALETTE
from ood_bench.cgaug.paste import (
    ade20k_colour_map,
    margins,
    paste_on_road,
    resize_object,
    road_centre,
)
from ood_bench.cgaug.prompts import PromptSampler
from ood_bench.cgaug.sources import (
    FullADE20KObjects,
    NovelObject,
    SceneParsingObjects,
    SyntheticObjects,
    decode_full_ade20k,
)
from ood_bench.errors import DataNotFoundError, OodBenchError


def test_margins_shrink_in_scaled_10px_steps():
    assert margins(1.0) == [150 - 10 * k for k in range(15)]
    assert margins(0.5)[0] == 75 and margins(0.5)[-1] == 5


@pytest.mark.parametrize("pixel, expected", [((5, 5), (5, 5)), ((2, 60), (2, 60)),
                                             ((0, 60), None)])
def test_road_centre_shrinks_the_margin_until_a_road_pixel_qualifies(pixel, expected):
    label = np.full((64, 128), 8, np.uint8)
    label[pixel] = 0  # a single road pixel; scale 1/16: margins 9.375 ... 0.625
    assert road_centre(label, np.random.default_rng(0), margins(64 / 1024)) == expected


def test_road_centre_respects_the_largest_margin_first():
    label = np.zeros((256, 512), np.uint8)  # all road; scale 1/4: margin 37.5
    rng = np.random.default_rng(1)
    centres = np.array([road_centre(label, rng, margins(0.25)) for _ in range(200)])
    assert centres[:, 0].min() >= 38 and centres[:, 0].max() <= 255 - 38
    assert centres[:, 1].min() >= 38 and centres[:, 1].max() <= 511 - 38


@pytest.mark.parametrize("shape, scale, expected", [
    ((100, 40), 1.0, (200, 80)),    # too small: longer side clamped up to 200
    ((100, 40), 0.5, (100, 40)),    # ... and scaled with the image
    ((1000, 250), 1.0, (500, 125)),  # too large: clamped down to 500
    ((240, 600), 0.25, (50, 125)),  # 600 -> 500, times 1/4
    ((320, 120), 1.0, (320, 120)),  # inside [200, 500]: unchanged
])
def test_resize_object_clamps_the_longer_side(shape, scale, expected):
    mask = np.zeros((shape[0] + 10, shape[1] + 6), bool)
    mask[5:5 + shape[0], 3:3 + shape[1]] = True  # crop to the box first
    assert resize_object(NovelObject(mask, "ball"), scale).mask.shape == expected


def test_paste_centres_the_object_on_the_road_pixel_and_labels_it_254():
    label = np.full((64, 128), 10, np.uint8)
    label[32, 64] = 0
    obj = NovelObject(np.ones((320, 160), bool), "ball")  # -> 20 × 10 px at 64 rows
    pasted = paste_on_road(label, obj, np.random.default_rng(0))
    rows, cols = np.nonzero(pasted.mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (22, 41, 59, 68)
    assert pasted.centre == (32, 64)
    assert (pasted.label[pasted.mask] == 254).all()
    assert (pasted.label[~pasted.mask] == 10).all()


def test_paste_cuts_the_object_at_the_border():
    label = np.full((64, 128), 10, np.uint8)
    label[60, 2] = 0  # border 2: allowed at the smallest margins
    pasted = paste_on_road(label, NovelObject(np.ones((480, 480), bool), "ball"),
                           np.random.default_rng(0))
    rows, cols = np.nonzero(pasted.mask)  # 30 × 30 box centred at (60, 2)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (45, 63, 0, 16)


def test_paste_without_road_returns_none_and_rejects_bad_labels():
    label = np.full((64, 128), 10, np.uint8)
    assert paste_on_road(label, NovelObject(np.ones((4, 4), bool), "ball"),
                         np.random.default_rng(0)) is None
    with pytest.raises(OodBenchError, match="uint8"):
        paste_on_road(label.astype(np.int32), NovelObject(np.ones((4, 4), bool), "ball"),
                      np.random.default_rng(0))


def test_palette_conversion_table_and_void():
    label = np.array([[0, 1, 2, 8, 9, 10, 11, 12, 13, 16, 17, 7, 255, 254]], np.uint8)
    colours = ade20k_colour_map(label, "ball")[0].tolist()
    assert colours[:12] == [
        [140, 140, 140],  # road -> road
        [235, 255, 7],    # sidewalk -> sidewalk
        [180, 120, 120],  # building -> building
        [4, 200, 3],      # vegetation -> tree
        [4, 250, 7],      # terrain -> grass
        [6, 230, 230],    # sky -> sky
        [150, 5, 61],     # person -> person
        [150, 5, 61],     # rider -> person
        [0, 102, 200],    # car -> car
        [255, 0, 245],    # train -> bus
        [255, 245, 0],    # motorcycle -> bicycle
        [255, 5, 153],    # traffic sign -> signboard
    ]
    assert colours[12] == [0, 0, 0]  # void stays black (not road)
    assert colours[13] == ADE20K_PALETTE[ADE20K_CLASSES.index("ball")].tolist()
    with pytest.raises(OodBenchError, match="19"):
        ade20k_colour_map(np.array([[19]], np.uint8), "ball")
    with pytest.raises(OodBenchError, match="not an ADE20K"):
        ade20k_colour_map(label, "unicorn")


def test_prompt_distribution_and_text():
    sampler = PromptSampler()
    rng = np.random.default_rng(0)
    prompts = [sampler.sample("bed", rng) for _ in range(4000)]
    plain = [p for p in prompts if p.weather is None]
    named = [p for p in prompts if p.weather is not None]
    assert abs(len(plain) / 4000 - 0.5) < 0.03
    assert abs(np.mean([p.time == "day" for p in named]) - 0.7) < 0.03
    counts = {w: sum(p.weather == w for p in named) / len(named) for w in sampler.weathers}
    assert all(abs(share - 0.2) < 0.03 for share in counts.values())
    assert plain[0].domain == "" and plain[0].text == (
        "An image sampled from various stereo video sequences taken by dash cam., There is a bed "
        "accidentally staying on the road., best quality, extremely detailed, realistic, "
        "high resolution")
    p = named[0]
    assert p.text.startswith(f"An image sampled from various stereo video sequences taken by "
                             f"dash cam in {p.place} in a {p.weather} {p.time}., There is a bed")
    assert p.domain == f"{p.weather}_{p.time}_{p.place}"
    assert "grey picture" in p.negative


def test_scene_parsing_source_reads_the_released_layout(tmp_path):
    folder = tmp_path / "ADEChallengeData2016" / "annotations" / "training"
    folder.mkdir(parents=True)
    annotation = np.zeros((20, 30), np.uint8)
    annotation[2:6, 3:9] = 8  # bed (id 8)
    annotation[10:15, 10:20] = 7  # road (id 7): not novel
    Image.fromarray(annotation).save(folder / "ADE_train_00000001.png")
    source = SceneParsingObjects(tmp_path / "ADEChallengeData2016", ["bed", "120"])
    assert source.classes == ("bed", "ball")
    obj = source.draw(np.random.default_rng(0))
    assert obj.name == "bed" and obj.mask.sum() == 24 and obj.mask[2:6, 3:9].all()
    with pytest.raises(OodBenchError, match="overlaps a Cityscapes"):
        SceneParsingObjects(tmp_path / "ADEChallengeData2016", ["road"])
    with pytest.raises(DataNotFoundError, match="annotations"):
        SceneParsingObjects(tmp_path, ["bed"])


def test_synthetic_source_draws_the_outlier_exposure_family():
    source = SyntheticObjects()
    rng = np.random.default_rng(0)
    for _ in range(20):
        obj = source.draw(rng)
        assert obj.name in ("ball", "chair", "barrel", "bag")
        assert obj.mask.any() and 100 <= max(obj.mask.shape) <= 620
        assert (obj.part[~obj.mask] == 0).all()


def test_full_ade20k_source_decodes_seg_png_and_maps_ids(tmp_path):
    folder = tmp_path / "ADE20K_2021_17_01" / "images" / "ADE" / "training" / "urban" / "street"
    folder.mkdir(parents=True)
    seg = np.zeros((20, 30, 3), np.uint8)
    seg[4:9, 2:12] = (30, 232, 0)  # full id 3 * 256 + 232 = 1000
    seg[12:18, 5:25] = (0, 77, 0)  # full id 77, unmapped -> other
    Image.fromarray(seg).save(folder / "ADE_train_00000001_seg.png")
    assert decode_full_ade20k(seg)[5, 5] == 1000 and decode_full_ade20k(seg)[15, 10] == 77
    source = FullADE20KObjects(tmp_path / "ADE20K_2021_17_01", ["bed"], {1000: 8})
    obj = source.draw(np.random.default_rng(0))
    assert obj.name == "bed" and obj.mask.sum() == 50 and obj.mask[4:9, 2:12].all()
    with pytest.raises(OodBenchError, match="0..150"):
        FullADE20KObjects(tmp_path / "ADE20K_2021_17_01", ["bed"], {1000: 151})
    with pytest.raises(DataNotFoundError, match="full ADE20K"):
        FullADE20KObjects(tmp_path, ["bed"], {1000: 8})
