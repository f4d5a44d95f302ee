"""DeepLabv3+ on ResNet encoders: ResNet-50/101 (output stride 8) and a small CPU-friendly net.

The ResNets are the standard v1.5 design (stride on the 3×3 conv of the bottleneck). For output
stride 8, ``layer3`` and ``layer4`` keep their resolution and dilate every 3×3 conv by 2 and 4
(NVIDIA's "variant D"); ``layer1`` (1/4 resolution) feeds ``bot_fine``. Keys follow NVIDIA's
``DeepR50V3PlusD_m1``/``DeepR101V3PlusD_OS8``: the stem is ``layer0`` (``0`` conv, ``1`` BN),
blocks use ``conv1..3``/``bn1..3``/``downsample.{0,1}``; an ImageNet ResNet checkpoint maps onto
the trunk by renaming ``conv1``→``layer0.0`` and ``bn1``→``layer0.1``.

``deeplabv3plus-small`` keeps the same decoder code with a light encoder: a 3×3 stride-2 stem and
max-pool, then one basic residual block per stage with widths ``(w, 2w, 4w, 8w)``, output stride 8
by dilation (2, 4), and a decoder of ``4w`` channels (ASPP, ``bot_aspp``, head) and ``w``
low-level channels. The default ``width=32`` gives about 2.6 M parameters; atrous rates default to
(2, 4, 6) because its inputs (around 96×192) are ~8× smaller than Cityscapes crops.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ood_bench.errors import OodBenchError

from .base import register_model
from .deeplab import DeepLabV3Plus


def _bn(channels: int, zero: bool = False) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    if zero:  # residual branch starts as identity: stabilises training from scratch
        nn.init.zeros_(bn.weight)
    return bn


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _bn(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection (ResNet-18/34 style)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, dilation, dilation, bias=False)
        self.bn1 = _bn(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, dilation, dilation, bias=False)
        self.bn2 = _bn(channels, zero=True)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided, dilated) → 1×1 ×4 with a residual connection (ResNet v1.5)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = _bn(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, dilation, dilation, bias=False)
        self.bn2 = _bn(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = _bn(out_channels, zero=True)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


def _stage(
    block: type[BasicBlock | Bottleneck],
    in_channels: int,
    channels: int,
    blocks: int,
    stride: int,
    dilation: int,
) -> nn.Sequential:
    layers = [block(in_channels, channels, stride, dilation)]
    layers += [block(channels * block.expansion, channels, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet_trunk(
    block: type[BasicBlock | Bottleneck],
    depths: Sequence[int],
    widths: Sequence[int],
    stem: nn.Sequential,
) -> dict[str, nn.Module]:
    """``layer0`` (stem, 1/4 resolution) + four stages; output stride 8 by dilating stages 3–4."""
    trunk: dict[str, nn.Module] = {"layer0": stem}
    in_channels = stem[0].out_channels
    # (stride, dilation) per stage: 1/4, 1/8, then stay at 1/8 with dilation 2 and 4.
    for i, (depth, width, (stride, dilation)) in enumerate(
        zip(depths, widths, [(1, 1), (2, 1), (1, 2), (1, 4)], strict=True), start=1
    ):
        trunk[f"layer{i}"] = _stage(block, in_channels, width, depth, stride, dilation)
        in_channels = width * block.expansion
    for module in trunk.values():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return trunk


class ResNetDeepLabV3Plus(DeepLabV3Plus):
    """DeepLabv3+ whose trunk is ``layer0..layer4``; ``layer1`` is the low-level feature."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        depths: Sequence[int],
        widths: Sequence[int],
        stem: nn.Sequential,
        **decoder_kwargs,
    ):
        trunk = resnet_trunk(block, depths, widths, stem)
        super().__init__(
            trunk,
            low_channels=widths[0] * block.expansion,
            high_channels=widths[-1] * block.expansion,
            **decoder_kwargs,
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = self.layer1(self.layer0(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


def _imagenet_stem() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        _bn(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


@register_model("deeplabv3plus-r50", depths=(3, 4, 6, 3))
@register_model("deeplabv3plus-r101", depths=(3, 4, 23, 3))
def deeplabv3plus_resnet(
    depths: Sequence[int], num_classes: int = 19, ood_head: bool = False
) -> ResNetDeepLabV3Plus:
    """DeepLabv3+ (OS 8, ASPP rates 12/24/36, 256-ch decoder) on a bottleneck ResNet."""
    return ResNetDeepLabV3Plus(
        Bottleneck,
        depths,
        (64, 128, 256, 512),
        _imagenet_stem(),
        num_classes=num_classes,
        ood_head=ood_head,
    )


@register_model("deeplabv3plus-small")
def deeplabv3plus_small(
    num_classes: int = 19,
    width: int = 32,
    aspp_rates: Sequence[int] = (2, 4, 6),
    ood_head: bool = False,
) -> ResNetDeepLabV3Plus:
    """A light DeepLabv3+ (≈2.6 M parameters at ``width=32``) for CPU training at ~96×192."""
    if not isinstance(width, int) or width < 1:
        raise OodBenchError(f"width must be a positive integer, got {width!r}")
    stem = nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
        _bn(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    return ResNetDeepLabV3Plus(
        BasicBlock,
        (1, 1, 1, 1),
        (width, 2 * width, 4 * width, 8 * width),
        stem,
        num_classes=num_classes,
        aspp_channels=4 * width,
        aspp_rates=aspp_rates,
        fine_channels=width,
        head_channels=4 * width,
        ood_head=ood_head,
    )
