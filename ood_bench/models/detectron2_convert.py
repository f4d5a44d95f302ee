"""Convert detectron2 Mask2Former / Mask2Anomaly state dicts to :class:`~.mask2former.Mask2Former`.

The community checkpoints (Mask2Anomaly's ``bt-f-xl.pth``, MultiShiftSeg's ``M2F_best.pth``,
the Mask2Former model zoo's ``.pkl`` files) are detectron2 ``MaskFormer`` state dicts:
``backbone.*`` (detectron2 ResNet), ``sem_seg_head.pixel_decoder.*`` (``MSDeformAttnPixelDecoder``)
and ``sem_seg_head.predictor.*`` (``MultiScaleMaskedTransformerDecoder`` or Mask2Anomaly's
``..._GMA``). :data:`RULES` pairs each detectron2 key pattern with ours; the decoder's
self-attention ``in_proj_weight``/``in_proj_bias`` are split into transformers' q/k/v
projections. Keys that exist only for training or are unused by the forward are dropped and
reported: ``criterion.*`` (e.g. ``empty_weight``), GMA's ``fusion_layer`` (built but never
called), and the backbone's ``num_batches_tracked`` when the model's BatchNorms are frozen.

:func:`convert_detectron2_state_dict` returns ``(state, report)``; :func:`to_detectron2_state_dict`
is the inverse (our keys → detectron2's), used to round-trip and to export.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ood_bench.errors import OodBenchError

from .checkpoint import strip_prefixes

BACKBONE = "pixel_level_module.encoder."
PIXEL_DECODER = "pixel_level_module.decoder."
DECODER = "transformer_module."
D2_PIXEL_DECODER = "sem_seg_head.pixel_decoder."
D2_PREDICTOR = "sem_seg_head.predictor."


@dataclass(frozen=True)
class Rule:
    """``detectron2`` ↔ ``ours`` key templates; ``{name}`` is an index, ``{p}`` a parameter path.

    ``shift`` maps an index name to the amount detectron2's number exceeds ours (``res2`` is
    our stage 0, ``conv1`` our layer 0). ``gma`` picks the detectron2 name of our ``cross_attn``
    when exporting: ``multihead_attn`` (standard) or ``multihead_attn_foreground`` (GMA).
    """

    detectron2: str
    ours: str
    shift: tuple[tuple[str, int], ...] = ()
    gma: bool | None = None  # ours → detectron2 only for a GMA (True) / standard (False) decoder

    def convert(self, key: str, to_ours: bool) -> str | None:
        source, target = (self.detectron2, self.ours) if to_ours else (self.ours, self.detectron2)
        match = _regex(source).fullmatch(key)
        if match is None:
            return None
        values = dict(match.groupdict())
        sign = -1 if to_ours else 1
        for name, offset in self.shift:
            values[name] = str(int(values[name]) + sign * offset)
        return target.format(**values)


_REGEX_CACHE: dict[str, re.Pattern] = {}


def _regex(template: str) -> re.Pattern:
    if template not in _REGEX_CACHE:
        pattern = re.escape(template)
        pattern = pattern.replace(r"\{p\}", r"(?P<p>[A-Za-z_][\w.]*)")
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>\\d+)", pattern)
        _REGEX_CACHE[template] = re.compile(pattern)
    return _REGEX_CACHE[template]


_STAGE = (("s", 2),)
_ENC = f"{D2_PIXEL_DECODER}transformer.encoder.layers.{{n}}."
_OUR_ENC = f"{PIXEL_DECODER}encoder.layers.{{n}}."
_LAYER = f"{DECODER}decoder.layers.{{n}}."

RULES: tuple[Rule, ...] = (
    # backbone: detectron2 ResNet (stem + res2..res5) → transformers ResNetBackbone
    Rule("backbone.stem.conv1.weight", f"{BACKBONE}embedder.embedder.convolution.weight"),
    Rule("backbone.stem.conv1.norm.{p}", f"{BACKBONE}embedder.embedder.normalization.{{p}}"),
    Rule(
        "backbone.res{s}.{b}.conv{c}.weight",
        f"{BACKBONE}encoder.stages.{{s}}.layers.{{b}}.layer.{{c}}.convolution.weight",
        (("s", 2), ("c", 1)),
    ),
    Rule(
        "backbone.res{s}.{b}.conv{c}.norm.{p}",
        f"{BACKBONE}encoder.stages.{{s}}.layers.{{b}}.layer.{{c}}.normalization.{{p}}",
        (("s", 2), ("c", 1)),
    ),
    Rule(
        "backbone.res{s}.{b}.shortcut.weight",
        f"{BACKBONE}encoder.stages.{{s}}.layers.{{b}}.shortcut.convolution.weight",
        _STAGE,
    ),
    Rule(
        "backbone.res{s}.{b}.shortcut.norm.{p}",
        f"{BACKBONE}encoder.stages.{{s}}.layers.{{b}}.shortcut.normalization.{{p}}",
        _STAGE,
    ),
    # pixel decoder: MSDeformAttnPixelDecoder → Mask2FormerPixelDecoder
    Rule(f"{D2_PIXEL_DECODER}input_proj.{{i}}.{{j}}.{{p}}",
         f"{PIXEL_DECODER}input_projections.{{i}}.{{j}}.{{p}}"),
    Rule(f"{D2_PIXEL_DECODER}transformer.level_embed", f"{PIXEL_DECODER}level_embed"),
    Rule(f"{_ENC}self_attn.{{p}}", f"{_OUR_ENC}self_attn.{{p}}"),
    Rule(f"{_ENC}norm1.{{p}}", f"{_OUR_ENC}self_attn_layer_norm.{{p}}"),
    Rule(f"{_ENC}linear1.{{p}}", f"{_OUR_ENC}fc1.{{p}}"),
    Rule(f"{_ENC}linear2.{{p}}", f"{_OUR_ENC}fc2.{{p}}"),
    Rule(f"{_ENC}norm2.{{p}}", f"{_OUR_ENC}final_layer_norm.{{p}}"),
    Rule(f"{D2_PIXEL_DECODER}mask_features.{{p}}", f"{PIXEL_DECODER}mask_projection.{{p}}"),
    Rule(f"{D2_PIXEL_DECODER}adapter_{{i}}.weight", f"{PIXEL_DECODER}adapter_{{i}}.0.weight"),
    Rule(f"{D2_PIXEL_DECODER}adapter_{{i}}.norm.{{p}}", f"{PIXEL_DECODER}adapter_{{i}}.1.{{p}}"),
    Rule(f"{D2_PIXEL_DECODER}layer_{{i}}.weight", f"{PIXEL_DECODER}layer_{{i}}.0.weight"),
    Rule(f"{D2_PIXEL_DECODER}layer_{{i}}.norm.{{p}}", f"{PIXEL_DECODER}layer_{{i}}.1.{{p}}"),
    # transformer decoder: MultiScaleMaskedTransformerDecoder(_GMA) → Mask2FormerTransformerModule
    Rule(f"{D2_PREDICTOR}query_feat.weight", f"{DECODER}queries_features.weight"),
    Rule(f"{D2_PREDICTOR}query_embed.weight", f"{DECODER}queries_embedder.weight"),
    Rule(f"{D2_PREDICTOR}level_embed.weight", f"{DECODER}level_embed.weight"),
    Rule(f"{D2_PREDICTOR}input_proj.{{i}}.{{p}}", f"{DECODER}input_projections.{{i}}.{{p}}"),
    Rule(f"{D2_PREDICTOR}transformer_self_attention_layers.{{n}}.self_attn.out_proj.{{p}}",
         f"{_LAYER}self_attn.out_proj.{{p}}"),
    Rule(f"{D2_PREDICTOR}transformer_self_attention_layers.{{n}}.norm.{{p}}",
         f"{_LAYER}self_attn_layer_norm.{{p}}"),
    Rule(f"{D2_PREDICTOR}transformer_cross_attention_layers.{{n}}.multihead_attn.{{p}}",
         f"{_LAYER}cross_attn.{{p}}", gma=False),
    Rule(f"{D2_PREDICTOR}transformer_cross_attention_layers.{{n}}.multihead_attn_foreground.{{p}}",
         f"{_LAYER}cross_attn.{{p}}", gma=True),
    Rule(f"{D2_PREDICTOR}transformer_cross_attention_layers.{{n}}.multihead_attn_background.{{p}}",
         f"{_LAYER}cross_attn_background.{{p}}"),
    Rule(f"{D2_PREDICTOR}transformer_cross_attention_layers.{{n}}.norm.{{p}}",
         f"{_LAYER}cross_attn_layer_norm.{{p}}"),
    Rule(f"{D2_PREDICTOR}transformer_ffn_layers.{{n}}.linear1.{{p}}", f"{_LAYER}fc1.{{p}}"),
    Rule(f"{D2_PREDICTOR}transformer_ffn_layers.{{n}}.linear2.{{p}}", f"{_LAYER}fc2.{{p}}"),
    Rule(f"{D2_PREDICTOR}transformer_ffn_layers.{{n}}.norm.{{p}}",
         f"{_LAYER}final_layer_norm.{{p}}"),
    Rule(f"{D2_PREDICTOR}decoder_norm.{{p}}", f"{DECODER}decoder.layernorm.{{p}}"),
    Rule(f"{D2_PREDICTOR}mask_embed.layers.{{i}}.{{p}}",
         f"{DECODER}decoder.mask_predictor.mask_embedder.{{i}}.0.{{p}}"),
    Rule(f"{D2_PREDICTOR}class_embed.{{p}}", "class_predictor.{p}"),
    Rule(f"{D2_PREDICTOR}class_embed2.{{p}}", "ood_head.{p}"),
)

#: detectron2 self-attention packs q, k, v into one in-projection; transformers keeps three.
_D2_IN_PROJ = re.compile(
    re.escape(D2_PREDICTOR)
    + r"transformer_self_attention_layers\.(?P<n>\d+)\.self_attn\.in_proj_(?P<kind>weight|bias)"
)
_OUR_QKV = re.compile(
    re.escape(DECODER)
    + r"decoder\.layers\.(?P<n>\d+)\.self_attn\.(?P<qkv>[qkv])_proj\.(?P<kind>weight|bias)"
)

#: (pattern, reason) of detectron2 keys with no counterpart in the forward pass.
DROPPED = (
    (re.compile(r"criterion\..+"), "training-only loss state"),
    (re.compile(r"pixel_(mean|std)"), "input normalisation (oodbench normalises inputs itself)"),
    (
        re.compile(
            re.escape(D2_PREDICTOR) + r"transformer_cross_attention_layers\.\d+\.fusion_layer\..+"
        ),
        "Mask2Anomaly's GMA fusion_layer is built but never used by its forward",
    ),
)


@dataclass
class ConversionReport:
    """What a conversion did: counts, dropped keys (with reasons), unmapped keys, filled keys."""

    converted: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"converted {self.converted} detectron2 keys; dropped {len(self.dropped)}; "
            f"unmapped {len(self.unmapped)}; filled {len(self.filled)}"
        ]
        lines += [f"  unmapped  {k}" for k in self.unmapped]
        lines += [f"  dropped   {k}  ({why})" for k, why in _summarise(self.dropped)]
        if self.filled:
            lines.append(f"  filled    {len(self.filled)} BatchNorm num_batches_tracked with 0")
        return "\n".join(lines)


def _summarise(dropped: list[tuple[str, str]], limit: int = 5) -> list[tuple[str, str]]:
    shown = dropped[:limit]
    if len(dropped) > limit:
        shown.append((f"... and {len(dropped) - limit} more", "same reasons"))
    return shown


def is_detectron2_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` is laid out as a detectron2 MaskFormer (``sem_seg_head.*`` keys)."""
    return any(k.startswith("sem_seg_head.") for k in state)


