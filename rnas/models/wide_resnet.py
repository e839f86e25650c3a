"""Wide residual network WRN-depth-k.

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146). depth = 6n + 4:
a 3x3 stem with 16 channels, three groups of n pre-activation basic blocks with 16k, 32k and 64k
channels (strides 1, 2, 2), then BN-ReLU, global average pooling and a linear layer. WRN-34-10 is
the standard robust CIFAR network (Madry et al. 2018, TRADES, RobustBench); this follows their
implementation (the shortcut 1x1 conv sees the pre-activated input when the shape changes).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.conv_shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.conv_shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(pre)
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` returning logits.

    Args:
        num_classes: number of logits.
        input_channels: C of the (B, C, H, W) input.
        depth: total depth, 6n + 4 (34 -> 5 blocks per group).
        widen_factor: k, the width multiplier of the three groups.
        drop_rate: dropout between the two convs of each block (0 in the robust setting).
    """

    def __init__(
        self,
        num_classes: int,
        input_channels: int,
        depth: int = 34,
        widen_factor: int = 10,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
        if num_classes < 1 or input_channels < 1 or widen_factor < 1:
            raise ValueError(
                "num_classes, input_channels and widen_factor must be >= 1, got "
                f"{num_classes}, {input_channels}, {widen_factor}"
            )
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(input_channels, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        groups: list[nn.Module] = []
        for g, stride in enumerate((1, 2, 2)):
            c_in, c_out = channels[g], channels[g + 1]
            blocks = [
                WideBasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, drop_rate) for i in range(n)
            ]
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)  # (B, 16, H, W)
        out = self.block1(out)  # (B, 16k, H, W)
        out = self.block2(out)  # (B, 32k, H/2, W/2)
        out = self.block3(out)  # (B, 64k, H/4, W/4)
        out = self.relu(self.bn(out))
        out = out.mean(dim=(2, 3))  # global average pooling, (B, 64k); deterministic on CUDA
        return self.fc(out)  # (B, num_classes) logits
