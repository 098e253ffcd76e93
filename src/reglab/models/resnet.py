"""ResNet-18 in its usual CIFAR form (kuangliu/pytorch-cifar style).

Layout: 3x3 conv stem (64 channels, stride 1) -> BN -> ReLU, no max-pool; four stages of two
:class:`BasicBlock` s with widths 64/128/256/512 and strides 1/2/2/2; adaptive average pool;
``dropout`` (identity when 0); linear ``fc``. The shortcut is a 1x1 strided conv + BN whenever
the shape changes, the identity otherwise. 11,173,962 parameters for 10 classes.

Unlike the original's ``avg_pool2d(out, 4)``, the pool is adaptive, so any input side >= 8
works (8 -> 1x1 after the three stride-2 stages). Init: Kaiming normal (fan_out, ReLU) for convs,
BN weight 1 / bias 0, PyTorch's default for the linear layer.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from reglab.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv -> BN layers (the first carries the stride) plus a shortcut, then ReLU."""

    expansion = 1

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, block_dropout: float = 0.0
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )
        # between the two convs, as in wide ResNets; whole channels (Dropout2d)
        self.drop = nn.Dropout2d(block_dropout) if block_dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.drop is not None:
            out = self.drop(out)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet built from ``BasicBlock`` s; ``blocks`` gives the count per stage.

    Args:
        blocks: number of blocks in each of the four stages (``(2, 2, 2, 2)`` is ResNet-18).
        num_classes: outputs of the final linear layer.
        dropout: probability of the dropout before ``fc``; 0 puts an ``nn.Identity`` there.
        block_dropout: probability of the Dropout2d between the two convs of every block (0: none).
    """

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 10,
        dropout: float = 0.0,
        block_dropout: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        in_channels = 64
        stages = []
        for width, stride, count in zip(widths, strides, blocks):
            layers = [BasicBlock(in_channels, width, stride, block_dropout)]
            layers += [BasicBlock(width, width, 1, block_dropout) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


@register_model("resnet18", min_image_size=8)
def resnet18(num_classes: int = 10, dropout: float = 0.0, block_dropout: float = 0.0) -> ResNet:
    """ResNet-18, CIFAR form: 11,173,962 parameters for 10 classes."""
    return ResNet(
        (2, 2, 2, 2), num_classes=num_classes, dropout=dropout, block_dropout=block_dropout
    )