def uses_global_masked_attention(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a detectron2 state dict holds Mask2Anomaly's GMA decoder."""
    return any(".multihead_attn_background." in k for k in state)


def convert_detectron2_state_dict(
    state: Mapping[str, torch.Tensor],
    *,
    gma: bool | None = None,
    frozen_bn: bool = True,
    strict: bool = True,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """A detectron2 Mask2Former / Mask2Anomaly state dict → ours, plus a :class:`ConversionReport`.

    ``gma``: the decoder the target model uses (``None`` accepts either); a mismatch with the
    checkpoint raises with the model to use instead. ``frozen_bn``: drop the backbone's
    ``num_batches_tracked`` (frozen BatchNorm has none) or, when ``False``, fill missing ones
    with 0.
    ``strict``: raise :class:`OodBenchError` listing keys that match no rule (else report them).
    """
    state = _strip_wrapper(state)
    if not is_detectron2_state_dict(state):
        raise OodBenchError(
            "not a detectron2 Mask2Former state dict: expected keys under 'sem_seg_head.' "
            f"(first keys: {sorted(state)[:3]})"
        )
    has_gma = uses_global_masked_attention(state)
    if gma is not None and gma != has_gma:
        raise OodBenchError(_gma_mismatch(has_gma))
    out: dict[str, torch.Tensor] = {}
    report = ConversionReport()
    for key, value in state.items():
        value = torch.as_tensor(value)
        reason = _dropped_reason(key, frozen_bn)
        if reason:
            report.dropped.append((key, reason))
            continue
        in_proj = _D2_IN_PROJ.fullmatch(key)
        if in_proj:
            prefix = f"{DECODER}decoder.layers.{in_proj['n']}.self_attn."
            for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"{prefix}{name}_proj.{in_proj['kind']}"] = part.clone()
            report.converted += 1
            continue
        target = _convert_key(key, to_ours=True)
        if target is None:
            report.unmapped.append(key)
            continue
        out[target] = value
        report.converted += 1
    if not frozen_bn:
        for key in [k for k in out if k.startswith(BACKBONE) and k.endswith(".running_var")]:
            tracked = key[: -len("running_var")] + "num_batches_tracked"
            if tracked not in out:
                out[tracked] = torch.tensor(0, dtype=torch.long)
                report.filled.append(tracked)
    if strict and report.unmapped:
        raise OodBenchError(
            f"{len(report.unmapped)} detectron2 keys have no counterpart in oodbench's "
            f"Mask2Former:\n{report}"
        )
    return out, report


def to_detectron2_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our Mask2Former state dict → detectron2 keys (q/k/v merged into ``in_proj_*``).

    GMA's ``cross_attn`` becomes ``multihead_attn_foreground`` when the layer also has a
    background branch. ``num_batches_tracked`` of a non-frozen backbone is kept (detectron2
    ``BN`` has it too).
    """
    gma = any(".cross_attn_background." in k for k in state)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _OUR_QKV.fullmatch(key)
        if match:
            qkv.setdefault((match["n"], match["kind"]), {})[match["qkv"]] = value
            continue
        target = _convert_key(key, to_ours=False, gma=gma)
        if target is None:
            raise OodBenchError(f"key {key!r} is not part of oodbench's Mask2Former")
        out[target] = value
    for (n, kind), parts in qkv.items():
        out[f"{D2_PREDICTOR}transformer_self_attention_layers.{n}.self_attn.in_proj_{kind}"] = (
            torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        )
    return out


def _convert_key(key: str, to_ours: bool, gma: bool = False) -> str | None:
    for rule in RULES:
        if not to_ours and rule.gma is not None and rule.gma != gma:
            continue
        target = rule.convert(key, to_ours)
        if target is not None:
            return target
    return None


def _dropped_reason(key: str, frozen_bn: bool) -> str | None:
    for pattern, reason in DROPPED:
        if pattern.fullmatch(key):
            return reason
    if frozen_bn and key.startswith("backbone.") and key.endswith(".num_batches_tracked"):
        return "frozen BatchNorm keeps no batch counter"
    return None


def _strip_wrapper(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(state.get("model"), Mapping):  # detectron2 checkpointer / model-zoo .pkl
        state = state["model"]
    return strip_prefixes(state)


def _gma_mismatch(has_gma: bool) -> str:
    if has_gma:
        return (
            "the checkpoint uses global masked attention (Mask2Anomaly's decoder): build the "
            "model with gma=True (e.g. mask2former-r50-gma)"
        )
    return (
        "the checkpoint uses standard masked attention (no background branch): build the model "
        "with gma=False (e.g. mask2former-r50)"
    )
