"""CG-Aug two-stage training: W° initialised as the energy, what each stage trains, paired
batches, pairing by name, recipes, caching, the ``cgaug`` method and released checkpoints."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ood_bench.adapters import get_dataset
from ood_bench.adapters.base import OUTLIER_EXPOSURE, VOID, Sample
from ood_bench.baselines import get_method
from ood_bench.baselines.outlier_exposure import synthetic_outliers
from ood_bench.cgaug.pairs import GeneratedTree, PairedFrames, partner_key
from ood_bench.cgaug.training import (
    REAL,
    SYNTHETIC,
    CGAugRecipe,
    batch_tensors,
    paired_batch,
    train_two_stages,
    with_ood_head,
)
from ood_bench.distributed import Dist
from ood_bench.errors import DataNotFoundError, OodBenchError
from ood_bench.models import create_model
from ood_bench.models.inference import normalize_images

H, W = 32, 64


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("deeplabv3plus-small", num_classes=19, width=8).eval()


def aligned_pairs(count: int = 4, seed: int = 0) -> list[tuple[Sample, Sample]]:
    """Originals and partners whose image is 255 − the original's and whose label is the
    original's with a 254 square: any crop/flip mismatch shows."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(count):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        semantic = rng.integers(0, 19, (H, W), dtype=np.uint8)
        semantic[rng.random((H, W)) < 0.1] = VOID
        generated = semantic.copy()
        generated[10:14, 20:26] = OUTLIER_EXPOSURE
        pairs.append((Sample(image, None, semantic, f"f{i}", None),
                      Sample(255 - image, None, generated, f"f{i}", None)))
    return pairs


def tiny_recipe(**changes) -> CGAugRecipe:
    from dataclasses import replace

    return replace(SYNTHETIC, **{"stage1_steps": 2, "stage2_steps": 2, "batch_size": 2,
                                 **changes})


def state(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


# --- the model -----------------------------------------------------------------------------


def test_the_uncertainty_starts_as_the_energy_and_the_logits_stay():
    model = tiny_model()
    tuned = with_ood_head(model)
    assert model.ood_head is None  # the given model is untouched
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        before, after = model(x), tuned(x, taps=("ood_score",))
    assert torch.equal(before.logits, after.logits)
    energy = -torch.logsumexp(model.classifier(before.features), 1, keepdim=True)
    expected = torch.nn.functional.interpolate(energy, size=(H, W), mode="bilinear",
                                               align_corners=True)[:, 0]
    assert torch.allclose(after.taps["ood_score"], expected, atol=1e-5)


def test_stage_one_updates_only_the_ood_head_and_stage_two_only_its_parts():
    model = tiny_model()
    outliers = synthetic_outliers(H, W)
    pairs = aligned_pairs()
    start = state(with_ood_head(model))
    stage1, _ = train_two_stages(model, pairs, outliers, tiny_recipe(stage2_steps=0),
                                 {"test": 1})
    changed = {k for k, v in stage1.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == {"ood_head.weight"}  # BatchNorm statistics included: nothing else moves
    both, _ = train_two_stages(model, pairs, outliers, tiny_recipe(), {"test": 2})
    changed = {k for k, v in both.state_dict().items() if not torch.equal(v, start[k])}
    trainable = ("aspp.", "bot_fine.", "bot_aspp.", "ood_head.")
    assert "ood_head.weight" in changed and any(k.startswith("aspp.") for k in changed)
    assert all(k.startswith(trainable) for k in changed), changed
    assert not any(p.requires_grad for p in both.parameters())



def test_the_reference_bn_mode_updates_every_batchnorm_but_trains_only_w_o():
    model = tiny_model()
    start = state(with_ood_head(model))
    tuned, _ = train_two_stages(model, aligned_pairs(), synthetic_outliers(H, W),
                                tiny_recipe(stage2_steps=0, bn_mode="all"), {"test": 4})
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, start[k])}
    parameters = {name for name, _ in tuned.named_parameters()}
    assert changed & parameters == {"ood_head.weight"}
    assert any(k.endswith("running_mean") and not k.startswith("aspp.") for k in changed)
    with pytest.raises(OodBenchError, match="bn_mode"):
        tiny_recipe(bn_mode="some")

