"""The DeepLabv3+ decoder shared by every encoder (WideResNet-38, ResNet-50/101, the small CPU net).

The layout follows NVIDIA's semantic-segmentation ``DeepV3Plus``/``DeepWV3Plus``, so attribute
names (``aspp``, ``bot_fine``, ``bot_aspp``, ``final``, ``ood_head``) and therefore state-dict keys
match the community checkpoints:

* ``aspp``: image pooling + 1×1 + three atrous 3×3 branches (Conv-BN-ReLU each), concatenated in
  that order (image pooling first);
* ``bot_aspp``: 1×1 conv on the ASPP output, bilinearly upsampled to the low-level size;
* ``bot_fine``: 1×1 conv on the low-level encoder feature;
* ``final``: 3×3 Conv-BN-ReLU, 3×3 Conv-BN-ReLU (→ ``features``), 1×1 classifier (→ logits);
* optional ``ood_head``: a second bias-free 1×1 classifier on ``features`` (MultiShiftSeg's
  learnable uncertainty function; its free energy is the ``"ood_score"`` tap).

All bilinear resizing uses ``align_corners=True`` and runs in float32 (as the original ``Upsample``
under apex AMP), so logits are float32 even under autocast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ood_bench.errors import OodBenchError

from .base import SegOutput


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True``, computed in float32."""
    return F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=True)


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Bias-free conv + BatchNorm + ReLU ("same" padding); keys ``0.weight``, ``1.*``."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: image pooling, 1×1 and one 3×3 branch per atrous rate.

    Output channels: ``channels * (len(rates) + 2)``; the concatenation order is image pooling,
    1×1, then the rates in order (as in the original, which matters for ``bot_aspp`` weights).
    """

    def __init__(self, in_channels: int, channels: int = 256, rates: Sequence[int] = (12, 24, 36)):
        super().__init__()
        branches = [conv_bn_relu(in_channels, channels, 1)]
        branches += [conv_bn_relu(in_channels, channels, 3, dilation=r) for r in rates]
        self.features = nn.ModuleList(branches)
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = conv_bn_relu(in_channels, channels, 1)
        self.out_channels = channels * (len(rates) + 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = upsample(self.img_conv(self.img_pooling(x)), x.shape[-2:]).to(x.dtype)
        return torch.cat([pooled, *(branch(x) for branch in self.features)], dim=1)


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ with a pluggable encoder ("trunk").

    Subclasses pass their trunk modules (registered first, in order, so state-dict keys come out in
    the original order) and implement :meth:`encode`, returning ``(low_level, high_level)``.

    ``forward(x)`` takes an already-normalised N×3×H×W image and returns :class:`SegOutput`:
    ``logits`` N×C×H×W (float32, input size), ``features`` N×``head_channels``×h×w (the decoder
    feature before the last 1×1 classifier, at the low-level resolution) and ``taps``. Tap names
    (see :attr:`TAPS`): ``"trunk"`` (high-level encoder output), ``"low_level"`` (encoder feature
    fed to ``bot_fine``), ``"aspp"`` (ASPP concatenation), ``"decoder_input"`` (the
    ``bot_fine``/``bot_aspp`` concatenation that ``final`` consumes, what RPL adds its residual
    to), and with ``ood_head=True`` also ``"ood_logits"`` (N×C×h×w) and ``"ood_score"``
    (N×H×W, ``−logsumexp(ood_logits)`` upsampled; higher = more anomalous). By default only
    ``"trunk"`` and the ``ood_*`` taps are returned; ask for others with ``taps=[...]``.
    """

    family = "deeplabv3plus"
    TAPS = ("trunk", "low_level", "aspp", "decoder_input", "ood_logits", "ood_score")
    DEFAULT_TAPS = ("trunk", "ood_logits", "ood_score")

    def __init__(
        self,
        trunk: Mapping[str, nn.Module],
        *,
        num_classes: int,
        low_channels: int,
        high_channels: int,
        aspp_channels: int = 256,
        aspp_rates: Sequence[int] = (12, 24, 36),
        fine_channels: int = 48,
        head_channels: int = 256,
        ood_head: bool = False,
    ):
        super().__init__()
        if num_classes < 1:
            raise OodBenchError(f"num_classes must be a positive integer, got {num_classes}")
        self.num_classes = num_classes
        self.trunk_names = tuple(trunk)
        for name, module in trunk.items():
            self.add_module(name, module)
        self.aspp = ASPP(high_channels, aspp_channels, aspp_rates)
        self.bot_fine = nn.Conv2d(low_channels, fine_channels, 1, bias=False)
        self.bot_aspp = nn.Conv2d(self.aspp.out_channels, aspp_channels, 1, bias=False)
        self.final = nn.Sequential(
            nn.Conv2d(fine_channels + aspp_channels, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(head_channels, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(head_channels, num_classes, 1, bias=False),
        )
        self.ood_head = nn.Conv2d(head_channels, num_classes, 1, bias=False) if ood_head else None
        self.feature_channels = head_channels
        for module in self.decoder_modules():
            init_decoder_weights(module)
        if self.ood_head is not None:
            self.init_ood_head()

    # -- encoder ------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the trunk; return ``(low_level, high_level)`` features."""
        raise NotImplementedError

    # -- public pieces, so methods never touch private attributes ------------------------------
    @property
    def classifier(self) -> nn.Conv2d:
        """The last 1×1 conv of ``final`` (features → logits)."""
        return self.final[-1]

    @property
    def head(self) -> nn.Sequential:
        """``final`` without its classifier: decoder input → ``features``."""
        return self.final[:-1]

    def decoder_modules(self) -> list[nn.Module]:
        """ASPP, the two 1×1 bottlenecks and ``final`` (what the original initialises)."""
        return [self.aspp, self.bot_fine, self.bot_aspp, self.final]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part, for freezing / per-part learning rates.

        ``"trunk"`` (encoder), ``"aspp"``, ``"bottlenecks"`` (``bot_fine`` + ``bot_aspp``; with
        ``"aspp"`` this is what CG-Aug stage 2 trains), ``"head"`` (the two 3×3 convs of
        ``final``), ``"classifier"`` (last 1×1 conv) and ``"ood_head"`` (empty without one).
        Every parameter appears in exactly one group.
        """
        trunk = [p for name in self.trunk_names for p in getattr(self, name).parameters()]
        return {
            "trunk": trunk,
            "aspp": list(self.aspp.parameters()),
            "bottlenecks": [*self.bot_fine.parameters(), *self.bot_aspp.parameters()],
            "head": list(self.head.parameters()),
            "classifier": list(self.classifier.parameters()),
            "ood_head": [] if self.ood_head is None else list(self.ood_head.parameters()),
        }

    @torch.no_grad()
    def init_ood_head(self) -> None:
        """Copy the classifier weights into ``ood_head`` (MultiShiftSeg's initialisation)."""
        if self.ood_head is None:
            raise OodBenchError("this model has no ood_head; build it with ood_head=True")
        self.ood_head.weight.copy_(self.classifier.weight)

    def decoder_input(self, low: torch.Tensor, aspp: torch.Tensor) -> torch.Tensor:
        """``cat(bot_fine(low), upsample(bot_aspp(aspp)))`` at the low-level resolution."""
        up = upsample(self.bot_aspp(aspp), low.shape[-2:]).to(low.dtype)
        return torch.cat([self.bot_fine(low), up], dim=1)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, taps: Iterable[str] | None = None) -> SegOutput:
        wanted = set(self.DEFAULT_TAPS if taps is None else taps)
        unknown = wanted - set(self.TAPS)
        if unknown:
            raise OodBenchError(f"unknown taps {sorted(unknown)}; valid taps: {list(self.TAPS)}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise OodBenchError(f"expected an N×3×H×W image tensor, got shape {tuple(x.shape)}")
        low, high = self.encode(x)
        aspp = self.aspp(high)
        dec0 = self.decoder_input(low, aspp)
        features = self.head(dec0)
        logits = upsample(self.classifier(features), x.shape[-2:])
        found = {"trunk": high, "low_level": low, "aspp": aspp, "decoder_input": dec0}
        if self.ood_head is not None:
            ood_logits = self.ood_head(features)
            found["ood_logits"] = ood_logits
            energy = -torch.logsumexp(ood_logits.float(), dim=1, keepdim=True)
            found["ood_score"] = upsample(energy, x.shape[-2:])[:, 0]
        return SegOutput(logits, features, {k: v for k, v in found.items() if k in wanted})


def init_decoder_weights(module: nn.Module) -> None:
    """Kaiming-normal convs, unit/zero BatchNorm (the original ``initialize_weights``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
