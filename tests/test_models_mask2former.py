"""Mask2Former models (transformers-based), global masked attention and the detectron2 converter."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models_helpers import randomize_bn

from ood_bench.errors import OodBenchError
from ood_bench.models import SegOutput, create_model, list_models
from ood_bench.models.checkpoint import load_checkpoint, load_model, read_state_dict
from ood_bench.models.detectron2_convert import (
    convert_detectron2_state_dict,
    to_detectron2_state_dict,
)
from ood_bench.models.mask2former import TINY, attention_masks, mask2former_config, semantic_scores

# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("mask2former-tiny", ood_head=True)
    randomize_bn(model)
    return model.eval()


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    return create_model("mask2former-r50").eval()


@pytest.fixture(scope="module")
def r50_gma():
    torch.manual_seed(1)
    return create_model("mask2former-r50-gma", ood_head=True).eval()


@pytest.fixture(scope="module")
def d2_standard():
    """A synthetic detectron2 Mask2Former (standard decoder) state dict."""
    return synthetic_detectron2_state(seed=0)


@pytest.fixture(scope="module")
def d2_gma():
    """A synthetic detectron2 Mask2Anomaly state dict with MultiShiftSeg's class_embed2."""
    return synthetic_detectron2_state(seed=1, gma=True, class_embed2=True)


# --- registry, configuration, parameter count ---------------------------------------------------


def test_registered_variants_and_options():
    assert {"mask2former-r50", "mask2former-r50-gma", "mask2former-tiny"} <= set(list_models())
    with pytest.raises(OodBenchError, match="num_classes"):
        create_model("mask2former-tiny", num_classes=0)


def test_r50_has_mask2anomalys_configuration(r50, r50_gma):
    decoder = r50.transformer_module.decoder
    assert r50.family == "mask2former" and r50.num_classes == 19 and r50.num_queries == 100
    assert len(decoder.layers) == 9  # DEC_LAYERS 10 = query-feature prediction + 9 layers
    assert r50.transformer_module.queries_features.weight.shape == (100, 256)
    assert r50.class_predictor.out_features == 20 and r50.ood_head is None
    assert (
        decoder.layers[0].cross_attn.num_heads == 8 and decoder.layers[0].fc1.out_features == 2048
    )
    pixel = r50.pixel_level_module.decoder
    assert len(pixel.encoder.layers) == 6 and pixel.encoder.layers[0].fc1.out_features == 1024
    assert pixel.mask_projection.out_channels == 256
    assert not hasattr(decoder.layers[0], "cross_attn_background")
    assert all(
        hasattr(layer, "cross_attn_background")
        for layer in r50_gma.transformer_module.decoder.layers
    )
    assert r50_gma.ood_head.out_features == 20


def _resnet50_trunk_size() -> int:
    """ResNet-50 without its 1000-way fc: 25,557,032 − 2,049,000 (torchvision's published count)."""
    return 25_557_032 - (2048 * 1000 + 1000)


def _mask2former_head_size(c=256, q=100, layers=9, classes=19, enc_layers=6) -> int:
    """Pixel decoder + transformer decoder parameters counted from the architecture description."""

    def lin(i, o):
        return i * o + o

    norm = 2 * c
    pixel = sum(lin(i, c) + norm for i in (512, 1024, 2048)) + 3 * c  # input_proj + level_embed
    heads, levels, points = 8, 3, 4
    deform = lin(c, heads * levels * points * 2) + lin(c, heads * levels * points) + 2 * lin(c, c)
    pixel += enc_layers * (deform + norm + lin(c, 1024) + lin(1024, c) + norm)
    pixel += lin(c, c) + 256 * c + norm + 9 * c * c + norm  # mask_features, adapter_1, layer_1
    attention = 4 * lin(c, c) + norm
    decoder = layers * (2 * attention + lin(c, 2048) + lin(2048, c) + norm)
    decoder += norm + 2 * q * c + 3 * c + 3 * lin(c, c) + lin(c, classes + 1)
    return pixel + decoder


def test_r50_parameter_count_matches_the_architecture(r50):
    frozen = sum(b.numel() for n, b in r50.named_buffers() if n.endswith((".weight", ".bias")))
    backbone = sum(p.numel() for p in r50.param_groups()["backbone"]) + frozen
    assert backbone == _resnet50_trunk_size() == 23_508_032
    total = sum(p.numel() for p in r50.parameters()) + frozen
    assert total == _resnet50_trunk_size() + _mask2former_head_size()
    assert 43.9e6 < total < 44.1e6  # "44M" in the Mask2Former paper (R50)


