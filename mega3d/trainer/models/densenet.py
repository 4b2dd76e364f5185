"""3D DenseNet (121/169/201/264), architecture only, with the reference's module names
(`features.conv1`, `features.denseblockN.denselayerM.conv1`, `features.transitionN`, `features.norm5`,
`classifier`)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS: dict[int, tuple[int, int, int, int]] = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
    264: (6, 12, 64, 48),
}


class DenseLayer(nn.Sequential):
    """BN-ReLU-1x1x1 conv to bn_size x growth, BN-ReLU-3x3x3 conv to growth; the output is concatenated."""

    def __init__(self, in_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("norm1", nn.BatchNorm3d(in_features)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("conv1", nn.Conv3d(in_features, bn_size * growth_rate, kernel_size=1, bias=False)),
                    ("norm2", nn.BatchNorm3d(bn_size * growth_rate)),
                    ("relu2", nn.ReLU(inplace=True)),
                    (
                        "conv2",
                        nn.Conv3d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False),
                    ),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, super().forward(x)], 1)


class Transition(nn.Sequential):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("norm", nn.BatchNorm3d(in_features)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("conv", nn.Conv3d(in_features, out_features, kernel_size=1, bias=False)),
                    ("pool", nn.AvgPool3d(kernel_size=2, stride=2)),
                ]
            )
        )


class DenseNet(nn.Module):
    def __init__(
        self,
        block_config: tuple[int, ...],
        n_classes: int,
        *,
        n_input_channels: int = 3,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        no_max_pool: bool = False,
        growth_rate: int = 32,
        num_init_features: int = 64,
        bn_size: int = 4,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    (
                        "conv1",
                        nn.Conv3d(
                            n_input_channels,
                            num_init_features,
                            kernel_size=(conv1_t_size, 7, 7),
                            stride=(conv1_t_stride, 2, 2),
                            padding=(conv1_t_size // 2, 3, 3),
                            bias=False,
                        ),
                    ),
                    ("norm1", nn.BatchNorm3d(num_init_features)),
                    ("relu1", nn.ReLU(inplace=True)),
                ]
            )
        )
        if not no_max_pool:
            self.features.add_module("pool1", nn.MaxPool3d(kernel_size=3, stride=2, padding=1))
        features = num_init_features
        for i, n_layers in enumerate(block_config, 1):
            block = nn.Sequential(
                OrderedDict(
                    (f"denselayer{j + 1}", DenseLayer(features + j * growth_rate, growth_rate, bn_size))
                    for j in range(n_layers)
                )
            )
            self.features.add_module(f"denseblock{i}", block)
            features += n_layers * growth_rate
            if i != len(block_config):
                self.features.add_module(f"transition{i}", Transition(features, features // 2))
                features //= 2
        self.features.add_module("norm5", nn.BatchNorm3d(features))
        self.classifier = nn.Linear(features, n_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool3d(out, 1), 1))
