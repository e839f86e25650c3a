"""A small plain (VGG-style) CNN: ``depth`` stages of ``convs_per_stage`` conv-bn-relu units with
2x2 max pooling between stages, global average pool, linear classifier. The robust teacher of the
embedded (digits) profile and a cheap model for tests.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """``depth`` stages; stage ``i`` is ``convs_per_stage`` units of 3x3 conv (no bias) ->
    BatchNorm -> ReLU with ``width * 2**i`` channels and is followed by 2x2 max pooling (ceil mode,
    so a 1x1 map stays 1x1) except the last one; then global average pooling and a linear layer
    giving logits. ``depth * convs_per_stage`` conv layers in all (RNAS-CL's tutor candidates);
    ``convs_per_stage=1`` is the original one-conv-per-stage network.

    Args:
        num_classes: number of logits.
        input_channels: C of the (B, C, H, W) input.
        width: channels of the first stage.
        depth: number of stages.
        convs_per_stage: conv-bn-relu units per stage.
    """

    def __init__(
        self, num_classes: int, input_channels: int, width: int = 32, depth: int = 3, convs_per_stage: int = 1
    ) -> None:
        super().__init__()
        if num_classes < 1 or input_channels < 1 or width < 1 or depth < 1 or convs_per_stage < 1:
            raise ValueError(
                "num_classes, input_channels, width, depth and convs_per_stage must be >= 1, got "
                f"{num_classes}, {input_channels}, {width}, {depth}, {convs_per_stage}"
            )
        layers: list[nn.Module] = []
        c_in = input_channels
        for i in range(depth):
            c_out = width * 2**i
            for _ in range(convs_per_stage):
                layers += [
                    nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
            if i < depth - 1:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.features(x)  # (B, width * 2**(depth-1), H', W')
        # Global average pooling as a mean: deterministic on every device (AdaptiveAvgPool2d's
        # CUDA backward is not).
        out = out.mean(dim=(2, 3))  # (B, C)
        return self.classifier(out)  # (B, num_classes) logits


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
