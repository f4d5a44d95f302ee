"""Mask2Former for semantic segmentation, on Hugging Face ``transformers`` (no detectron2).

Architecture (Cheng et al., CVPR 2022) as configured by Mask2Anomaly for Cityscapes:

* backbone: a transformers ``ResNetBackbone`` (v1.5: stride on the 3×3 conv, like detectron2's
  ``STRIDE_IN_1X1: False``) returning the 1/4 … 1/32 stages. With ``frozen_bn=True`` (the default
  for the ResNet-50 variants, detectron2's ``FrozenBN``) its BatchNorms are fixed affine maps whose
  statistics and scales are buffers, not parameters;
* pixel decoder: transformers' multi-scale deformable-attention encoder over the 1/8, 1/16, 1/32
  features plus an FPN step to 1/4 → ``mask_features`` (run in float32, as detectron2 does);
* transformer decoder: learnable queries refined by masked cross-attention → self-attention → FFN
  layers cycling over the three scales; after the query features and after every layer the
  decoder-normed queries give class logits (``class_predictor``, C + 1 with "no object") and mask
  logits (mask-embedding MLP · mask features). ``decoder_layers`` counts these predictions, like
  detectron2's ``DEC_LAYERS`` (10 → 9 attention layers), and transformers' ``decoder_layers``;
* ``gma=True``: Mask2Anomaly's global masked attention (:mod:`.mask2former_gma`);
* ``ood_head=True``: a second class head W° (``nn.Linear(D, C + 1)``), MultiShiftSeg's
  learnable uncertainty function on Mask2Former (``class_embed2``).

``forward(x, taps)`` returns :class:`SegOutput` with ``logits`` = :func:`semantic_scores` of the
final layer at input size (Σ_q softmax(class_q)[:C] · σ(mask_q), values in [0, Q]),
``features`` = the 1/4-resolution mask features, and the taps listed in :attr:`Mask2Former.TAPS`.

``transformers`` is imported when a model is built, not when this module is imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ood_bench.errors import OodBenchError

from .base import SegOutput, register_model

if TYPE_CHECKING:
    from transformers import Mask2FormerConfig

NUM_FEATURE_LEVELS = 3  # Mask2Former's decoder always cycles over three pixel-decoder scales


def semantic_scores(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Per-pixel class scores Σ_q softmax(class_q)[:C] · σ(mask_q) (Mask2Former semantic inference).

    ``class_logits`` N×Q×(C+1) (last column = no object, dropped after the softmax),
    ``mask_logits`` N×Q×h×w → N×C×h×w float32. With ``size`` the mask logits are first resized
    to ``size`` (bilinear, ``align_corners=False``), then combined — detectron2's order.
    """
    if class_logits.ndim != 3 or mask_logits.ndim != 4:
        raise OodBenchError(
            "semantic_scores expects class logits N×Q×(C+1) and mask logits N×Q×h×w, got "
            f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}"
        )
    if class_logits.shape[:2] != mask_logits.shape[:2]:
        raise OodBenchError(
            f"class logits {tuple(class_logits.shape)} and mask logits "
            f"{tuple(mask_logits.shape)} disagree on N×Q"
        )
    with autocast_off(mask_logits.device):
        masks = mask_logits.float()
        if size is not None and tuple(size) != tuple(masks.shape[-2:]):
            masks = F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
        probs = class_logits.float().softmax(-1)[..., :-1]
        return torch.einsum("nqc,nqhw->nchw", probs, masks.sigmoid())


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device`` (a no-op when autocast is not on)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def attention_masks(
    mask_logits: torch.Tensor,
    size: Sequence[int],
    num_heads: int,
    background: bool = False,
) -> torch.Tensor:
    """Boolean cross-attention masks (True = may not attend) from the previous mask prediction.

    ``mask_logits`` N×Q×h×w are resized to ``size`` (bilinear, ``align_corners=False``). The
    foreground mask blocks positions with σ(m) < 0.5, the background mask (``background=True``,
    GMA) those with σ(m) > 0.5. A query whose mask blocks every position is lifted (attends
    everywhere). Returns (N·heads)×Q×(h'·w'), batch-major like ``nn.MultiheadAttention`` expects.
    """
    probs = F.interpolate(
        mask_logits.detach().float(), size=tuple(size), mode="bilinear", align_corners=False
    )
    probs = probs.sigmoid().flatten(2)
    blocked = probs > 0.5 if background else probs < 0.5
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    return blocked.repeat_interleave(num_heads, dim=0)


