"""Model registry, forward contract, decoder wiring, checkpoint I/O and inference (fast models)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from models_helpers import randomize_bn

from ood_bench.errors import DataNotFoundError, OodBenchError, UnknownNameError
from ood_bench.models import SegOutput, create_model, list_models
from ood_bench.models.checkpoint import (
    load_checkpoint,
    load_model,
    read_state_dict,
    save_checkpoint,
)
from ood_bench.models.inference import infer, normalize_images, predict, window_offsets

SMALL = dict(num_classes=5, width=8)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus-small", **SMALL)
    randomize_bn(model)
    return model.eval()


# --- registry and forward contract -------------------------------------------------------------


def test_registry_lists_every_variant_and_rejects_unknown_names():
    assert {
        "deeplabv3plus-small",
        "deeplabv3plus-r50",
        "deeplabv3plus-r101",
        "deeplabv3plus-wrn38",
    } <= set(list_models())
    assert list_models("deeplabv3plus-r*") == ["deeplabv3plus-r101", "deeplabv3plus-r50"]
    with pytest.raises(UnknownNameError, match="deeplabv3plus-small"):
        create_model("deeplabv3plus-smal")
    with pytest.raises(OodBenchError, match="width must be a positive integer"):
        create_model("deeplabv3plus-small", width=0)
    with pytest.raises(OodBenchError, match="num_classes"):
        create_model("deeplabv3plus-r50", num_classes=0)


# (feature stride, feature channels, trunk channels) each model must deliver
CONTRACT = {
    "deeplabv3plus-small": (4, 128, 256),
    "deeplabv3plus-r50": (4, 256, 2048),
    "deeplabv3plus-r101": (4, 256, 2048),
    "deeplabv3plus-wrn38": (2, 256, 4096),
}


@pytest.mark.parametrize("name", list_models("deeplabv3plus-*"))  # mask2former-*: own tests
def test_forward_contract(name):
    """Every registered model: logits at input size, features/trunk at their native stride."""
    stride, feat_ch, trunk_ch = CONTRACT[name]
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 48, 80)
    with torch.inference_mode():
        out = model(x)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 7, 48, 80) and out.logits.dtype == torch.float32
    assert out.features.shape == (2, feat_ch, 48 // stride, 80 // stride)
    assert out.features.dtype == torch.float32
    assert set(out.taps) == {"trunk"}
    assert out.taps["trunk"].shape == (2, trunk_ch, 6, 10)  # output stride 8
    assert torch.isfinite(out.logits).all()


def test_small_model_fits_the_parameter_budget():
    n = sum(p.numel() for p in create_model("deeplabv3plus-small").parameters())
    assert n <= 3_000_000


def test_logits_are_the_classifier_applied_to_features_then_upsampled(small):
    x = torch.randn(1, 3, 40, 72)
    with torch.inference_mode():
        out = small(x)
        native = F.conv2d(out.features, small.classifier.weight)
        expected = F.interpolate(native, size=(40, 72), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out.logits, expected)


def test_decoder_wiring_matches_a_functional_reference(small):
    """features = head(cat(bot_fine(low), up(bot_aspp(cat(pool, 1x1, atrous...)))))."""
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        out = small(x, taps=["trunk", "low_level", "aspp", "decoder_input"])
        high, low = out.taps["trunk"], out.taps["low_level"]
        aspp = small.aspp
        pooled = aspp.img_conv(high.mean((2, 3), keepdim=True)).expand(-1, -1, *high.shape[-2:])
        branches = [pooled] + [b(high) for b in aspp.features]
        ref_aspp = torch.cat(branches, 1)
        up = F.interpolate(
            small.bot_aspp(ref_aspp), size=low.shape[-2:], mode="bilinear", align_corners=True
        )
        dec0 = torch.cat([small.bot_fine(low), up], 1)
        torch.testing.assert_close(out.taps["aspp"], ref_aspp)
        torch.testing.assert_close(out.taps["decoder_input"], dec0)
        torch.testing.assert_close(out.features, small.head(dec0))
    assert low.shape[-2:] == (16, 24) and high.shape[-2:] == (8, 12)
    # the atrous branches use the documented rates
    assert [b[0].dilation[0] for b in aspp.features[1:]] == [2, 4, 6]


def test_unknown_tap_and_bad_input_are_rejected(small):
    with pytest.raises(OodBenchError, match="unknown taps"):
        small(torch.randn(1, 3, 32, 32), taps=["nope"])
    with pytest.raises(OodBenchError, match="N×3×H×W"):
        small(torch.randn(1, 1, 32, 32))


def test_param_groups_partition_the_parameters():
    model = create_model("deeplabv3plus-small", ood_head=True)
    groups = model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    named = {id(p): n for n, p in model.named_parameters()}
    assert {named[id(p)] for p in groups["classifier"]} == {"final.6.weight"}
    assert {named[id(p)] for p in groups["ood_head"]} == {"ood_head.weight"}
    assert {named[id(p)].split(".")[0] for p in groups["bottlenecks"]} == {"bot_fine", "bot_aspp"}
    assert all(named[id(p)].startswith("aspp.") for p in groups["aspp"])
    assert all(named[id(p)].startswith("layer") for p in groups["trunk"])
    assert create_model("deeplabv3plus-small").param_groups()["ood_head"] == []


def test_ood_head_starts_as_the_energy_of_the_classifier():
    model = create_model("deeplabv3plus-small", num_classes=4, width=8, ood_head=True).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.inference_mode():
        out = model(x)
        native = F.conv2d(out.features, model.classifier.weight)
        energy = -torch.logsumexp(native, 1, keepdim=True)
        expected = F.interpolate(energy, size=(32, 48), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out.taps["ood_logits"], native)
    expected = expected[:, 0]
    torch.testing.assert_close(out.taps["ood_score"], expected)
    with pytest.raises(OodBenchError, match="ood_head=True"):
        create_model("deeplabv3plus-small").init_ood_head()


def test_resnet_trunk_is_dilated_to_output_stride_8():
    model = create_model("deeplabv3plus-r50")
    conv2 = {n: m for n, m in model.named_modules() if n.endswith("conv2")}
    assert {m.dilation[0] for n, m in conv2.items() if n.startswith("layer3")} == {2}
    assert {m.dilation[0] for n, m in conv2.items() if n.startswith("layer4")} == {4}
    assert {m.stride[0] for n, m in conv2.items() if n.startswith(("layer3", "layer4"))} == {1}
    assert model.layer0[0].kernel_size == (7, 7)
    assert len(model.layer3) == 6 and len(create_model("deeplabv3plus-r101").layer3) == 23


# --- checkpoints -------------------------------------------------------------------------------


def _fresh_small():
    return create_model("deeplabv3plus-small", **SMALL).eval()


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "module", "wrapped+module"])
@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_torch_checkpoint_layouts_round_trip(small, tmp_path, layout, suffix):
    state = small.state_dict()
    if "module" in layout:
        state = {f"module.{k}": v for k, v in state.items()}
    obj = state
    if layout in ("state_dict", "wrapped+module"):
        obj = {"state_dict": state, "epoch": 3, "mean_iu": np.float64(0.81)}
    elif layout == "model":
        obj = {"model": state, "optimizer": {"lr": 0.01}}
    path = tmp_path / f"ckpt{suffix}"
    torch.save(obj, path)
    model = _fresh_small()
    assert load_checkpoint(model, path) == ([], [])
    _assert_same_weights(model, small)


def test_safetensors_round_trip_is_atomic_and_exact(small, tmp_path):
    path = save_checkpoint(small, tmp_path / "sub" / "small.safetensors")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["small.safetensors"]
    assert set(read_state_dict(path)) == set(small.state_dict())
    model = load_model("deeplabv3plus-small", path, **SMALL)
    assert not model.training
    _assert_same_weights(model, small)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x).logits, small(x).logits)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_renamed_key_fails_naming_both_keys(small, tmp_path):
    state = dict(small.state_dict())
    state["bot_fine.weights"] = state.pop("bot_fine.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(OodBenchError) as err:
        load_checkpoint(_fresh_small(), tmp_path / "bad.pth")
    msg = str(err.value)
    assert "bad.pth" in msg and "1 missing, 1 unexpected, 0 wrong shape" in msg
    assert "missing     bot_fine.weight" in msg
    assert "unexpected  bot_fine.weights" in msg
    # non-strict loads the rest and reports the difference
    model = _fresh_small()
    assert load_checkpoint(model, state, strict=False) == (
        ["bot_fine.weight"],
        ["bot_fine.weights"],
    )


def test_shape_mismatch_fails_even_when_not_strict(small):
    other = create_model("deeplabv3plus-small", num_classes=6, width=8)
    with pytest.raises(
        OodBenchError,
        match=r"final\.6\.weight\s+model \(6, 32, 1, 1\) vs "
        r"checkpoint \(5, 32, 1, 1\)",
    ):
        load_checkpoint(other, small.state_dict(), strict=False)


def test_ood_head_mismatch_explains_the_fix(small):
    with pytest.raises(OodBenchError, match="build the model with ood_head=True"):
        load_checkpoint(
            _fresh_small(), {**small.state_dict(), "ood_head.weight": torch.zeros(5, 32, 1, 1)}
        )


@pytest.mark.parametrize("name", ["deeplabv3plus-small", "mask2former-tiny"])
def test_load_model_builds_the_ood_head_a_checkpoint_carries(name, tmp_path):
    """DeepLab_best.pth / M2F_best.pth: the trained head loads without ood_head=True."""
    torch.manual_seed(0)
    trained = create_model(name, ood_head=True)
    path = tmp_path / "best.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, path)
    loaded = load_model(name, path)
    assert loaded.ood_head is not None
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(OodBenchError, match="ood_head=True"):
        load_model(name, path, ood_head=False)  # an explicit choice is respected
    torch.save(create_model(name).state_dict(), path)
    assert load_model(name, path).ood_head is None


def test_unreadable_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="missing.pth"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(OodBenchError, match=r"expected one of \.pth, \.pt, \.safetensors"):
        read_state_dict(tmp_path / "w.ckpt")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(OodBenchError, match="cannot read checkpoint .*junk.pth"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(OodBenchError, match="name the file"):
        save_checkpoint({"a": torch.zeros(1)}, tmp_path / "out.pth")


def test_numpy_metadata_pickled_by_numpy_1_is_accepted(small, tmp_path):
    """NVIDIA-era checkpoints store ``mean_iu`` etc. as numpy-1.x objects (``numpy.core``)."""
    extra = {"mean_iu": np.float64(0.8), "hist": np.arange(3)}
    torch.save({"state_dict": small.state_dict(), **extra}, tmp_path / "np2.pth")
    with (
        zipfile.ZipFile(tmp_path / "np2.pth") as src,
        zipfile.ZipFile(tmp_path / "np1.pth", "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                assert b"numpy.core.multiarray" in data
            dst.writestr(item, data)
    model = _fresh_small()
    load_checkpoint(model, tmp_path / "np1.pth")
    _assert_same_weights(model, small)


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    torch.save({"state_dict": {"a": torch.zeros(1)}, "evil": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(OodBenchError, match="evil.pth"):
        read_state_dict(tmp_path / "evil.pth")
    assert "pwned" not in capsys.readouterr().out


# --- inference ---------------------------------------------------------------------------------


def test_normalisation_uses_imagenet_statistics():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = (255, 0, 128)
    x = normalize_images(image)
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor(expected))
    torch.testing.assert_close(
        x[0, :, 1, 2], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    )
    with pytest.raises(OodBenchError, match="uint8"):
        normalize_images(image.astype(np.float32))
    with pytest.raises(OodBenchError, match="H×W×3"):
        normalize_images(np.zeros((4, 4), np.uint8))


def test_predict_equals_a_manual_forward_and_batches_consistently(small):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    out = predict(small, images, batch_size=2)
    with torch.inference_mode():
        ref = small(normalize_images(images))
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.features, ref.features)
    assert out.taps == {}
    single = predict(small, images[1])
    torch.testing.assert_close(single.logits[0], ref.logits[1], rtol=1e-4, atol=1e-4)


def test_inference_restores_training_mode():
    model = create_model("deeplabv3plus-small", **SMALL).train()
    infer(model, torch.randn(1, 3, 32, 32))
    assert model.training


def test_window_offsets_cover_the_axis():
    assert window_offsets(10, 4, 3) == [0, 3, 6]
    assert window_offsets(11, 4, 3) == [0, 3, 6, 7]
    assert window_offsets(4, 8, 2) == [0]


@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 300))
def test_window_offsets_tile_every_pixel_without_gaps(size, window, stride):
    if stride > window < size:
        with pytest.raises(OodBenchError, match="gaps"):
            window_offsets(size, window, stride)
        return
    offsets = window_offsets(size, window, stride)
    covered = np.zeros(size, bool)
    for o in offsets:
        covered[o : o + window] = True
    assert covered.all() and offsets[0] == 0 and offsets == sorted(set(offsets))
    assert offsets[-1] + min(window, size) == size  # the last window is flush with the border
    assert all(b - a <= stride for a, b in zip(offsets[:-1], offsets[1:], strict=True))


def test_slide_with_one_covering_window_equals_whole(small):
    x = torch.randn(2, 3, 48, 64)
    whole = infer(small, x)
    slide = infer(small, x, mode="slide", window=(64, 128))
    torch.testing.assert_close(slide.logits, whole.logits)
    torch.testing.assert_close(slide.features, whole.features)


def test_slide_averages_overlapping_windows(small):
    """Hand-stitched reference: average the window logits/features where windows overlap."""
    x = torch.randn(1, 3, 32, 80)
    out = infer(small, x, mode="slide", window=(32, 48), stride=(32, 16), batch_size=2)
    logit_sum = torch.zeros(5, 32, 80)
    count = torch.zeros(1, 32, 80)
    feat_sum = torch.zeros(32, 8, 20)
    feat_count = torch.zeros(1, 8, 20)
    with torch.inference_mode():
        for x0 in (0, 16, 32):  # offsets 0, 16 and the flush window at 80 - 48 = 32
            o = small(x[..., x0 : x0 + 48])
            logit_sum[:, :, x0 : x0 + 48] += o.logits[0]
            count[:, :, x0 : x0 + 48] += 1
            feat_sum[:, :, x0 // 4 : x0 // 4 + 12] += o.features[0]
            feat_count[:, :, x0 // 4 : x0 // 4 + 12] += 1
    torch.testing.assert_close(out.logits[0], logit_sum / count)
    torch.testing.assert_close(out.features[0], feat_sum / feat_count)
    assert count.min() == 1 and count.max() == 3  # columns 32..47 lie in all three windows
    # a window offset that is not on the feature grid cannot stitch features
    with pytest.raises(OodBenchError, match="feature stride 4"):
        infer(small, x, mode="slide", window=(32, 46), stride=(32, 16))
    no_feats = infer(small, x, mode="slide", window=(32, 46), stride=(32, 16), features=False)
    assert no_feats.features.numel() == 0 and no_feats.logits.shape == (1, 5, 32, 80)


def test_flip_tta_averages_with_the_flipped_back_prediction(small):
    x = torch.randn(1, 3, 32, 48)
    out = infer(small, x, flip=True)
    with torch.inference_mode():
        a, b = small(x), small(x.flip(-1))
    torch.testing.assert_close(out.logits, (a.logits + b.logits.flip(-1)) / 2)
    torch.testing.assert_close(out.features, (a.features + b.features.flip(-1)) / 2)
    # flip TTA makes the prediction exactly flip-equivariant
    flipped = infer(small, x.flip(-1), flip=True)
    torch.testing.assert_close(flipped.logits.flip(-1), out.logits, rtol=1e-4, atol=1e-5)


def test_inference_argument_errors(small):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(OodBenchError, match="mode must be"):
        infer(small, x, mode="tiles")
    with pytest.raises(OodBenchError, match="CUDA"):
        infer(small, x, amp="bf16")
    with pytest.raises(OodBenchError, match="batch_size"):
        infer(small, x, batch_size=0)