def test_frozen_batchnorm_is_fixed_and_tiny_trains_its_batchnorm(r50, tiny):
    backbone = r50.pixel_level_module.encoder
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert not any(b.requires_grad for b in backbone.buffers())  # fixed, no autograd history
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    r50.train()
    with torch.no_grad():
        r50(torch.randn(2, 3, 64, 64))
    r50.eval()
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert not any(k.endswith("num_batches_tracked") for k in before)
    bn = [
        m for m in tiny.pixel_level_module.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert bn and all(m.weight.requires_grad for m in bn)


# --- forward contract ----------------------------------------------------------------------------


def test_forward_contract_and_taps(tiny):
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        out = tiny(x)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 19, 64, 96) and out.logits.dtype == torch.float32
    assert out.features.shape == (2, 64, 16, 24)
    q, layers = 20, 3
    shapes = {
        "class_logits": (2, q, 20),
        "mask_logits": (2, q, 16, 24),
        "aux_class_logits": (layers, 2, q, 20),
        "aux_mask_logits": (layers, 2, q, 16, 24),
        "queries": (2, q, 64),
        "ood_class_logits": (2, q, 20),
        "ood_aux_class_logits": (layers, 2, q, 20),
    }
    assert {k: tuple(v.shape) for k, v in out.taps.items()} == shapes
    assert 0 <= out.logits.min() and out.logits.max() <= q
    torch.testing.assert_close(
        out.logits, semantic_scores(out.taps["class_logits"], out.taps["mask_logits"], (64, 96))
    )
    with torch.inference_mode():
        few = tiny(x, taps=["mask_logits"])
    assert set(few.taps) == {"mask_logits"}
    torch.testing.assert_close(few.logits, out.logits)
    with pytest.raises(OodBenchError, match="unknown taps"):
        tiny(x, taps=["trunk"])
    with pytest.raises(OodBenchError, match="N×3×H×W"):
        tiny(torch.randn(1, 1, 32, 32))
    without = create_model("mask2former-tiny").eval()
    with pytest.raises(OodBenchError, match="unknown taps"):
        without(x, taps=["ood_class_logits"])


