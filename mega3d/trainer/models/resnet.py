"""The 3D ResNet skeleton and the R3D blocks, architecture only.

Module names, shapes and options follow the reference implementation (3D-ResNets-PyTorch), so its
published checkpoints load key for key: conv1/bn1 stem, layer1..layer4 of blocks, `downsample.0/1` for
type-B shortcuts, fc head. The other ResNet families reuse the skeleton with their own blocks or stem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

ShortcutType = Literal["A", "B"]
BLOCK_PLANES = (64, 128, 256, 512)
LAYERS: dict[int, tuple[Literal["basic", "bottleneck"], tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}


def scaled(planes: Sequence[int], factor: float) -> tuple[int, ...]:
    return tuple(max(1, int(p * factor)) for p in planes)


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Block(nn.Module):
    """A residual block: `expansion` x planes channels out; `downsample` (if any) maps its input to match."""

    expansion: ClassVar[int] = 1
    downsample: nn.Module | None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)


class ZeroPadShortcut(nn.Module):
    """Type-A shortcut: subsample in space-time and pad the new channels with zeros (no parameters)."""

    def __init__(self, out_planes: int, stride: int) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        return F.pad(out, (0, 0, 0, 0, 0, 0, 0, self.out_planes - out.shape[1]))


class BasicBlock(Block):
    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(Block):
    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem, max-pool, four stages of residual blocks, global average pool, fc."""

    def __init__(
        self,
        block: type[Block],
        layers: Sequence[int],
        planes: Sequence[int],
        n_classes: int,
        *,
        n_input_channels: int = 3,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        no_max_pool: bool = False,
        shortcut_type: ShortcutType = "B",
        block_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.in_planes = planes[0]
        self.shortcut_type = shortcut_type
        self.make_stem(n_input_channels, conv1_t_size, conv1_t_stride)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if no_max_pool else nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        )
        options = dict(block_options or {})
        self.layer1 = self._make_layer(block, planes[0], layers[0], 1, options)
        self.layer2 = self._make_layer(block, planes[1], layers[1], 2, options)
        self.layer3 = self._make_layer(block, planes[2], layers[2], 2, options)
        self.layer4 = self._make_layer(block, planes[3], layers[3], 2, options)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(planes[3] * block.expansion, n_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def make_stem(self, n_input_channels: int, t_size: int, t_stride: int) -> None:
        self.conv1 = nn.Conv3d(
            n_input_channels,
            self.in_planes,
            kernel_size=(t_size, 7, 7),
            stride=(t_stride, 2, 2),
            padding=(t_size // 2, 3, 3),
            bias=False,
        )
        self.bn1 = nn.BatchNorm3d(self.in_planes)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def _make_layer(
        self, block: type[Block], planes: int, blocks: int, stride: int, options: dict[str, Any]
    ) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self.in_planes != out_planes:
            if self.shortcut_type == "A":
                downsample = ZeroPadShortcut(out_planes, stride)
            else:
                downsample = nn.Sequential(
                    conv1x1x1(self.in_planes, out_planes, stride), nn.BatchNorm3d(out_planes)
                )
        layers: list[nn.Module] = [block(self.in_planes, planes, stride, downsample, **options)]
        self.in_planes = out_planes
        layers += [block(self.in_planes, planes, **options) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
