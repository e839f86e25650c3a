"""Pre-activation ResNet-18.

He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016
(arXiv:1603.05027). Each residual unit computes x + F(x) with F = conv(relu(bn(conv(relu(bn(x)))))),
i.e. BN and ReLU come *before* each convolution. CIFAR-style stem (one 3x3 conv, stride 1, no
pooling), four stages of two units with widths w, 2w, 4w, 8w and strides 1, 2, 2, 2 — the network
of the fast adversarial training and robust overfitting papers (Rice et al. 2020) at w = 64.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PreActBlock", "PreActResNet18"]


class PreActBlock(nn.Module):
    """Pre-activation basic block. When the shape changes, the shortcut is a 1x1 conv applied to
    the pre-activated input relu(bn1(x)), as in the paper's code."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 returning logits.

    Args:
        num_classes: number of logits.
        input_channels: C of the (B, C, H, W) input.
        width: base width w (channels of the stem and first stage); 64 in the paper.
    """

    num_blocks = (2, 2, 2, 2)

    def __init__(self, num_classes: int, input_channels: int, width: int = 64) -> None:
        super().__init__()
        if num_classes < 1 or input_channels < 1 or width < 1:
            raise ValueError(
                f"num_classes, input_channels and width must be >= 1, got {num_classes}, {input_channels}, {width}"
            )
        self.conv1 = nn.Conv2d(input_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        stages: list[nn.Module] = []
        in_planes = width
        for i, n in enumerate(self.num_blocks):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(PreActBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)  # (B, w, H, W)
        out = self.layer1(out)  # (B, w, H, W)
        out = self.layer2(out)  # (B, 2w, H/2, W/2)
        out = self.layer3(out)  # (B, 4w, H/4, W/4)
        out = self.layer4(out)  # (B, 8w, H/8, W/8)
        out = self.relu(self.bn(out))
        # Global average pooling (the paper's 4x4 avg pool at 32x32 input), written as a mean so
        # that it works at any input size and is deterministic on CUDA.
        out = out.mean(dim=(2, 3))  # (B, 8w)
        return self.linear(out)  # (B, num_classes) logits