def test_scores_and_features_stay_float32_under_autocast(tiny):
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = tiny(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny(x)
    assert low.logits.dtype == low.features.dtype == torch.float32
    assert low.taps["mask_logits"].dtype == torch.bfloat16  # the decoder itself runs in bf16
    assert (low.features - ref.features).norm() / ref.features.norm() < 0.05  # bf16 backbone
    assert (low.logits - ref.logits).norm() / ref.logits.norm() < 0.05


def test_r50_forward_at_small_input(r50):
    with torch.inference_mode():
        out = r50(torch.randn(1, 3, 64, 128))
    assert out.logits.shape == (1, 19, 64, 128) and out.features.shape == (1, 256, 16, 32)
    assert out.taps["aux_mask_logits"].shape == (9, 1, 100, 16, 32)
    assert torch.isfinite(out.logits).all()


def test_semantic_scores_hand_computed():
    # one image, two queries, two classes (+ no object), a 1×2 mask grid
    class_logits = torch.tensor([[[0.0, 0.0, 0.0], [np.log(3.0), 0.0, 0.0]]])
    mask_logits = torch.tensor([[[[0.0, 100.0]], [[-100.0, 0.0]]]])
    # softmax: q0 = (1/3, 1/3, 1/3), q1 = (3/5, 1/5, 1/5); σ: q0 = (0.5, 1), q1 = (0, 0.5)
    expected = torch.tensor(
        [[[[1 / 6, 1 / 3 + 3 / 10]], [[1 / 6, 1 / 3 + 1 / 10]]]], dtype=torch.float32
    )
    torch.testing.assert_close(semantic_scores(class_logits, mask_logits), expected)
    # with a size, the mask logits are resized first (then σ), as detectron2 does
    up = semantic_scores(class_logits, mask_logits, size=(1, 4))
    resized = F.interpolate(mask_logits, size=(1, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, semantic_scores(class_logits, resized))
    with pytest.raises(OodBenchError, match="disagree"):
        semantic_scores(class_logits[:, :1], mask_logits)


def test_decoder_equals_transformers_mask2former(tiny):
    """Our decoder loop reproduces transformers' own Mask2FormerModel forward (same weights)."""
    from transformers import Mask2FormerModel

    reference = Mask2FormerModel(tiny.config).eval()
    state = {k: v for k, v in tiny.state_dict().items() if not k.startswith(("class_", "ood_"))}
    reference.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = reference(x, output_hidden_states=True)
        out = tiny(x)
    masks = torch.stack(ref.masks_queries_logits)
    queries = torch.stack([h.transpose(0, 1) for h in ref.transformer_decoder_intermediate_states])
    torch.testing.assert_close(out.taps["mask_logits"], masks[-1])
    torch.testing.assert_close(out.taps["aux_mask_logits"], masks[:-1])
    torch.testing.assert_close(out.taps["queries"], queries[-1])
    torch.testing.assert_close(out.taps["aux_class_logits"], tiny.class_predictor(queries[:-1]))
    torch.testing.assert_close(out.features, ref.pixel_decoder_last_hidden_state)


def test_param_groups_partition_and_ood_head_init(tiny):
    groups = tiny.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(tiny.parameters()))
    named = {id(p): n for n, p in tiny.named_parameters()}
    prefixes = {
        "backbone": "pixel_level_module.encoder.",
        "pixel_decoder": "pixel_level_module.decoder.",
        "transformer_decoder": "transformer_module.",
        "class_head": "class_predictor.",
        "ood_head": "ood_head.",
    }
    for group, prefix in prefixes.items():
        assert groups[group] and all(named[id(p)].startswith(prefix) for p in groups[group])
    assert any("mask_embedder" in named[id(p)] for p in groups["transformer_decoder"])
    assert create_model("mask2former-tiny").param_groups()["ood_head"] == []
    model = create_model("mask2former-tiny", ood_head=True).eval()
    with torch.no_grad():
        model.ood_head.weight.zero_()
    model.init_ood_head()
    assert torch.equal(model.ood_head.weight, model.class_predictor.weight)
    assert torch.equal(model.ood_head.bias, model.class_predictor.bias)
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(out.taps["ood_class_logits"], out.taps["class_logits"])
    with pytest.raises(OodBenchError, match="ood_head=True"):
        create_model("mask2former-tiny").init_ood_head()


def test_safetensors_round_trip_and_deepcopy(tiny, tmp_path):
    import copy

    from ood_bench.models.checkpoint import save_checkpoint

    path = save_checkpoint(tiny, tmp_path / "m2f.safetensors")
    loaded = load_model("mask2former-tiny", path, ood_head=True)
    clone = copy.deepcopy(tiny)
    x = torch.randn(1, 3, 32, 64)
    with torch.inference_mode():
        expected = tiny(x).logits
        torch.testing.assert_close(loaded(x).logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(clone(x).logits, expected, rtol=0, atol=0)


def test_tiny_trains_end_to_end():
    torch.manual_seed(0)
    model = create_model("mask2former-tiny").train()
    out = model(torch.randn(2, 3, 64, 64))
    (out.logits.mean() + out.taps["aux_mask_logits"].mean()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["class_predictor.weight"] is not None
    assert grads["pixel_level_module.encoder.embedder.embedder.convolution.weight"].abs().sum() > 0
    assert grads["transformer_module.queries_features.weight"].abs().sum() > 0


# --- global masked attention ---------------------------------------------------------------------


def test_attention_masks_hand_computed():
    # one image, two queries, 1×3 positions: σ = (0.88, 0.27, 0.5) and all > 0.5
    logits = torch.tensor([[[[2.0, -1.0, 0.0]], [[1.0, 2.0, 3.0]]]])
    fg = attention_masks(logits, (1, 3), num_heads=2)
    bg = attention_masks(logits, (1, 3), num_heads=2, background=True)
    assert fg.shape == (2, 2, 3) and torch.equal(fg[0], fg[1])  # heads repeat
    assert fg[0].tolist() == [[False, True, False], [False, False, False]]
    # background: q0 blocks σ > 0.5; q1 would block everything → lifted, attends everywhere
    assert bg[0].tolist() == [[True, False, False], [False, False, False]]


def test_gma_cross_attention_hand_computed():
    """Zero query → uniform attention: LN(mean of fg values + mean of bg values)."""
    from ood_bench.models.mask2former_gma import GlobalMaskedAttentionLayer

    layer = GlobalMaskedAttentionLayer(
        mask2former_config(**{**TINY, "hidden_dim": 4, "num_heads": 1})
    )
    eye = torch.eye(4)
    with torch.no_grad():
        for attn in (layer.cross_attn, layer.cross_attn_background):
            attn.in_proj_weight.copy_(torch.cat([eye, eye, eye]))
            attn.in_proj_bias.zero_()
            attn.out_proj.weight.copy_(eye)
            attn.out_proj.bias.zero_()
    memory = torch.tensor([[1.0, 0, 0, 2], [0, 3, 0, 0], [0, 0, 5, 1]])[:, None]  # 3×1×4
    hidden = torch.zeros(1, 1, 4)
    logits = torch.tensor([[[[2.0, -1.0, 0.0]]]])  # σ = 0.88, 0.27, 0.5
    fg = attention_masks(logits, (1, 3), 1)
    bg = attention_masks(logits, (1, 3), 1, background=True)
    zeros = torch.zeros_like(memory)
    out = layer.cross_attention(hidden, memory, zeros, torch.zeros_like(hidden), fg, bg)
    fg_mean = (memory[0] + memory[2]) / 2  # positions with σ ≥ 0.5
    bg_mean = (memory[1] + memory[2]) / 2  # positions with σ ≤ 0.5
    torch.testing.assert_close(out[0], F.layer_norm(fg_mean + bg_mean, (4,)))
    fg_only = layer.cross_attention(hidden, memory, zeros, torch.zeros_like(hidden), fg, None)
    torch.testing.assert_close(fg_only[0], F.layer_norm(fg_mean, (4,)))


def test_gma_without_background_branch_is_standard_masked_attention(r50_gma):
    """Zeroing the background branch's output projection turns GMA into Mask2Former exactly."""
    torch.manual_seed(3)
    gma = create_model("mask2former-tiny", gma=True).eval()
    standard = create_model("mask2former-tiny").eval()
    randomize_bn(gma)
    state = {k: v for k, v in gma.state_dict().items() if "cross_attn_background" not in k}
    standard.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        differs = gma(x).taps["mask_logits"]
        for layer in gma.transformer_module.decoder.layers:
            layer.cross_attn_background.out_proj.weight.zero_()
            layer.cross_attn_background.out_proj.bias.zero_()
        ours, ref = gma(x), standard(x)
    assert not torch.allclose(differs, ref.taps["mask_logits"])  # the branch does something
    for key in ("class_logits", "mask_logits", "aux_mask_logits"):
        torch.testing.assert_close(ours.taps[key], ref.taps[key], rtol=0, atol=0)


def test_gma_layer_without_background_mask_equals_the_transformers_layer(tiny):
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerMaskedAttentionDecoderLayer,
    )

    from ood_bench.models.mask2former_gma import GlobalMaskedAttentionLayer

    torch.manual_seed(0)
    gma = GlobalMaskedAttentionLayer(tiny.config).eval()
    standard = Mask2FormerMaskedAttentionDecoderLayer(tiny.config).eval()
    standard.load_state_dict(gma.state_dict(), strict=False)
    hidden, qpos = torch.randn(20, 2, 64), torch.randn(20, 2, 64)
    memory = [torch.randn(12, 2, 64)]
    pos = [torch.randn(12, 2, 64)]
    mask = attention_masks(torch.randn(2, 20, 3, 4), (3, 4), tiny.num_heads)
    args = (hidden, 0, None, pos, qpos, memory)
    with torch.no_grad():
        torch.testing.assert_close(
            gma(*args, encoder_attention_mask=mask)[0],
            standard(*args, encoder_attention_mask=mask)[0],
        )


# --- detectron2 converter ------------------------------------------------------------------------


def detectron2_schema(
    *,
    hidden=256,
    queries=100,
    dec_layers=10,
    enc_layers=6,
    classes=19,
    gma=False,
    class_embed2=False,
    frozen_bn=True,
) -> dict[str, tuple[int, ...]]:
    """Key → shape of a detectron2 ``MaskFormer`` (R-50, MSDeformAttnPixelDecoder,
    MultiScaleMaskedTransformerDecoder[_GMA]) state dict, written from the published modules."""
    schema: dict[str, tuple[int, ...]] = {}

    def norm(prefix, n, bn=True):
        keys = ("weight", "bias", "running_mean", "running_var") if bn else ("weight", "bias")
        for k in keys:
            schema[f"{prefix}.{k}"] = (n,)
        if bn and not frozen_bn:
            schema[f"{prefix}.num_batches_tracked"] = ()

    def linear(prefix, i, o):
        schema[f"{prefix}.weight"] = (o, i)
        schema[f"{prefix}.bias"] = (o,)

    def mha(prefix, d):
        schema[f"{prefix}.in_proj_weight"] = (3 * d, d)
        schema[f"{prefix}.in_proj_bias"] = (3 * d,)
        linear(f"{prefix}.out_proj", d, d)

    schema["backbone.stem.conv1.weight"] = (64, 3, 7, 7)
    norm("backbone.stem.conv1.norm", 64)
    in_ch = 64
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3), strict=True):
        out_ch = 256 * 2 ** (stage - 2)
        mid = out_ch // 4
        for b in range(blocks):
            p = f"backbone.res{stage}.{b}"
            if b == 0:
                schema[f"{p}.shortcut.weight"] = (out_ch, in_ch, 1, 1)
                norm(f"{p}.shortcut.norm", out_ch)
            for name, shape in (
                ("conv1", (mid, in_ch if b == 0 else out_ch, 1, 1)),
                ("conv2", (mid, mid, 3, 3)),
                ("conv3", (out_ch, mid, 1, 1)),
            ):
                schema[f"{p}.{name}.weight"] = shape
                norm(f"{p}.{name}.norm", shape[0])
        in_ch = out_ch
    c = hidden
    pd = "sem_seg_head.pixel_decoder"
    for i, ch in enumerate((2048, 1024, 512)):
        schema[f"{pd}.input_proj.{i}.0.weight"] = (c, ch, 1, 1)
        schema[f"{pd}.input_proj.{i}.0.bias"] = (c,)
        norm(f"{pd}.input_proj.{i}.1", c, bn=False)
    schema[f"{pd}.transformer.level_embed"] = (3, c)
    for n in range(enc_layers):
        p = f"{pd}.transformer.encoder.layers.{n}"
        linear(f"{p}.self_attn.sampling_offsets", c, 8 * 3 * 4 * 2)
        linear(f"{p}.self_attn.attention_weights", c, 8 * 3 * 4)
        linear(f"{p}.self_attn.value_proj", c, c)
        linear(f"{p}.self_attn.output_proj", c, c)
        norm(f"{p}.norm1", c, bn=False)
        linear(f"{p}.linear1", c, 1024)
        linear(f"{p}.linear2", 1024, c)
        norm(f"{p}.norm2", c, bn=False)
    schema[f"{pd}.mask_features.weight"] = (c, c, 1, 1)
    schema[f"{pd}.mask_features.bias"] = (c,)
    schema[f"{pd}.adapter_1.weight"] = (c, 256, 1, 1)
    norm(f"{pd}.adapter_1.norm", c, bn=False)
    schema[f"{pd}.layer_1.weight"] = (c, c, 3, 3)
    norm(f"{pd}.layer_1.norm", c, bn=False)
    pr = "sem_seg_head.predictor"
    for n in range(dec_layers - 1):
        mha(f"{pr}.transformer_self_attention_layers.{n}.self_attn", c)
        norm(f"{pr}.transformer_self_attention_layers.{n}.norm", c, bn=False)
        cross = f"{pr}.transformer_cross_attention_layers.{n}"
        if gma:
            mha(f"{cross}.multihead_attn_foreground", c)
            mha(f"{cross}.multihead_attn_background", c)
            schema[f"{cross}.fusion_layer.weight"] = (100, 200, 1, 1)
            schema[f"{cross}.fusion_layer.bias"] = (100,)
        else:
            mha(f"{cross}.multihead_attn", c)
        norm(f"{cross}.norm", c, bn=False)
        linear(f"{pr}.transformer_ffn_layers.{n}.linear1", c, 2048)
        linear(f"{pr}.transformer_ffn_layers.{n}.linear2", 2048, c)
        norm(f"{pr}.transformer_ffn_layers.{n}.norm", c, bn=False)
    norm(f"{pr}.decoder_norm", c, bn=False)
    schema[f"{pr}.query_feat.weight"] = (queries, c)
    schema[f"{pr}.query_embed.weight"] = (queries, c)
    schema[f"{pr}.level_embed.weight"] = (3, c)
    linear(f"{pr}.class_embed", c, classes + 1)
    if class_embed2:
        linear(f"{pr}.class_embed2", c, classes + 1)
    for i in range(3):
        linear(f"{pr}.mask_embed.layers.{i}", c, c)
    schema["criterion.empty_weight"] = (classes + 1,)
    return schema