def test_training_is_cached_and_deterministic():
    model = tiny_model()
    pairs, outliers = aligned_pairs(), synthetic_outliers(H, W)
    first, keys = train_two_stages(model, pairs, outliers, tiny_recipe(), {"test": 3})
    steps = []
    again, keys_again = train_two_stages(model, pairs, outliers, tiny_recipe(), {"test": 3},
                                         on_step=steps.append)
    assert steps == [] and keys == keys_again  # loaded from the cache, not retrained
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# --- batches -------------------------------------------------------------------------------


def test_pairs_get_identical_crops_and_flips_and_the_original_an_outlier():
    pairs = aligned_pairs()
    batch = paired_batch(pairs, seed=0, step=3, batch_size=4, dist=Dist(), crop=(16, 24),
                         flip=True, outliers=synthetic_outliers(H, W), outlier_scales=(1.0,),
                         mixup_max=0.3)
    assert batch.originals.shape == (4, 16, 24, 3) and batch.generated_labels.shape == (4, 16, 24)
    assert np.array_equal(batch.generated, 255 - batch.clean)  # same window, same mirroring
    plain = batch.generated_labels != OUTLIER_EXPOSURE
    pasted = batch.original_labels == OUTLIER_EXPOSURE
    assert pasted.any()
    agree = plain & ~pasted
    assert np.array_equal(batch.original_labels[agree], batch.generated_labels[agree])
    assert ((batch.mix >= 0) & (batch.mix <= 0.3)).all()
    again = paired_batch(pairs, seed=0, step=3, batch_size=4, dist=Dist(), crop=(16, 24),
                         flip=True, outliers=synthetic_outliers(H, W), outlier_scales=(1.0,),
                         mixup_max=0.3)
    assert np.array_equal(again.originals, batch.originals)


def test_mixup_blends_the_clean_original_into_the_generated_image():
    batch = paired_batch(aligned_pairs(), seed=1, step=0, batch_size=2, dist=Dist(), crop=None,
                         flip=False, outliers=None, outlier_scales=(1.0,), mixup_max=0.3)
    images, labels = batch_tensors(batch, torch.device("cpu"))
    p = torch.as_tensor(batch.mix).view(-1, 1, 1, 1)
    expected = p * normalize_images(batch.clean) + (1 - p) * normalize_images(batch.generated)
    assert torch.allclose(images[2:], expected)
    assert torch.equal(images[:2], normalize_images(batch.originals))
    assert labels.shape == (4, H, W) and (labels[2:] == OUTLIER_EXPOSURE).any()


def test_misaligned_pairs_are_rejected():
    original, generated = aligned_pairs(1)[0]
    small = Sample(generated.image[:16], None, generated.semantic[:16], "g", None)
    with pytest.raises(OodBenchError, match="aligned"):
        paired_batch([(original, small)], 0, 0, 1, Dist(), crop=None, flip=False,
                     outliers=None, outlier_scales=(1.0,), mixup_max=0.3)


# --- pairing and the generated tree ----------------------------------------------------------


def write_tree(root, stems, label_value=OUTLIER_EXPOSURE):
    for stem in stems:
        city = stem.split("_")[0]
        image = root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png"
        label = root / "gtFine" / "train" / city / f"{stem}_gtFine_labelTrainIds.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 16, 3), 7, np.uint8)).save(image)
        semantic = np.zeros((8, 16), np.uint8)
        semantic[2:4, 3:6] = label_value
        Image.fromarray(semantic).save(label)


