"""Blocks of the other ResNet families of the reference: pre-activation, wide and ResNeXt."""

from __future__ import annotations

import torch
from torch import nn

from mega3d.trainer.models.resnet import Block, Bottleneck, conv1x1x1, conv3x3x3

RESNEXT_PLANES = (128, 256, 512, 1024)


class PreActBasicBlock(Block):
    """BN-ReLU-conv ordering; the sum is not followed by a ReLU."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm3d(in_planes)
        self.conv1 = conv3x3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


class PreActBottleneck(Block):
    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm3d(in_planes)
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + identity


class WideBottleneck(Bottleneck):
    """A bottleneck that expands by 2 instead of 4; the network's widths are multiplied by k."""

    expansion = 2


class ResNeXtBottleneck(Block):
    """A bottleneck whose 3x3x3 convolution is split into `cardinality` groups."""

    expansion = 2

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 32,
    ) -> None:
        super().__init__()
        mid = cardinality * planes // 32
        self.conv1 = conv1x1x1(in_planes, mid)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(
            mid, mid, kernel_size=3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = conv1x1x1(mid, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)
