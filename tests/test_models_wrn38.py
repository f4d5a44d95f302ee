"""DeepLabv3+ WideResNet-38: the published state-dict schema, the original numerics (against a
functional re-derivation from the state dict), and checkpoint round trips in every format."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import ood_bench.models
from ood_bench.errors import OodBenchError
from ood_bench.models import create_model
from ood_bench.models.checkpoint import load_checkpoint, load_model, save_checkpoint

# A verbatim copy of the published DeepWV3Plus (+ ood_head) state-dict schema (key, shape, dtype).
SCHEMA = Path(ood_bench.models.__file__).parent / "schemas" / "deepwv3plus_state_dict.tsv"
SCHEMA_ROWS = [
    (r["key"], r["shape"], r["dtype"]) for r in csv.DictReader(SCHEMA.open(), delimiter="\t")
]


@pytest.fixture(scope="module")
def wrn38():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus-wrn38", ood_head=True).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial eval statistics
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        model.ood_head.weight.normal_(generator=gen)  # differ from the classifier
    return model


def _schema(state):
    return [(k, str(tuple(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]


def test_state_dict_equals_the_published_schema(wrn38):
    assert len(SCHEMA_ROWS) == 269
    assert _schema(wrn38.state_dict()) == SCHEMA_ROWS  # keys, order, shapes, dtypes
    assert sum(p.numel() for p in wrn38.parameters()) == 137_108_800


def test_without_ood_head_the_original_checkpoint_schema_remains():
    model = create_model("deeplabv3plus-wrn38")
    assert _schema(model.state_dict()) == [r for r in SCHEMA_ROWS if r[0] != "ood_head.weight"]


def test_trunk_structure_facts(wrn38):
    """Dropout2d p=0.3/0.5 just before the last conv of mod6/mod7; OS-8 dilations; maxpools."""
    for mod, p in (("mod6", 0.3), ("mod7", 0.5)):
        convs = getattr(wrn38, mod).block1.convs
        names = [n for n, _ in convs.named_children()]
        assert names == ["conv1", "bn2", "conv2", "bn3", "dropout", "conv3"]
        assert isinstance(convs.dropout, torch.nn.Dropout2d) and convs.dropout.p == p
    dil = {
        f"mod{i}": {
            m.dilation[0]
            for n, m in getattr(wrn38, f"mod{i}").named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
        }
        for i in range(2, 8)
    }
    assert dil == {"mod2": {1}, "mod3": {1}, "mod4": {1}, "mod5": {2}, "mod6": {4}, "mod7": {4}}
    assert wrn38.mod4.block1.convs.conv1.stride == (2, 2)
    assert [b[0].dilation[0] for b in wrn38.aspp.features[1:]] == [12, 24, 36]
    bns = [m for m in wrn38.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in bns} == {(1e-5, 0.1)}


# --- an independent functional forward, written from the architecture facts -------------------


def _reference_forward(sd: dict, x: torch.Tensor):
    def bn_relu(prefix, t):
        return F.relu(
            F.batch_norm(
                t,
                sd[f"{prefix}.running_mean"],
                sd[f"{prefix}.running_var"],
                sd[f"{prefix}.weight"],
                sd[f"{prefix}.bias"],
                False,
                0.0,
                1e-5,
            )
        )

    def conv(key, t, stride=1, dilation=1):
        w = sd[key]
        return F.conv2d(
            t, w, stride=stride, padding=dilation * (w.shape[-1] // 2), dilation=dilation
        )

    def block(p, t, stride, dil):
        pre = bn_relu(f"{p}.bn1.0", t)
        shortcut = (
            conv(f"{p}.proj_conv.weight", pre, stride) if f"{p}.proj_conv.weight" in sd else t
        )
        if f"{p}.convs.conv3.weight" in sd:  # bottleneck: stride on the 1x1, dilation on the 3x3
            h = conv(f"{p}.convs.conv1.weight", pre, stride)
            h = conv(f"{p}.convs.conv2.weight", bn_relu(f"{p}.convs.bn2.0", h), 1, dil)
            h = conv(f"{p}.convs.conv3.weight", bn_relu(f"{p}.convs.bn3.0", h))
        else:
            h = conv(f"{p}.convs.conv1.weight", pre, stride, dil)
            h = conv(f"{p}.convs.conv2.weight", bn_relu(f"{p}.convs.bn2.0", h), 1, dil)
        return h + shortcut

    def cbr(prefix, t, dilation=1):
        return bn_relu(f"{prefix}.1", conv(f"{prefix}.0.weight", t, 1, dilation))

    def up(t, size):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

    t = F.max_pool2d(conv("mod1.conv1.weight", x), 3, 2, 1)
    plan = {
        "mod2": (3, 1, 1),
        "mod3": (3, 1, 1),
        "mod4": (6, 2, 1),
        "mod5": (3, 1, 2),
        "mod6": (1, 1, 4),
        "mod7": (1, 1, 4),
    }
    for mod, (blocks, stride, dil) in plan.items():
        if mod == "mod3":
            m2 = t
            t = F.max_pool2d(t, 3, 2, 1)
        for b in range(1, blocks + 1):
            t = block(f"{mod}.block{b}", t, stride if b == 1 else 1, dil)
    pooled = cbr("aspp.img_conv", t.mean((2, 3), keepdim=True)).expand(-1, -1, *t.shape[-2:])
    branches = [pooled, cbr("aspp.features.0", t)]
    branches += [cbr(f"aspp.features.{i}", t, r) for i, r in ((1, 12), (2, 24), (3, 36))]
    dec_up = up(conv("bot_aspp.weight", torch.cat(branches, 1)), m2.shape[-2:])
    dec0 = torch.cat([conv("bot_fine.weight", m2), dec_up], 1)
    f = bn_relu("final.1", conv("final.0.weight", dec0))
    f = bn_relu("final.4", conv("final.3.weight", f))
    logits = up(conv("final.6.weight", f), x.shape[-2:])
    score = -torch.logsumexp(conv("ood_head.weight", f), 1, keepdim=True)
    return logits, f, up(score, x.shape[-2:])[:, 0]


def test_forward_matches_the_functional_reference(wrn38):
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = wrn38(x)
        logits, feats, score = _reference_forward(wrn38.state_dict(), x)
    assert out.features.shape == (1, 256, 32, 48)  # bot_fine taps mod2 at 1/2 resolution
    assert out.taps["trunk"].shape == (1, 4096, 8, 12)
    torch.testing.assert_close(out.features, feats, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.taps["ood_score"], score, rtol=1e-4, atol=1e-4)


def test_dropout_is_active_only_in_training(wrn38):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        wrn38.train()
        try:
            torch.manual_seed(0)
            a = wrn38(x).logits
            torch.manual_seed(1)
            b = wrn38(x).logits
        finally:
            wrn38.eval()
        c, d = wrn38(x).logits, wrn38(x).logits
    assert not torch.allclose(a, b) and torch.equal(c, d)


# --- checkpoints in every accepted format ------------------------------------------------------


@pytest.mark.slow
def test_checkpoint_round_trips_through_every_format(wrn38, tmp_path):
    state = wrn38.state_dict()
    torch.save(state, tmp_path / "plain.pth")
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "epoch": 175,
            "mean_iu": np.float64(0.8),
            "optimizer": {"lr": 1e-3},
        },
        tmp_path / "nvidia.pth",
    )
    torch.save({"model": state}, tmp_path / "wrapped.pt")
    save_file(
        {f"model.{k}": v.contiguous() for k, v in state.items()},
        str(tmp_path / "prefixed.safetensors"),
    )
    save_checkpoint(wrn38, tmp_path / "ours.safetensors")
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        expected = wrn38(x).logits
    target = create_model("deeplabv3plus-wrn38", ood_head=True).eval()
    for name in (
        "plain.pth",
        "nvidia.pth",
        "wrapped.pt",
        "prefixed.safetensors",
        "ours.safetensors",
    ):
        for p in target.parameters():
            p.data.zero_()
        load_checkpoint(target, tmp_path / name)
        with torch.inference_mode():
            torch.testing.assert_close(target(x).logits, expected, rtol=0, atol=0, msg=name)
    # an original (ood_head-free) checkpoint loads into ood_head=False, not into ood_head=True
    del state["ood_head.weight"]
    torch.save({"state_dict": state}, tmp_path / "baseline.pth")
    assert not load_model("deeplabv3plus-wrn38", tmp_path / "baseline.pth").training
    with pytest.raises(OodBenchError, match="build the model with ood_head=False"):
        load_model("deeplabv3plus-wrn38", tmp_path / "baseline.pth", ood_head=True)


def test_renamed_key_in_a_wrn38_state_dict_is_named(wrn38):
    state = dict(wrn38.state_dict())
    state["mod7.block1.convs.conv3.weights"] = state.pop("mod7.block1.convs.conv3.weight")
    with pytest.raises(OodBenchError) as err:
        load_checkpoint(create_model("deeplabv3plus-wrn38", ood_head=True), state)
    assert "missing     mod7.block1.convs.conv3.weight" in str(err.value)
    assert "unexpected  mod7.block1.convs.conv3.weights" in str(err.value)
