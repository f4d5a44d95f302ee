"""Trained methods (RPL, RuleAug, OOD + RuleAug): losses against hand-computed values, the
outlier-exposure pasting, the augmentations, and the loop's determinism, resumption, caching and
2-process DDP."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from methods_helpers import NamedFrames, random_samples

from ood_bench.adapters.base import OUTLIER_EXPOSURE, VOID
from ood_bench.baselines import augment, get_method
from ood_bench.baselines.base import model_fingerprint
from ood_bench.baselines.posthoc import energy_score
from ood_bench.baselines.rpl import (
    ResidualBlock,
    corocl_loss,
    inlier_losses,
    positive_energy_loss,
    residual_logits,
    sample_contrast_pixels,
    softmax_entropy,
)
from ood_bench.baselines.ruleaug import energy_margin_loss
from ood_bench.baselines.training import frame_indices
from ood_bench.distributed import Dist
from ood_bench.errors import OodBenchError
from ood_bench.models import create_model
from ood_bench.models.inference import normalize_images


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("deeplabv3plus-small", num_classes=19, width=8).eval()


def frames(count: int = 4, name: str = "tiny-train"):
    return NamedFrames(random_samples(count, 32, 64, seed=3), name=name)


def trained_method(name: str, model, dataset, **fit_options):
    """``name`` fitted with the synthetic recipe (and the synthetic outlier family)."""
    from ood_bench.baselines.outlier_exposure import synthetic_outliers

    method = get_method(name, recipe="synthetic")
    if name != "ruleaug":
        fit_options.setdefault("outliers", synthetic_outliers(32, 64))
    method.fit(model, dataset, **fit_options)
    return method


def state(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- losses -------------------------------------------------------------------------------------


def test_softmax_entropy_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert softmax_entropy(logits).item() == pytest.approx(expected, rel=1e-6)


def test_inlier_losses_use_the_frozen_prediction_on_inlier_pixels_only():
    f = torch.tensor([[1.0, 0.0, 5.0], [0.0, 2.0, -5.0]]).view(1, 2, 1, 3)
    g = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]]).view(1, 2, 1, 3)
    label = torch.tensor([[[7, 254, 255]]])
    ce, mse = inlier_losses(f, g, label)
    # Pixel 0 only: the frozen model predicts class 1 (logit 1 > 0).
    p_f = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    p_g = [1 / (math.exp(1) + 1), math.exp(1) / (math.exp(1) + 1)]

    def h(p):
        return -sum(q * math.log(q) for q in p)

    assert ce.item() == pytest.approx(-math.log(p_f[1]), rel=1e-6)
    assert mse.item() == pytest.approx((h(p_f) - h(p_g)) ** 2, abs=1e-7)


def test_positive_energy_loss_by_hand():
    f = torch.tensor([[2.0, -9.0, 0.0], [1.0, -9.0, 0.0]]).view(1, 2, 1, 3)
    label = torch.tensor([[[254, 254, 3]]])
    lse0 = math.log(math.exp(2) + math.exp(1))  # > 0: counts
    # pixel 1: logsumexp(-9, -9) < 0 → hinge gives 0; pixel 2 is an inlier
    assert positive_energy_loss(f, label).item() == pytest.approx(lse0 / 2, rel=1e-6)
    assert positive_energy_loss(f, torch.tensor([[[0, 1, 2]]])).item() == 0.0


def corocl_by_hand(anchors, anchor_labels, others, other_labels, tau):
    """CoroCL written out with Python loops over anchors and positives."""
    contrast = anchors + others
    labels = anchor_labels + other_labels
    total = 0.0
    for i, (z, y) in enumerate(zip(anchors, anchor_labels, strict=True)):
        s = [sum(a * b for a, b in zip(z, c, strict=True)) / tau for c in contrast]
        top = max(s)
        s = [v - top for v in s]
        negatives = sum(math.exp(v) for v, lab in zip(s, labels, strict=True) if lab != y)
        terms = [v - math.log(math.exp(v) + negatives)
                 for j, (v, lab) in enumerate(zip(s, labels, strict=True)) if lab == y and j != i]
        total += -sum(terms) / len(terms)
    return total / len(anchors)


def test_corocl_matches_the_written_out_formula():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 3))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    anchors, others = vectors[:4].tolist(), vectors[4:].tolist()
    anchor_labels, other_labels = [1, 1, 0, 0], [1, 0]
    got = corocl_loss(torch.tensor(anchors), torch.tensor(anchor_labels),
                      torch.tensor(others), torch.tensor(other_labels), temperature=0.1)
    expected = corocl_by_hand(anchors, anchor_labels, others, other_labels, 0.1)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_corocl_of_two_separated_clusters_is_near_its_minimum():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    anchors = torch.stack([a, a, b, b])
    labels = torch.tensor([1, 1, 0, 0])
    loss = corocl_loss(anchors, labels, anchors.clone(), labels.clone(), temperature=0.1)
    # Each positive (similarity 1) competes with the 4 copies of the other point (similarity 0).
    assert loss.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 4)), rel=1e-3)
    swapped = corocl_loss(anchors, 1 - labels, anchors.clone(), labels.clone(), 0.1)
    assert swapped.item() > 5


def test_contrast_pixels_are_sampled_per_group_with_the_smallest_count():
    projections = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2) + 1
    labels = torch.tensor([[[254, 254], [1, 255]], [[254, 0], [0, 0]]])
    generator = torch.Generator().manual_seed(0)
    anchors, anchor_labels, others, other_labels = sample_contrast_pixels(
        projections, labels, 1, 512, generator)
    # city: 2 anomaly, 1 inlier; context: 1 anomaly, 3 inlier → n = 1
    assert anchors.shape == others.shape == (2, 3)
    assert anchor_labels.tolist() == other_labels.tolist() == [1.0, 0.0]
    z = F.normalize(projections, dim=1).permute(0, 2, 3, 1)
    assert any(torch.allclose(anchors[0], z[0, 0, c]) for c in range(2))
    torch.testing.assert_close(anchors[1], z[0, 1, 0])
    torch.testing.assert_close(others[0], z[1, 0, 0])
    assert sample_contrast_pixels(projections, torch.zeros_like(labels), 1, 512,
                                  generator) is None


def test_energy_margin_loss_by_hand():
    logits = torch.tensor([[0.0, -1.0, 2.0, 0.0], [0.0, -1.0, 2.0, 9.0]]).view(1, 2, 1, 4)
    label = torch.tensor([[[3, 254, 254, 255]]])
    energy = [-math.log(2.0), -math.log(2 * math.exp(-1)), -math.log(2 * math.exp(2))]
    m_in, m_out = -1.0, -1.0
    inlier = max(0.0, energy[0] - m_in) ** 2
    outlier = (max(0.0, m_out - energy[1]) ** 2 + max(0.0, m_out - energy[2]) ** 2) / 2
    got = energy_margin_loss(logits, label, m_in, m_out)
    assert got.item() == pytest.approx(inlier + outlier, rel=1e-6)


# --- outlier exposure ----------------------------------------------------------------------------


def test_paste_copies_only_object_pixels_into_a_random_box_position():
    from ood_bench.baselines.outlier_exposure import OutlierImage, paste_objects

    source_image = np.full((10, 10, 3), 7, np.uint8)
    source_label = np.zeros((10, 10), np.uint8)
    source_label[2:5, 3] = OUTLIER_EXPOSURE  # an L shape: box rows 2–4, cols 3–5
    source_label[4, 3:6] = OUTLIER_EXPOSURE
    source_image[source_label == OUTLIER_EXPOSURE] = 200
    image = np.zeros((6, 8, 3), np.uint8)
    label = np.full((6, 8), 5, np.uint8)
    seen = set()
    for seed in range(300):
        out_image, out_label = paste_objects(image, label, OutlierImage(source_image,
                                                                        source_label),
                                             np.random.default_rng(seed))
        rows, cols = np.nonzero(out_label == OUTLIER_EXPOSURE)
        y, x = rows.min(), cols.min()
        seen.add((y, x))
        expected = np.full((6, 8), 5, np.uint8)
        expected[y:y + 3, x:x + 3][source_label[2:5, 3:6] == OUTLIER_EXPOSURE] = 254
        np.testing.assert_array_equal(out_label, expected)
        np.testing.assert_array_equal(out_image[..., 0], np.where(expected == 254, 200, 0))
    assert label.max() == 5 and image.max() == 0  # inputs untouched
    assert seen == {(y, x) for y in range(4) for x in range(6)}  # every fitting position


def test_fit_to_size_centres_crops_and_pads_with_void():
    from ood_bench.baselines.outlier_exposure import OutlierImage, fit_to_size

    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    label = np.full((4, 6), OUTLIER_EXPOSURE, np.uint8)
    out = fit_to_size(OutlierImage(image, label), 6, 4)
    np.testing.assert_array_equal(out.image[1:5], image[:, 1:5])
    assert (out.label[[0, 5]] == VOID).all() and (out.image[[0, 5]] == 0).all()
    assert (out.label[1:5] == OUTLIER_EXPOSURE).all()


def test_coco_outliers_read_the_meta_ood_layout(tmp_path):
    from PIL import Image

    from ood_bench.baselines.outlier_exposure import CocoOutliers
    from ood_bench.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="ood_seg_train2017"):
        CocoOutliers(tmp_path)
    (tmp_path / "train2017").mkdir()
    masks = tmp_path / "annotations" / "ood_seg_train2017"
    masks.mkdir(parents=True)
    for i in range(3):
        name = f"{i:012d}"
        Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)).save(
            tmp_path / "train2017" / f"{name}.jpg")
        mask = np.zeros((8, 10), np.uint8)
        mask[2:4, 1 + i:5] = 254
        Image.fromarray(mask).save(masks / f"{name}.png")
    source = CocoOutliers(tmp_path, proxy_size=None)
    assert len(source) == 3
    item = source[2]
    assert item.image.shape == (8, 10, 3)
    assert set(np.unique(item.label)) == {0, 254} and (item.label == 254).sum() == 4
    assert len(CocoOutliers(tmp_path, proxy_size=2, seed=1)) == 2
    (tmp_path / "train2017" / "000000000001.jpg").unlink()
    with pytest.raises(DataNotFoundError, match="000000000001.jpg"):
        source[1]


def test_synthetic_outliers_hold_objects():
    from ood_bench.baselines.outlier_exposure import synthetic_outliers

    source = synthetic_outliers(32, 64)
    for i in range(3):
        item = source[i]
        assert item.image.shape == (32, 64, 3) and (item.label == OUTLIER_EXPOSURE).any()
        assert set(np.unique(item.label)) <= {0, OUTLIER_EXPOSURE}


# --- augmentations --------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", [*augment.PHOTOMETRIC, *augment.WEATHER,
                                       augment.rule_augment])
def test_augmentations_keep_dtype_shape_and_are_seeded(transform):
    image = random_samples(1, 24, 40, seed=1)[0].image
    out = transform(image, np.random.default_rng(5))
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, transform(image, np.random.default_rng(5)))
    if transform is not augment.rule_augment:
        assert not np.array_equal(out, image)
        assert not np.array_equal(out, transform(image, np.random.default_rng(6)))


def test_weather_styles_move_brightness_the_expected_way():
    image = np.full((32, 48, 3), 120, np.uint8)
    image[:, ::2] = 60
    rng = np.random.default_rng
    assert augment.night_style(image, rng(0)).mean() < 0.5 * image.mean()
    fog = augment.fog_style(image, rng(0)).astype(float)
    assert fog.mean() > image.mean() and fog.std() < image.astype(float).std()
    assert augment.snow_style(image, rng(0)).mean() > image.mean()


# --- the loop ------------------------------------------------------------------------------------


def test_ranks_split_the_global_batch_of_one_process():
    one = frame_indices(3, 5, 4, 10, Dist(0, 1))
    two = frame_indices(3, 5, 2, 10, Dist(0, 2)) + frame_indices(3, 5, 2, 10, Dist(1, 2))
    assert one == two
    epoch = [i for step in range(5) for _, i in frame_indices(0, step, 2, 10, Dist())]
    assert sorted(epoch) == list(range(10))  # each frame once per epoch


def fitted_rpl(model, dataset, seed=0, steps=3, **options):
    return trained_method("rpl", model, dataset, seed=seed, steps=steps, **options)


def test_rpl_keeps_the_segmentation_and_the_frozen_model():
    model = tiny_model()
    before = model_fingerprint(model)
    flags = [p.requires_grad for p in model.parameters()]
    method = fitted_rpl(model, frames())
    assert model_fingerprint(model) == before  # frozen: weights and BN statistics unchanged
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and not model.training
    images = normalize_images(np.stack([s.image for s in random_samples(2, 32, 64, seed=9)]))
    out = method.score(model, images)
    with torch.no_grad():
        plain = model(images, taps=("trunk", "decoder_input"))
        torch.testing.assert_close(out.prediction, plain.logits.argmax(1), rtol=0, atol=0)
        dec0 = plain.taps["decoder_input"]
        residual, _ = method.block(plain.taps["trunk"], dec0.shape[-2:])
        expected = energy_score(residual_logits(model, dec0, residual, (32, 64)))
    torch.testing.assert_close(out.scores, expected)
    assert not torch.allclose(out.scores, energy_score(plain.logits))


def test_residual_block_is_kaiming_initialised_like_the_paper():
    block = ResidualBlock.for_model(tiny_model())
    fan_in = block.residual.weight.shape[1]
    assert block.residual.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    assert block.residual.out_channels == tiny_model().head[0].in_channels
    with pytest.raises(OodBenchError, match="DeepLabv3\\+"):
        ResidualBlock.for_model(torch.nn.Conv2d(3, 3, 1))


def test_same_seed_same_weights_and_the_result_is_cached(tmp_path, monkeypatch):
    model, dataset = tiny_model(), frames()
    first = state(fitted_rpl(model, dataset).block)
    monkeypatch.setenv("OODBENCH_CACHE", str(tmp_path / "other"))
    second = state(fitted_rpl(model, dataset).block)
    assert_same_state(first, second)
    calls = []
    cached = fitted_rpl(model, dataset, on_step=calls.append)
    assert calls == [] and cached.trained_key is not None  # loaded, not retrained
    assert_same_state(first, state(cached.block))
    other_seed = state(fitted_rpl(model, dataset, seed=1).block)
    assert not torch.equal(other_seed["residual.weight"], first["residual.weight"])


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", ["rpl", "ood+ruleaug"])
def test_an_interrupted_fit_resumes_to_the_uninterrupted_weights(name, tmp_path, monkeypatch):
    model, dataset = tiny_model(), frames()

    def trained(method):
        return state(method.block if name == "rpl" else method.model)

    uninterrupted = trained_method(name, model, dataset, steps=4)
    monkeypatch.setenv("OODBENCH_CACHE", str(tmp_path / "resumed"))

    def stop_after_two(done):
        if done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        trained_method(name, model, dataset, steps=4, checkpoint_every=1,
                       on_step=stop_after_two)
    checkpoints = list((tmp_path / "resumed").rglob("*.checkpoint.pt"))
    assert len(checkpoints) == 1
    steps_run = []
    resumed = trained_method(name, model, dataset, steps=4, checkpoint_every=1,
                             on_step=steps_run.append)
    assert steps_run == [3, 4]
    assert not checkpoints[0].exists()  # removed once the result is stored
    assert_same_state(trained(uninterrupted), trained(resumed))


def test_ruleaug_fine_tunes_a_copy_and_predicts_with_it():
    model, dataset = tiny_model(), frames()
    before = model_fingerprint(model)
    method = trained_method("ruleaug", model, dataset, steps=2)
    assert model_fingerprint(model) == before
    assert method.changes_segmentation and method.config()["name"] == "ruleaug"
    images = normalize_images(np.stack([s.image for s in random_samples(2, 32, 64, seed=9)]))
    out = method.score(model, images)
    with torch.no_grad():
        tuned = method.model(images).logits
    torch.testing.assert_close(out.prediction, tuned.argmax(1), rtol=0, atol=0)
    torch.testing.assert_close(out.scores, energy_score(tuned))
    assert model_fingerprint(method.model) != before


def test_bad_options_are_rejected():
    with pytest.raises(OodBenchError, match="recipe must be"):
        get_method("rpl", recipe="fast")
    with pytest.raises(OodBenchError, match="steps must be a positive integer"):
        get_method("ruleaug").fit(tiny_model(), frames(), steps=0)
    with pytest.raises(OodBenchError, match="not fitted"):
        get_method("rpl").score(tiny_model(), torch.zeros(1, 3, 32, 64))
    with pytest.raises(OodBenchError, match="needs COCO"):
        get_method("ood+ruleaug").fit(tiny_model(), frames(name="cityscapes-train"), steps=1)


# --- DDP ------------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init_file: str, cache: str, out: str) -> None:
    import os

    import torch.distributed as torch_dist

    os.environ["OODBENCH_CACHE"] = cache
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                  world_size=world)
    try:
        method = trained_method("rpl", tiny_model(), frames(), steps=2, distributed=True)
        torch.save(state(method.block), f"{out}/rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_two_process_gloo_training_keeps_ranks_in_sync(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "cache"),
                                str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert_same_state(rank0, rank1)
    model = tiny_model()
    torch.manual_seed(0)  # the seed fit() initialises the block with
    initial = state(ResidualBlock.for_model(model))
    assert not torch.equal(rank0["residual.weight"], initial["residual.weight"])
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1  # rank 0 wrote it