def test_generated_tree_pairs_by_the_city_seq_frame_prefix(tmp_path):
    names = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"]
    originals = [Sample(np.zeros((8, 16, 3), np.uint8), None, np.zeros((8, 16), np.uint8), n,
                        None) for n in names]
    write_tree(tmp_path, ["aachen_000000_000019_rainy_night_Tokyo_bed_0.93",
                          "aachen_000000_000019_foggy_day_Lima_box_0.81",
                          "bochum_000000_000313"])
    tree = GeneratedTree(tmp_path)
    sample = tree[0]
    assert (sample.semantic == OUTLIER_EXPOSURE).sum() == 6 and (sample.ood == 1).sum() == 6
    pairs = PairedFrames(originals, tree, seed=0)
    assert len(pairs) == 2  # aachen_000001 has no partner and is skipped
    assert [originals[o].name for o, _ in pairs.pairs] == [names[0], names[2]]
    assert tree.frame_name(pairs.pairs[0][1]).startswith("aachen_000000_000019_")
    assert partner_key("aachen_000000_0000190_x", set(names)) is None  # whole fields only


def test_generated_tree_errors_name_the_problem(tmp_path):
    with pytest.raises(DataNotFoundError, match="leftImg8bit"):
        GeneratedTree(tmp_path)
    write_tree(tmp_path, ["x_1_2"], label_value=100)
    with pytest.raises(OodBenchError, match="254"):
        GeneratedTree(tmp_path)[0]
    with pytest.raises(OodBenchError, match="no generated image pairs"):
        PairedFrames([Sample(np.zeros((8, 16, 3), np.uint8), None, None, "y_1_2", None)],
                     GeneratedTree(tmp_path))


# --- recipes ---------------------------------------------------------------------------------


def test_the_real_recipe_is_the_papers():
    assert (REAL.stage1_steps, REAL.stage2_steps) == (9 * 371, 40 * 371)
    assert (REAL.batch_size, REAL.crop, REAL.flip) == (8, (700, 700), False)
    assert (REAL.stage1_lr, REAL.stage2_lr, REAL.weight_decay) == (1e-4, 1e-6, 1e-4)
    assert REAL.margins == (10, 5, 5) and REAL.ce_weights == (50, 10)
    assert (REAL.selection_ratio, REAL.mixup_max) == (0.8, 0.3)
    assert REAL.outlier_scales == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_total_steps_are_split_like_the_recipe():
    assert REAL.with_total_steps(49).stage1_steps == 9
    assert REAL.with_total_steps(49).stage2_steps == 40
    short = SYNTHETIC.with_total_steps(1)
    assert (short.stage1_steps, short.stage2_steps) == (1, 0)
    with pytest.raises(OodBenchError, match="steps"):
        SYNTHETIC.with_total_steps(0)


# --- the method ----------------------------------------------------------------------------


def tiny_synthetic(length: int = 6):
    return get_dataset("synth-cityscapes", length=length, height=H, width=W)


def test_cgaug_generates_trains_and_scores_with_the_ood_head():
    from ood_bench.cache import cache_dir

    model, dataset = tiny_model(), tiny_synthetic()
    method = get_method("cgaug")
    method.fit(model, dataset, steps=2, max_frames=3)
    generated = list(cache_dir("cgaug", "generated").glob("*/leftImg8bit/train/*/*.png"))
    assert len(generated) == 3  # the frame limit bounds the generation
    images = normalize_images(np.stack([dataset[i].image for i in range(2)]))
    output = method.score(model, images)
    with torch.no_grad():
        expected = method.model(images, taps=("ood_score",))
    assert torch.equal(output.scores, expected.taps["ood_score"])
    assert torch.equal(output.prediction, expected.logits.argmax(1))
    assert method.model is not model and model.ood_head is None
    assert method.config()["trained"] and method.config()["mode"] == "coherent"


def test_domain_only_partners_have_no_novel_object():
    from ood_bench.cache import cache_dir
    from ood_bench.cgaug.pairs import GeneratedTree

    get_method("cgaug-ds").fit(tiny_model(), tiny_synthetic(), steps=1, max_frames=2)
    (tree,) = cache_dir("cgaug", "generated").iterdir()
    labels = [sample.semantic for sample in GeneratedTree(tree)]
    assert len(labels) == 2 and not any((label == OUTLIER_EXPOSURE).any() for label in labels)
    records = [json.loads(line) for line in (tree / "manifest.jsonl").read_text().splitlines()]
    assert all(record["object_class"] is None for record in records)