def synthetic_detectron2_state(seed=0, **kwargs) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in detectron2_schema(**kwargs).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


def test_detectron2_mask2anomaly_checkpoint_converts_and_loads_strictly(r50_gma, d2_gma):
    d2 = d2_gma
    ours, report = convert_detectron2_state_dict(d2, gma=True)
    assert report.unmapped == [] and report.filled == []
    dropped = {k for k, _ in report.dropped}
    assert "criterion.empty_weight" in dropped
    assert (
        "sem_seg_head.predictor.transformer_cross_attention_layers.8.fusion_layer.weight" in dropped
    )
    assert len(dropped) == 1 + 2 * 9
    assert report.converted == len(d2) - len(dropped)
    assert load_checkpoint(r50_gma, ours) == ([], [])
    sd = r50_gma.state_dict()
    in_proj = d2[
        "sem_seg_head.predictor.transformer_self_attention_layers.3.self_attn.in_proj_weight"
    ]
    layer = "transformer_module.decoder.layers.3."
    assert torch.equal(sd[f"{layer}self_attn.q_proj.weight"], in_proj[:256])
    assert torch.equal(sd[f"{layer}self_attn.k_proj.weight"], in_proj[256:512])
    assert torch.equal(sd[f"{layer}self_attn.v_proj.weight"], in_proj[512:])
    bg = "sem_seg_head.predictor.transformer_cross_attention_layers.3.multihead_attn_background"
    assert torch.equal(
        sd[f"{layer}cross_attn_background.in_proj_weight"], d2[f"{bg}.in_proj_weight"]
    )
    assert torch.equal(
        sd[
            "pixel_level_module.encoder.encoder.stages.2.layers.5.layer.1.normalization.running_var"
        ],
        d2["backbone.res4.5.conv2.norm.running_var"],
    )
    assert torch.equal(sd["ood_head.weight"], d2["sem_seg_head.predictor.class_embed2.weight"])
    assert "dropped" in str(report) and "fusion_layer" in str(report)


