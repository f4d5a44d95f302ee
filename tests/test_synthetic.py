"""The synthetic world: layouts, renderer, shifts, objects and the registered datasets."""

import numpy as np
import pytest

from ood_bench.adapters import get_dataset, list_datasets
from ood_bench.adapters.base import OOD, OUTLIER_EXPOSURE, VOID, sample_problems
from ood_bench.adapters.synthetic import render
from ood_bench.adapters.synthetic.layout import (
    ANOMALY_KINDS,
    MATERIALS,
    OUTLIER_EXPOSURE_KINDS,
    SKY_DEPTH,
    Camera,
    Canvas,
    Facing,
    generate_layout,
    pole_shape,
)
from ood_bench.adapters.synthetic.objects import place_on_road
from ood_bench.adapters.synthetic.shifts import SceneHints, box_blur, fog, night, rain, snow
from ood_bench.errors import OodBenchError

SMALL = {"height": 32, "width": 64}
NAMES = ["synth-cityscapes", "synth-cityscapes-val", "synth-roadanomaly", "synth-acdc-poc",
         "synth-muad"]  # fmt: skip


def _same(a, b):
    return a.image.tobytes() == b.image.tobytes() and np.array_equal(a.semantic, b.semantic) and \
        np.array_equal(a.ood, b.ood) and a.domain == b.domain and a.name == b.name


@pytest.mark.parametrize("name", NAMES)
def test_frames_are_pure_functions_of_dataset_index_and_seed(name):
    first = get_dataset(name, **SMALL)
    again = get_dataset(name, **SMALL)
    later = [again[i] for i in (3, 2, 1)]  # another object, another access order
    for index, sample in zip((3, 2, 1), later, strict=True):
        assert _same(first[index], sample)
    other_seed = get_dataset(name, seed=1, **SMALL)[3]
    assert other_seed.image.tobytes() != first[3].image.tobytes()


def test_default_resolution_lengths_and_domains():
    assert set(NAMES) <= set(list_datasets("synth-*"))
    lengths = {n: len(get_dataset(n)) for n in NAMES}
    assert lengths == {"synth-cityscapes": 2975, "synth-cityscapes-val": 200,
                       "synth-roadanomaly": 100, "synth-acdc-poc": 200, "synth-muad": 200}
    assert get_dataset("synth-cityscapes")[0].image.shape == (64, 128, 3)
    acdc = get_dataset("synth-acdc-poc", **SMALL)
    assert [acdc[i].domain for i in range(8)] == ["fog", "night", "rain", "snow"] * 2
    muad = get_dataset("synth-muad", **SMALL)
    assert {"clear", "new-city", "new-city+night"} <= {muad[i].domain for i in range(6)}


def test_labels_follow_the_sample_conventions():
    classes = set()
    for name in NAMES:
        dataset = get_dataset(name, length=12)
        for sample in dataset:
            assert sample_problems(sample) == []
            classes |= set(np.unique(sample.semantic).tolist())
            # ood is 1 exactly on void-labelled objects, 0 on every labelled pixel
            assert np.array_equal(sample.ood == 0, sample.semantic != VOID)
            if name.startswith("synth-cityscapes"):
                assert not (sample.ood == OOD).any()
    assert len(classes - {VOID}) >= 12  # at least 12 Cityscapes classes appear


def test_anomaly_datasets_contain_ood_objects():
    for name in ("synth-roadanomaly", "synth-acdc-poc", "synth-muad"):
        dataset = get_dataset(name, length=10)
        assert sum(int((s.ood == OOD).sum()) for s in dataset) > 50


def test_object_families_are_disjoint_and_labelled():
    assert not set(ANOMALY_KINDS) & set(OUTLIER_EXPOSURE_KINDS)
    anomaly_codes = {MATERIALS.index(k) for k in ANOMALY_KINDS}
    exposure_codes = {MATERIALS.index(k) for k in OUTLIER_EXPOSURE_KINDS}
    outliers = get_dataset("synth-cityscapes", outliers=3, length=6)
    anomalies = get_dataset("synth-roadanomaly", length=6)
    seen_exposure = seen_anomaly = 0
    for index in range(6):
        with_oe = outliers.layout(index)
        used = set(with_oe.material[np.unique(with_oe.instance)].tolist())
        assert not used & anomaly_codes
        seen_exposure += bool(used & exposure_codes)  # objects may hide behind vehicles
        sample = outliers[index]
        assert np.array_equal(sample.semantic == OUTLIER_EXPOSURE, sample.ood == OOD)
        with_anomalies = anomalies.layout(index)
        used = set(with_anomalies.material[np.unique(with_anomalies.instance)].tolist())
        assert not used & exposure_codes
        seen_anomaly += bool(used & anomaly_codes)
    assert seen_exposure >= 4 and seen_anomaly >= 4


def _flat_camera():
    return Camera(height=64, width=96, focal=100.0, cx=48.0, horizon=20.0, cam_height=1.5)


def test_ground_depth_follows_the_pinhole_model():
    rng = np.random.default_rng(0)
    canvas = generate_layout(48, 96, rng)
    layout = canvas.layout()
    cam = layout.camera
    rows = np.arange(48)[:, None] + 0.5
    expected = cam.focal * cam.cam_height / (rows - cam.horizon)
    ground = layout.facing == Facing.GROUND
    assert ground.any()
    observed = np.broadcast_to(expected, ground.shape)[ground]
    np.testing.assert_allclose(layout.depth[ground], observed, rtol=1e-4)
    assert (layout.depth[layout.facing == Facing.SKY] == SKY_DEPTH).all()