class Mask2Former(nn.Module):
    """Mask2Former semantic segmentation model (see the module docstring).

    Submodules keep transformers' names: ``pixel_level_module`` (``encoder`` = ResNet backbone,
    ``decoder`` = pixel decoder) and ``transformer_module`` (queries, level embeddings, ``decoder``
    with ``layers``, ``layernorm`` and ``mask_predictor.mask_embedder``); plus
    ``class_predictor`` and the optional ``ood_head``.
    """

    family = "mask2former"
    TAPS = (
        "class_logits",
        "mask_logits",
        "aux_class_logits",
        "aux_mask_logits",
        "queries",
        "ood_class_logits",
        "ood_aux_class_logits",
    )

    def __init__(
        self,
        config: Mask2FormerConfig,
        *,
        num_classes: int = 19,
        gma: bool = False,
        ood_head: bool = False,
        frozen_bn: bool = True,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise OodBenchError(f"num_classes must be a positive integer, got {num_classes!r}")
        if config.decoder_layers < 2:  # the query-feature prediction + at least one layer
            raise OodBenchError(f"decoder_layers must be at least 2, got {config.decoder_layers}")
        hf = _build_transformers_model(config)
        self.pixel_level_module = hf.pixel_level_module
        self.transformer_module = hf.transformer_module
        if gma:
            _use_global_masked_attention(self.transformer_module.decoder, config)
        if frozen_bn:
            from transformers.models.detr.modeling_detr import replace_batch_norm

            with torch.no_grad():  # the copied scales must not keep the parameters' history
                replace_batch_norm(self.pixel_level_module.encoder)
        hidden = config.hidden_dim
        self.class_predictor = nn.Linear(hidden, num_classes + 1)
        self.ood_head = nn.Linear(hidden, num_classes + 1) if ood_head else None
        if self.ood_head is not None:
            self.init_ood_head()
        self.num_classes = num_classes
        self.num_queries = config.num_queries
        self.num_heads = config.num_attention_heads
        self.gma = gma
        self.frozen_bn = frozen_bn
        self.config = config

    # -- public pieces ------------------------------------------------------------------------
    @property
    def mask_embed(self) -> nn.Module:
        """The 3-layer MLP turning decoder-normed queries into mask embeddings."""
        return self.transformer_module.decoder.mask_predictor.mask_embedder

    @property
    def decoder_norm(self) -> nn.LayerNorm:
        """The LayerNorm applied to the queries before the class and mask heads."""
        return self.transformer_module.decoder.layernorm

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part (disjoint, covering every parameter).

        ``"backbone"``, ``"pixel_decoder"``, ``"transformer_decoder"`` (queries, level
        embeddings, attention layers, decoder norm, mask-embedding MLP), ``"class_head"`` and
        ``"ood_head"`` (empty without one). Frozen BatchNorms hold buffers, not parameters.
        """
        return {
            "backbone": list(self.pixel_level_module.encoder.parameters()),
            "pixel_decoder": list(self.pixel_level_module.decoder.parameters()),
            "transformer_decoder": list(self.transformer_module.parameters()),
            "class_head": list(self.class_predictor.parameters()),
            "ood_head": [] if self.ood_head is None else list(self.ood_head.parameters()),
        }

    @torch.no_grad()
    def init_ood_head(self) -> None:
        """Copy the class head's weight and bias into the OOD head (MultiShiftSeg's init)."""
        if self.ood_head is None:
            raise OodBenchError("this model has no ood_head; build it with ood_head=True")
        self.ood_head.weight.copy_(self.class_predictor.weight)
        self.ood_head.bias.copy_(self.class_predictor.bias)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Convert a detectron2 Mask2Former/Mask2Anomaly state dict to ours (others unchanged).

        Called by :func:`ood_bench.models.load_checkpoint`. Keys no rule maps keep their
        detectron2 names, so the loader reports them as unexpected (an error when strict).
        """
        from .detectron2_convert import convert_detectron2_state_dict, is_detectron2_state_dict

        if not is_detectron2_state_dict(state):
            return state
        converted, report = convert_detectron2_state_dict(
            state, gma=self.gma, frozen_bn=self.frozen_bn, strict=False
        )
        return {**converted, **{key: state[key] for key in report.unmapped}}

    # -- forward ------------------------------------------------------------------------------
    def pixel_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Backbone + pixel decoder: ``(mask_features, multi_scale_features)`` (1/4; 1/32..1/8)."""
        stages = self.pixel_level_module.encoder(x).feature_maps
        decoder = self.pixel_level_module.decoder
        with autocast_off(x.device):  # deformable attention runs in float32, as in detectron2
            out = decoder([s.to(decoder.level_embed.dtype) for s in stages])
        return out.mask_features, out.multi_scale_features

    def decode(
        self, multi_scale: Sequence[torch.Tensor], mask_features: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Transformer decoder → per prediction (query features, then each layer): decoder-normed
        queries N×Q×D and mask logits N×Q×h×w."""
        tm = self.transformer_module
        srcs, pos, sizes = [], [], []
        for level in range(NUM_FEATURE_LEVELS):
            f = multi_scale[level]
            sizes.append(f.shape[-2:])
            pe = tm.position_embedder(f.shape, f.device, f.dtype, None)
            pos.append(pe.flatten(2).permute(2, 0, 1))
            src = tm.input_projections[level](f).flatten(2) + tm.level_embed.weight[level][:, None]
            srcs.append(src.permute(2, 0, 1))
        batch = mask_features.shape[0]
        query_pos = tm.queries_embedder.weight.unsqueeze(1).repeat(1, batch, 1)
        hidden = tm.queries_features.weight.unsqueeze(1).repeat(1, batch, 1)
        queries = [self.decoder_norm(hidden).transpose(0, 1)]
        masks = [self._mask_logits(queries[-1], mask_features)]
        for i, layer in enumerate(tm.decoder.layers):
            size = sizes[i % NUM_FEATURE_LEVELS]
            extra = {}
            if self.gma:
                extra["background_attention_mask"] = attention_masks(
                    masks[-1], size, self.num_heads, background=True
                )
            hidden = layer(
                hidden,
                i % NUM_FEATURE_LEVELS,
                None,
                pos,
                query_pos,
                srcs,
                encoder_attention_mask=attention_masks(masks[-1], size, self.num_heads),
                **extra,
            )[0]
            queries.append(self.decoder_norm(hidden).transpose(0, 1))
            masks.append(self._mask_logits(queries[-1], mask_features))
        return queries, masks

    def _mask_logits(self, queries: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nqc,nchw->nqhw", self.mask_embed(queries), mask_features)

    def forward(self, x: torch.Tensor, taps: Iterable[str] | None = None) -> SegOutput:
        available = [t for t in self.TAPS if self.ood_head is not None or not t.startswith("ood")]
        wanted = set(available if taps is None else taps)
        unknown = wanted - set(available)
        if unknown:
            raise OodBenchError(f"unknown taps {sorted(unknown)}; valid taps: {available}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise OodBenchError(f"expected an N×3×H×W image tensor, got shape {tuple(x.shape)}")
        mask_features, multi_scale = self.pixel_features(x)
        queries, masks = self.decode(multi_scale, mask_features)
        classes = [self.class_predictor(q) for q in queries]
        logits = semantic_scores(classes[-1], masks[-1], size=x.shape[-2:])
        found: dict[str, Callable[[], torch.Tensor]] = {
            "class_logits": lambda: classes[-1],
            "mask_logits": lambda: masks[-1],
            "aux_class_logits": lambda: torch.stack(classes[:-1]),
            "aux_mask_logits": lambda: torch.stack(masks[:-1]),
            "queries": lambda: queries[-1],
        }
        if self.ood_head is not None:
            ood = [self.ood_head(q) for q in queries]
            found["ood_class_logits"] = lambda: ood[-1]
            found["ood_aux_class_logits"] = lambda: torch.stack(ood[:-1])
        return SegOutput(logits, mask_features, {k: found[k]() for k in available if k in wanted})


def _build_transformers_model(config: Mask2FormerConfig) -> nn.Module:
    """A randomly initialised transformers ``Mask2FormerModel`` (its modules are reused)."""
    from transformers import Mask2FormerModel

    with _quiet_transformers():
        return Mask2FormerModel(config)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' "resnet is not a supported backbone" warning (it works here)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _use_global_masked_attention(decoder: nn.Module, config: Mask2FormerConfig) -> None:
    """Swap every decoder layer for a GMA layer (foreground branch keeps the layer's weights)."""
    from .mask2former_gma import GlobalMaskedAttentionLayer

    layers = []
    for layer in decoder.layers:
        gma_layer = GlobalMaskedAttentionLayer(config)
        gma_layer.load_state_dict(layer.state_dict(), strict=False)
        layers.append(gma_layer)
    decoder.layers = nn.ModuleList(layers)


def mask2former_config(
    *,
    depths: Sequence[int],
    hidden_sizes: Sequence[int],
    layer_type: str,
    embedding_size: int,
    hidden_dim: int,
    num_queries: int,
    decoder_layers: int,
    encoder_layers: int,
    num_heads: int,
    dim_feedforward: int,
    encoder_feedforward_dim: int,
) -> Mask2FormerConfig:
    """A transformers ``Mask2FormerConfig`` on a transformers ResNet backbone (no timm)."""
    from transformers import Mask2FormerConfig, ResNetConfig

    backbone = ResNetConfig(
        depths=list(depths),
        hidden_sizes=list(hidden_sizes),
        layer_type=layer_type,
        embedding_size=embedding_size,
        downsample_in_bottleneck=False,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    with _quiet_transformers():
        return Mask2FormerConfig(
            backbone_config=backbone,
            feature_size=hidden_dim,
            mask_feature_size=hidden_dim,
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            decoder_layers=decoder_layers,
            encoder_layers=encoder_layers,
            num_attention_heads=num_heads,
            dim_feedforward=dim_feedforward,
            encoder_feedforward_dim=encoder_feedforward_dim,
            dropout=0.0,
            pre_norm=False,
            common_stride=4,
        )


#: Mask2Anomaly / MultiShiftSeg (``anomaly_train.yaml``): R-50, 6 MSDeformAttn encoder layers
#: (FFN 1024), hidden 256, 8 heads, FFN 2048, 100 queries, DEC_LAYERS 10.
R50 = dict(
    depths=(3, 4, 6, 3),
    hidden_sizes=(256, 512, 1024, 2048),
    layer_type="bottleneck",
    embedding_size=64,
    hidden_dim=256,
    num_queries=100,
    decoder_layers=10,
    encoder_layers=6,
    num_heads=8,
    dim_feedforward=2048,
    encoder_feedforward_dim=1024,
)

#: CPU-trainable variant: basic-block ResNet (widths 16..128), hidden 64, 4 heads, 20 queries,
#: 2 encoder layers, decoder_layers 4 (= 3 masked-attention layers, one per scale).
TINY = dict(
    depths=(1, 1, 1, 1),
    hidden_sizes=(16, 32, 64, 128),
    layer_type="basic",
    embedding_size=16,
    hidden_dim=64,
    num_queries=20,
    decoder_layers=4,
    encoder_layers=2,
    num_heads=4,
    dim_feedforward=256,
    encoder_feedforward_dim=128,
)


@register_model("mask2former-r50", arch=R50, gma=False, frozen_bn=True)
@register_model("mask2former-r50-gma", arch=R50, gma=True, frozen_bn=True)
@register_model("mask2former-tiny", arch=TINY, gma=False, frozen_bn=False)
def mask2former(
    arch: dict[str, Any],
    num_classes: int = 19,
    gma: bool = False,
    ood_head: bool = False,
    frozen_bn: bool = True,
) -> Mask2Former:
    """Mask2Former semantic segmentation (``gma``: Mask2Anomaly; ``ood_head``: CG-Aug's W°)."""
    return Mask2Former(
        mask2former_config(**arch),
        num_classes=num_classes,
        gma=gma,
        ood_head=ood_head,
        frozen_bn=frozen_bn,
    )
