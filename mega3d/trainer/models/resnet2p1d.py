"""R(2+1)D: every 3x3x3 convolution factorised into a 1x3x3 spatial and a 3x1x1 temporal one, with the
middle width chosen so that the parameter count matches the 3D convolution it replaces. Key names follow
the reference (`conv1_s`, `bn1_s`, `conv1_t`, `bn1_t`, ...)."""

from __future__ import annotations

import torch
from torch import nn

from mega3d.trainer.models.resnet import Block, ResNet, conv1x1x1


def conv1x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(
        in_planes,
        out_planes,
        kernel_size=(1, 3, 3),
        stride=(1, stride, stride),
        padding=(0, 1, 1),
        bias=False,
    )


def conv3x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(
        in_planes, out_planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False
    )


def mid_planes(in_planes: int, out_planes: int, spatial: int = 9, temporal: int = 3) -> int:
    """Width between the spatial and temporal convolutions: as many parameters as the full 3D kernel."""
    return (spatial * temporal * in_planes * out_planes) // (spatial * in_planes + temporal * out_planes)


class BasicBlock2p1d(Block):
    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        mid1, mid2 = mid_planes(in_planes, planes), mid_planes(planes, planes)
        self.conv1_s = conv1x3x3(in_planes, mid1, stride)
        self.bn1_s = nn.BatchNorm3d(mid1)
        self.conv1_t = conv3x1x1(mid1, planes, stride)
        self.bn1_t = nn.BatchNorm3d(planes)
        self.conv2_s = conv1x3x3(planes, mid2)
        self.bn2_s = nn.BatchNorm3d(mid2)
        self.conv2_t = conv3x1x1(mid2, planes)
        self.bn2_t = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        out = self.relu(self.bn1_s(self.conv1_s(x)))
        out = self.relu(self.bn1_t(self.conv1_t(out)))
        out = self.relu(self.bn2_s(self.conv2_s(out)))
        out = self.bn2_t(self.conv2_t(out))
        return self.relu(out + identity)


class Bottleneck2p1d(Block):
    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        mid = mid_planes(planes, planes)
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2_s = conv1x3x3(planes, mid, stride)
        self.bn2_s = nn.BatchNorm3d(mid)
        self.conv2_t = conv3x1x1(mid, planes, stride)
        self.bn2_t = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2_s(self.conv2_s(out)))
        out = self.relu(self.bn2_t(self.conv2_t(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class R2Plus1D(ResNet):
    """The ResNet skeleton with a factorised stem: 1x7x7 spatial, then t x 1 x 1 temporal."""

    def make_stem(self, n_input_channels: int, t_size: int, t_stride: int) -> None:
        # The reference sizes this width for RGB whatever the input channels; so must we, to load its files.
        mid = mid_planes(3, self.in_planes, spatial=49, temporal=t_size)
        self.conv1_s = nn.Conv3d(
            n_input_channels, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False
        )
        self.bn1_s = nn.BatchNorm3d(mid)
        self.conv1_t = nn.Conv3d(
            mid,
            self.in_planes,
            kernel_size=(t_size, 1, 1),
            stride=(t_stride, 1, 1),
            padding=(t_size // 2, 0, 0),
            bias=False,
        )
        self.bn1_t = nn.BatchNorm3d(self.in_planes)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1_s(self.conv1_s(x)))
        return self.relu(self.bn1_t(self.conv1_t(x)))