def test_round_trips_between_layouts(r50_gma, d2_standard):
    ours = r50_gma.state_dict()
    back, _ = convert_detectron2_state_dict(to_detectron2_state_dict(ours))
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    d2 = d2_standard
    again = to_detectron2_state_dict(convert_detectron2_state_dict(d2)[0])
    assert again.keys() == set(d2) - {"criterion.empty_weight"}
    assert all(torch.equal(again[k], d2[k]) for k in again)


def reference_detectron2_decoder(d2, multi_scale, mask_features, position, heads, gma):
    """detectron2's ``MultiScaleMaskedTransformerDecoder[_GMA].forward`` (post-norm, 3 levels),
    written from the published code with torch functionals, reading the detectron2 state dict.
    Returns per prediction (class logits, mask logits)."""

    def w(key):
        return d2["sem_seg_head.predictor." + key]

    def mha(name, query, key, value, mask):
        return F.multi_head_attention_forward(
            query,
            key,
            value,
            query.shape[-1],
            heads,
            w(f"{name}.in_proj_weight"),
            w(f"{name}.in_proj_bias"),
            None,
            None,
            False,
            0.0,
            w(f"{name}.out_proj.weight"),
            w(f"{name}.out_proj.bias"),
            training=False,
            need_weights=False,
            attn_mask=mask,
        )[0]

    def norm(name, x):
        return F.layer_norm(x, x.shape[-1:], w(f"{name}.weight"), w(f"{name}.bias"))

    def predict(output, size):
        decoded = norm("decoder_norm", output).transpose(0, 1)
        embed = decoded
        for i in range(3):
            embed = F.linear(
                embed, w(f"mask_embed.layers.{i}.weight"), w(f"mask_embed.layers.{i}.bias")
            )
            embed = F.relu(embed) if i < 2 else embed
        masks = torch.einsum("bqc,bchw->bqhw", embed, mask_features)
        probs = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).sigmoid()
        probs = probs.flatten(2).unsqueeze(1).repeat(1, heads, 1, 1).flatten(0, 1)
        classes = F.linear(decoded, w("class_embed.weight"), w("class_embed.bias"))
        return classes, masks, probs < 0.5, probs > 0.5

    srcs, pos, sizes = [], [], []
    for i, x in enumerate(multi_scale):
        sizes.append(x.shape[-2:])
        pos.append(position(x.shape, x.device, x.dtype, None).flatten(2).permute(2, 0, 1))
        srcs.append((x.flatten(2) + w("level_embed.weight")[i][None, :, None]).permute(2, 0, 1))
    batch = mask_features.shape[0]
    query_pos = w("query_embed.weight").unsqueeze(1).repeat(1, batch, 1)
    output = w("query_feat.weight").unsqueeze(1).repeat(1, batch, 1)
    classes, masks, fg, bg = predict(output, sizes[0])
    predictions = [(classes, masks)]
    layers = 1 + max(int(k.split(".")[3]) for k in d2 if "transformer_ffn_layers" in k)
    for i in range(layers):
        level = i % 3
        fg[torch.where(fg.sum(-1) == fg.shape[-1])] = False
        bg[torch.where(bg.sum(-1) == bg.shape[-1])] = False
        cross = f"transformer_cross_attention_layers.{i}"
        query, key = output + query_pos, srcs[level] + pos[level]
        if gma:
            update = mha(f"{cross}.multihead_attn_foreground", query, key, srcs[level], fg)
            update = update + mha(f"{cross}.multihead_attn_background", query, key, srcs[level], bg)
        else:
            update = mha(f"{cross}.multihead_attn", query, key, srcs[level], fg)
        output = norm(f"{cross}.norm", output + update)
        qk = output + query_pos
        attn = f"transformer_self_attention_layers.{i}"
        output = norm(f"{attn}.norm", output + mha(f"{attn}.self_attn", qk, qk, output, None))
        ffn = f"transformer_ffn_layers.{i}"
        hidden = F.relu(F.linear(output, w(f"{ffn}.linear1.weight"), w(f"{ffn}.linear1.bias")))
        output = norm(
            f"{ffn}.norm",
            output + F.linear(hidden, w(f"{ffn}.linear2.weight"), w(f"{ffn}.linear2.bias")),
        )
        classes, masks, fg, bg = predict(output, sizes[(i + 1) % 3])
        predictions.append((classes, masks))
    return predictions


