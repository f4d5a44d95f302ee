"""Sample grids with label overlays and the ``datasets show`` command."""

import numpy as np
from click.testing import CliRunner
from PIL import Image

from ood_bench.adapters import get_dataset
from ood_bench.adapters.base import OOD, OUTLIER_EXPOSURE, VOID, Sample
from ood_bench.cli.app import LazyGroup
from ood_bench.cli.datasets_show import show
from ood_bench.viz import CITYSCAPES_PALETTE, label_colours, overlay, sample_grid

SMALL = {"height": 32, "width": 64, "length": 8}


def _sample():
    image = np.full((2, 3, 3), 100, np.uint8)
    semantic = np.array([[0, 13, VOID], [OUTLIER_EXPOSURE, 10, VOID]], np.uint8)
    ood = np.array([[0, 0, OOD], [OOD, 0, VOID]], np.uint8)
    return Sample(image, ood, semantic, "x", "fog")


def test_label_colours_use_the_cityscapes_palette():
    colours = label_colours(_sample())
    assert tuple(colours[0, 0]) == (128, 64, 128)  # road
    assert tuple(colours[0, 1]) == (0, 0, 142)  # car
    assert tuple(colours[1, 1]) == (70, 130, 180)  # sky
    assert tuple(colours[0, 2]) == (255, 140, 0)  # OOD
    assert tuple(colours[1, 0]) == (255, 140, 0)  # outlier-exposure object marked OOD
    assert tuple(colours[1, 2]) == (0, 0, 0)  # void
    assert len(CITYSCAPES_PALETTE) == 19


def test_overlay_blends_labelled_pixels_only():
    blended = overlay(_sample(), alpha=0.5)
    assert tuple(blended[0, 0]) == (114, 82, 114)  # (100 + (128, 64, 128)) / 2
    assert tuple(blended[1, 2]) == (100, 100, 100)  # void keeps the image


def test_ood_only_datasets_show_ood_labels():
    sample = _sample()
    sample.semantic = None
    colours = label_colours(sample)
    assert tuple(colours[0, 0]) == (128, 128, 128) and tuple(colours[0, 2]) == (255, 140, 0)


def test_grid_has_one_row_per_dataset_and_domain():
    acdc = get_dataset("synth-acdc-poc", **SMALL)
    clear = get_dataset("synth-roadanomaly", **SMALL)
    grid, titles = sample_grid([clear, acdc], per_domain=2, scale=1)
    assert titles == ["synth-roadanomaly · clear", "synth-acdc-poc · fog", "synth-acdc-poc · night",
                      "synth-acdc-poc · rain", "synth-acdc-poc · snow"]
    cell_w = 2 * 64
    assert grid.shape == (5 * (32 + 4), 2 * cell_w + 4, 3)
    # the first cell of the first row is the first frame, unchanged
    np.testing.assert_array_equal(grid[2:34, :64], clear[0].image)


def _cli():
    group = LazyGroup("oodbench")  # maps OodBenchError to exit code 2 like the real CLI
    group.add_command(show)
    return group


def test_show_writes_a_png(tmp_path):
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(
        _cli(), ["show", "synth-roadanomaly", "synth-acdc-poc", "--out", str(out),
                 "--per-domain", "1", "--scale", "1"],
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size[1] >= 5 * 68


def test_show_bad_input_exits_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(_cli(), ["show", "synth-muad", "--out", str(tmp_path / "g.jpg")])
    assert result.exit_code == 2 and "--out must name a .png file" in result.output
    result = runner.invoke(_cli(), ["show", "synth-mud", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "Did you mean 'synth-muad'" in result.output
    assert not (tmp_path / "g.png").exists()

