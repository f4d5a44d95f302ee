"""DeepLabv3+ on WideResNet-38-A2: NVIDIA's Cityscapes "DeepWV3Plus", state-dict compatible.

Trunk (WiderResNetA2, structure ``[3, 3, 6, 3, 1, 1]``, dilated to output stride 8):

======  =================  ======  ========  =======  =====================
module  block channels     blocks  stride    dilation dropout (Dropout2d)
======  =================  ======  ========  =======  =====================
mod1    3×3 conv 3→64      –       1         –        –
pool2   max-pool 3, s2     –       2         –        –
mod2    (128, 128)         3       1         1        –
pool3   max-pool 3, s2     –       2         –        –
mod3    (256, 256)         3       1         1        –
mod4    (512, 512)         6       2 (1st)   1        –
mod5    (512, 1024)        3       1         2        –
mod6    (512, 1024, 2048)  1       1         4        p = 0.3, before conv3
mod7    (1024, 2048, 4096) 1       1         4        p = 0.5, before conv3
======  =================  ======  ========  =======  =====================

Blocks are pre-activation ("identity mapping") residual blocks: ``bn1`` (BN + ReLU) first; when the
block changes width or stride a 1×1 ``proj_conv`` takes the *pre-activated* input as shortcut,
otherwise the raw input is the shortcut. Two-conv blocks are 3×3/3×3; three-conv blocks are
1×1/3×3/1×1 with the stride on the first conv. The trunk's final ``bn_out`` is not used (the
original deletes it), so ASPP sees the raw ``mod7`` sum. ``bot_fine`` taps the ``mod2`` output
(128 ch at 1/2 resolution), so ``features`` are at 1/2 input resolution; ASPP runs on the
4096-ch ``mod7`` output at 1/8 with rates 12/24/36.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from .base import register_model
from .deeplab import DeepLabV3Plus


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class IdentityResidualBlock(nn.Module):
    """Pre-activation residual block of WiderResNet (two 3×3 convs, or a 1-3-1 bottleneck)."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        stride: int = 1,
        dilation: int = 1,
        dropout: float | None = None,
    ):
        super().__init__()
        self.bn1 = _bn_relu(in_channels)
        if len(channels) == 2:
            layers = [
                (
                    "conv1",
                    nn.Conv2d(in_channels, channels[0], 3, stride, dilation, dilation, bias=False),
                ),
                ("bn2", _bn_relu(channels[0])),
                (
                    "conv2",
                    nn.Conv2d(channels[0], channels[1], 3, 1, dilation, dilation, bias=False),
                ),
            ]
        else:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 1, stride, bias=False)),
                ("bn2", _bn_relu(channels[0])),
                (
                    "conv2",
                    nn.Conv2d(channels[0], channels[1], 3, 1, dilation, dilation, bias=False),
                ),
                ("bn3", _bn_relu(channels[1])),
                ("conv3", nn.Conv2d(channels[1], channels[2], 1, bias=False)),
            ]
        if dropout is not None:  # just before the last conv, as in the original
            layers.insert(len(layers) - 1, ("dropout", nn.Dropout2d(dropout)))
        self.convs = nn.Sequential(OrderedDict(layers))
        self.proj_conv = (
            nn.Conv2d(in_channels, channels[-1], 1, stride, bias=False)
            if stride != 1 or in_channels != channels[-1]
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.bn1(x)
        shortcut = x if self.proj_conv is None else self.proj_conv(pre)
        return self.convs(pre) + shortcut


# (block channels, number of blocks, first-block stride, dilation, dropout) for mod2..mod7.
_WRN38_A2 = (
    ((128, 128), 3, 1, 1, None),
    ((256, 256), 3, 1, 1, None),
    ((512, 512), 6, 2, 1, None),
    ((512, 1024), 3, 1, 2, None),
    ((512, 1024, 2048), 1, 1, 4, 0.3),
    ((1024, 2048, 4096), 1, 1, 4, 0.5),
)


def wider_resnet38_a2_trunk() -> dict[str, nn.Module]:
    """``mod1``, ``pool2``, ``mod2``, ``pool3``, ``mod3``…``mod7`` in the original order."""
    trunk: dict[str, nn.Module] = {
        "mod1": nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 64, 3, padding=1, bias=False)))
    }
    in_channels = 64
    for mod_id, (channels, blocks, stride, dilation, dropout) in enumerate(_WRN38_A2, start=2):
        if mod_id <= 3:
            trunk[f"pool{mod_id}"] = nn.MaxPool2d(3, stride=2, padding=1)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for b in range(blocks):
            layers[f"block{b + 1}"] = IdentityResidualBlock(
                in_channels, channels, stride if b == 0 else 1, dilation, dropout
            )
            in_channels = channels[-1]
        trunk[f"mod{mod_id}"] = nn.Sequential(layers)
    return trunk


class WideResNetDeepLabV3Plus(DeepLabV3Plus):
    """NVIDIA's DeepWV3Plus.

    Loads ``cityscapes_best.pth`` / ``DeepLabV3+_WideResNet38_baseline.pth`` with
    ``ood_head=False`` and MultiShiftSeg's ``DeepLab_best.pth`` with ``ood_head=True``.
    """

    def __init__(self, num_classes: int = 19, ood_head: bool = False):
        super().__init__(
            wider_resnet38_a2_trunk(),
            num_classes=num_classes,
            low_channels=128,
            high_channels=4096,
            ood_head=ood_head,
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m2 = self.mod2(self.pool2(self.mod1(x)))
        x = self.mod3(self.pool3(m2))
        return m2, self.mod7(self.mod6(self.mod5(self.mod4(x))))


@register_model("deeplabv3plus-wrn38")
def deeplabv3plus_wrn38(num_classes: int = 19, ood_head: bool = False) -> WideResNetDeepLabV3Plus:
    """DeepLabv3+ on WideResNet-38-A2 (output stride 8), the community Cityscapes baseline."""
    return WideResNetDeepLabV3Plus(num_classes=num_classes, ood_head=ood_head)