@pytest.mark.parametrize("variant", ["standard", "gma"])
def test_converted_decoder_computes_detectron2s_forward(variant, r50, r50_gma, d2_standard, d2_gma):
    """A reference detectron2 decoder on the detectron2 weights equals our decoder on the
    converted weights (float64, so mask thresholds cannot flip on rounding)."""
    import copy

    gma = variant == "gma"
    model = copy.deepcopy(r50_gma if gma else r50)
    d2 = d2_gma if gma else d2_standard
    load_checkpoint(model, d2)
    model = model.double()
    d2 = {k: v.double() if v.is_floating_point() else v for k, v in d2.items()}
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        mask_features, multi_scale = model.pixel_features(x)
        queries, masks = model.decode(multi_scale, mask_features)
        position = model.transformer_module.position_embedder
        reference = reference_detectron2_decoder(
            d2, multi_scale, mask_features, position, heads=8, gma=gma
        )
    assert len(reference) == len(masks) == 10
    tight = dict(rtol=1e-9, atol=1e-12)  # float64: rounding differences are ~1e-16
    for (ref_classes, ref_masks), ours_q, ours_m in zip(reference, queries, masks, strict=True):
        torch.testing.assert_close(ours_m, ref_masks, **tight)
        torch.testing.assert_close(model.class_predictor(ours_q), ref_classes, **tight)