def test_unfitted_and_bad_options_are_clear_errors():
    with pytest.raises(OodBenchError, match="not fitted"):
        get_method("cgaug").score(tiny_model(), torch.zeros(1, 3, H, W))
    with pytest.raises(OodBenchError, match="mode"):
        get_method("cgaug", mode="sideways")
    with pytest.raises(OodBenchError, match="generated="):
        get_method("cgaug").fit(tiny_model(), aligned_pairs_as_frames())


def aligned_pairs_as_frames():
    from methods_helpers import NamedFrames

    return NamedFrames([original for original, _ in aligned_pairs(2)], name="real-like")


def test_a_checkpoint_with_an_ood_head_scores_with_it_without_training(tmp_path):
    """The paper's DeepLab_best.pth: a DataParallel state dict holding ``ood_head.weight``."""
    from ood_bench.models import load_model

    source = tiny_model(1)
    trained = with_ood_head(source)
    torch.nn.init.normal_(trained.ood_head.weight)  # a trained head, unlike the classifier
    path = tmp_path / "DeepLab_best.pth"
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, path)
    model = load_model("deeplabv3plus-small", path, width=8)  # the head is detected
    assert torch.equal(model.ood_head.weight, trained.ood_head.weight)
    method, steps = get_method("cgaug"), []
    method.fit(model, tiny_synthetic(), on_step=steps.append)
    assert steps == [] and method.model is model
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        features = model(x).features
        expected = -torch.logsumexp(trained.ood_head(features), 1, keepdim=True)
    expected = torch.nn.functional.interpolate(expected, size=(H, W), mode="bilinear",
                                               align_corners=True)[:, 0]
    assert torch.allclose(method.score(model, x).scores, expected, atol=1e-5)


def test_ablation_modes_of_the_synthetic_generator():
    from ood_bench.cgaug.generators import SYNTHETIC_MODES, SyntheticGenerator
    from ood_bench.cgaug.paste import paste_on_road
    from ood_bench.cgaug.sources import SyntheticObjects

    dataset = get_dataset("synth-cityscapes", length=1)
    rng = np.random.default_rng(0)
    pasted = paste_on_road(dataset[0].semantic, SyntheticObjects().draw(rng), rng)
    seed = next(s for s in range(50) if SyntheticGenerator().generate(
        pasted, s, dataset.layout(0)).domain != "clear")  # a prompt with a domain shift
    out = {mode: SyntheticGenerator(mode=mode).generate(pasted, seed, dataset.layout(0))
           for mode in SYNTHETIC_MODES}
    mask = pasted.mask
    assert out["semantic"].domain == "clear" and out["semantic"].drawn
    assert out["domain"].domain == out["coherent"].domain and not out["domain"].drawn
    # Incoherent: the domain-shifted scene without the object, the object cut from the
    # training-domain rendering.
    assert np.array_equal(out["incoherent"].image[~mask], out["domain"].image[~mask])
    assert np.array_equal(out["incoherent"].image[mask], out["semantic"].image[mask])
    assert not np.array_equal(out["coherent"].image[mask], out["incoherent"].image[mask])
    assert out["either"].image.tobytes() in (out["semantic"].image.tobytes(),
                                             out["domain"].image.tobytes())
    with pytest.raises(OodBenchError, match="mode"):
        SyntheticGenerator(mode="blend")


def test_training_data_is_needed_only_without_a_trained_head_or_to_retrain():
    from ood_bench.cgaug.method import CGAug

    plain = tiny_model(1)
    trained = with_ood_head(plain)
    assert CGAug.needs_training_data(plain, {})
    assert not CGAug.needs_training_data(trained, {})
    assert CGAug.needs_training_data(trained, {"retrain": True})