@pytest.mark.parametrize("z", [5.0, 10.0, 20.0])
def test_billboards_scale_with_perspective(z):
    from ood_bench.adapters.synthetic.layout import Street

    cam = _flat_camera()
    canvas = Canvas(cam, Street(3.0, 2, 0.0, 0.0, (2.0, 2.0), (0.0, 0.0), 100.0))
    mask = canvas.draw_billboard(pole_shape, 5, 0.0, z, 1.0, 2.0, np.random.default_rng(0))
    rows, cols = np.nonzero(mask)
    # a 1 m × 2 m plate at depth z spans focal/z pixels per metre, its bottom on the ground row
    assert abs(len(np.unique(cols)) - cam.focal * 1.0 / z) <= 1
    assert abs(len(np.unique(rows)) - cam.focal * 2.0 / z) <= 1
    bottom = cam.horizon + cam.focal * cam.cam_height / z
    assert abs(rows.max() + 1 - bottom) <= 1
    assert (canvas.depth[mask] == z).all()


def test_place_on_road_puts_objects_on_road_pixels():
    rng = np.random.default_rng(3)
    canvas = generate_layout(64, 128, rng)
    road_before = canvas.layout().semantic == 0
    assert place_on_road(canvas, "anomaly", 3, rng) >= 1
    layout = canvas.layout()
    ood = layout.ood == 1
    rows, cols = np.nonzero(ood)
    # every object stands on the road: the pixel under its lowest row was road before pasting
    bottom = rows.max()
    below = min(bottom + 1, 63)
    assert road_before[below, cols[rows == bottom]].any() or road_before[bottom, cols].any()


def test_render_is_pure_and_domain_dependent():
    layout = get_dataset("synth-roadanomaly").layout(0)
    clear = render(layout, "clear", seed=5)
    assert clear.dtype == np.uint8 and clear.shape == (64, 128, 3)
    assert clear.tobytes() == render(layout, "clear", seed=5).tobytes()
    images = {d: render(layout, d, seed=5, severity=0.8) for d in
              ("new-city", "fog", "night", "rain", "snow", "new-city+night")}
    for image in images.values():
        assert np.abs(image.astype(int) - clear).mean() > 8
    assert images["night"].mean() < clear.mean() - 20
    with pytest.raises(OodBenchError, match="unknown synthetic domain 'mars'"):
        render(layout, "fog+mars")
    with pytest.raises(OodBenchError, match="severity"):
        render(layout, "fog", severity=1.5)


def _scene(height=32, width=48):
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.6, (height, width, 3)).astype(np.float32)
    depth = np.tile(np.linspace(2, 200, width, dtype=np.float32), (height, 1))
    ground = np.zeros((height, width), bool)
    ground[height // 2:] = True
    hints = SceneHints(ground, np.zeros_like(ground), np.zeros_like(image))
    return image, depth, hints


def test_fog_follows_koschmieder():
    image, depth, _ = _scene()
    near = fog(image, np.zeros_like(depth), 0.3, np.random.default_rng(0))
    np.testing.assert_allclose(near, image, atol=1e-6)  # no fog at zero distance
    far = fog(image, np.full_like(depth, 1e4), 0.3, np.random.default_rng(0))
    assert far.std(axis=(0, 1)).max() < 1e-4  # pure airlight
    out = fog(image, depth, 0.3, np.random.default_rng(0))
    contrast = np.abs(out - out.mean()).mean(axis=(0, 2))
    assert contrast[: depth.shape[1] // 4].mean() > contrast[-depth.shape[1] // 4:].mean()


def test_night_rain_snow_change_the_image_as_described():
    image, depth, hints = _scene()
    dark = night(image, depth, 1.0, np.random.default_rng(0), hints)
    assert dark[:, depth.shape[1] // 2:].mean() < 0.5 * image.mean()  # far pixels lose light
    wet = rain(image, depth, 0.2, np.random.default_rng(0), hints)
    no_ground = SceneHints(np.zeros_like(hints.ground), hints.sky, hints.emission)
    dry = rain(image, depth, 0.2, np.random.default_rng(0), no_ground)
    near = hints.ground & (depth < 30)  # before the mist takes over
    assert wet[near].mean() < dry[near].mean() - 0.03  # wet ground is darker
    snowy = snow(image, depth, 1.0, np.random.default_rng(0), hints)
    bare = snow(image, depth, 1.0, np.random.default_rng(0), no_ground)
    assert snowy[near].mean() > bare[near].mean() + 0.15  # snow settles on the ground


def test_box_blur_matches_a_direct_average():
    rng = np.random.default_rng(0)
    image = rng.random((7, 9, 3)).astype(np.float32)
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    expected = sum(padded[i:i + 7, j:j + 9] for i in range(3) for j in range(3)) / 9
    np.testing.assert_allclose(box_blur(image, 1), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"height": 8}, "at least 16"),
        ({"length": 0}, "length must be a positive integer"),
        ({"severity": (0.9, 0.1)}, "severity"),
        ({"domains": ("fog", "hail")}, "unknown synthetic domain 'hail'"),
        ({"colour": 3}, "takes no option colour"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(OodBenchError, match=message):
        get_dataset("synth-acdc-poc", **options)


def test_index_out_of_range():
    dataset = get_dataset("synth-roadanomaly", length=3, **SMALL)
    assert _same(dataset[-1], dataset[2])
    with pytest.raises(IndexError):
        dataset[3]