def test_self_attention_split_matches_torch_multihead_attention(tiny):
    """detectron2's SelfAttentionLayer (nn.MultiheadAttention, q = k = x + pos, v = x) equals the
    converted transformers attention."""
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(64, 4).eval()
    torch.nn.init.normal_(reference.in_proj_bias)
    ours = tiny.transformer_module.decoder.layers[0].self_attn
    d2 = {
        "sem_seg_head.predictor.transformer_self_attention_layers.0.self_attn." + k: v
        for k, v in reference.state_dict().items()
    }
    state, _ = convert_detectron2_state_dict(d2)
    prefix = "transformer_module.decoder.layers.0.self_attn."
    ours_copy = type(ours)(64, 4).eval()
    ours_copy.load_state_dict(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    )
    x, pos = torch.randn(20, 2, 64), torch.randn(20, 2, 64)
    with torch.no_grad():
        expected = reference(x + pos, x + pos, x)[0]
        got = ours_copy(hidden_states=x, position_embeddings=pos)[0]
    torch.testing.assert_close(got, expected)


def test_converter_errors_are_readable(d2_standard, d2_gma):
    d2 = d2_standard
    with pytest.raises(OodBenchError, match="gma=True"):
        convert_detectron2_state_dict(d2_gma, gma=False)
    with pytest.raises(OodBenchError, match="gma=False"):
        convert_detectron2_state_dict(d2, gma=True)
    extra = {**d2, "sem_seg_head.predictor.mystery.weight": torch.zeros(2)}
    with pytest.raises(
        OodBenchError,
        match=r"(?s)1 detectron2 keys .*unmapped  sem_seg_head\.predictor\.mystery\.weight",
    ):
        convert_detectron2_state_dict(extra)
    _, report = convert_detectron2_state_dict(extra, strict=False)
    assert report.unmapped == ["sem_seg_head.predictor.mystery.weight"]
    with pytest.raises(OodBenchError, match="sem_seg_head"):
        convert_detectron2_state_dict({"conv.weight": torch.zeros(1)})


def test_non_frozen_backbone_gets_batch_counters_filled(d2_standard):
    ours, report = convert_detectron2_state_dict(d2_standard, frozen_bn=False)
    assert len(report.filled) == 53  # one per BatchNorm of ResNet-50
    assert ours[report.filled[0]].item() == 0
    kept, report = convert_detectron2_state_dict(
        synthetic_detectron2_state(frozen_bn=False), frozen_bn=False
    )
    assert report.filled == [] and all(
        v.item() == 7 for k, v in kept.items() if k.endswith("num_batches_tracked")
    )


def test_load_model_reads_detectron2_checkpoints(tmp_path, r50, d2_standard, d2_gma):
    d2 = d2_standard
    torch.save({"model": d2, "iteration": 89999}, tmp_path / "model_final.pth")
    model = load_model("mask2former-r50", tmp_path / "model_final.pth")
    expected, _ = convert_detectron2_state_dict(d2)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    with pytest.raises(OodBenchError, match="mask2former-r50-gma"):
        load_checkpoint(r50, {**d2, **d2_gma})
    no_gma = {k: v for k, v in d2_gma.items() if "cross_attention" not in k}
    with pytest.raises(OodBenchError, match="ood_head=True"):
        load_checkpoint(r50, {**d2, **no_gma})
    extra = {**d2, "sem_seg_head.predictor.mystery.weight": torch.zeros(2)}
    with pytest.raises(OodBenchError, match=r"unexpected  sem_seg_head\.predictor\.mystery"):
        load_checkpoint(r50, extra)
    assert load_checkpoint(r50, extra, strict=False) == (
        [],
        ["sem_seg_head.predictor.mystery.weight"],
    )


def test_pkl_in_model_zoo_layout_reads_as_tensors(tmp_path, d2_standard):
    """detectron2 model-zoo files: ``{"model": {name: numpy array}, ...}``, pickle protocol 2."""
    part = {k: v for k, v in d2_standard.items() if ".predictor." in k}
    arrays = {k: v.numpy() for k, v in part.items()}
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"model": arrays, "__author__": "synthetic", "matching_heuristics": True}, f, 2)
    state = read_state_dict(tmp_path / "model_final.pkl")
    assert state.keys() == part.keys() and all(torch.equal(state[k], part[k]) for k in part)


@pytest.mark.parametrize("protocol", [4, 5])
def test_pkl_reader_accepts_modern_protocols_and_refuses_code(tmp_path, protocol):
    arrays = {"sem_seg_head.predictor.class_embed.bias": np.arange(3, dtype=np.float32)}
    path = tmp_path / "w.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": arrays}, f, protocol)
    state = read_state_dict(path)
    assert torch.equal(state["sem_seg_head.predictor.class_embed.bias"], torch.arange(3.0))

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "x": Payload()}, f, protocol)
    with pytest.raises(OodBenchError, match="refusing to unpickle builtins.print"):
        read_state_dict(path)
