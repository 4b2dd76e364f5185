"""The model registry: one name per architecture, each mapped to its builder.

Names and the options each family takes come from `mega3d.trainer.model_catalog`, the table specs are
validated against; the reference implementation's arch strings (`resnet-50`, `resnet2p1d-18`, ...) are
aliases.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from mega3d.trainer.model_catalog import FAMILIES, canonical_name, family_of
from mega3d.trainer.models.densenet import BLOCKS as DENSENET_BLOCKS
from mega3d.trainer.models.densenet import DenseNet
from mega3d.trainer.models.resnet import BLOCK_PLANES, LAYERS, BasicBlock, Bottleneck, ResNet, scaled
from mega3d.trainer.models.resnet2p1d import BasicBlock2p1d, Bottleneck2p1d, R2Plus1D
from mega3d.trainer.models.resnet_variants import (
    RESNEXT_PLANES,
    PreActBasicBlock,
    PreActBottleneck,
    ResNeXtBottleneck,
    WideBottleneck,
)
from mega3d.trainer.models.weights import WeightsError, head_name, load_weights

__all__ = ["MODELS", "WeightsError", "build_model", "head_name", "load_weights"]


def r3d(depth: int, n_classes: int, widen_factor: float = 1.0, **options: Any) -> nn.Module:
    kind, layers = LAYERS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    return ResNet(block, layers, scaled(BLOCK_PLANES, widen_factor), n_classes, **options)


def r2plus1d(depth: int, n_classes: int, widen_factor: float = 1.0, **options: Any) -> nn.Module:
    kind, layers = LAYERS[depth]
    block = BasicBlock2p1d if kind == "basic" else Bottleneck2p1d
    return R2Plus1D(block, layers, scaled(BLOCK_PLANES, widen_factor), n_classes, **options)


def preact_r3d(depth: int, n_classes: int, widen_factor: float = 1.0, **options: Any) -> nn.Module:
    kind, layers = LAYERS[depth]
    block = PreActBasicBlock if kind == "basic" else PreActBottleneck
    return ResNet(block, layers, scaled(BLOCK_PLANES, widen_factor), n_classes, **options)


def wrn(depth: int, n_classes: int, k: int = 2, widen_factor: float = 1.0, **options: Any) -> nn.Module:
    return ResNet(
        WideBottleneck, LAYERS[depth][1], scaled(BLOCK_PLANES, k * widen_factor), n_classes, **options
    )


def resnext(
    depth: int, n_classes: int, cardinality: int = 32, widen_factor: float = 1.0, **options: Any
) -> nn.Module:
    return ResNet(
        ResNeXtBottleneck,
        LAYERS[depth][1],
        scaled(RESNEXT_PLANES, widen_factor),
        n_classes,
        block_options={"cardinality": cardinality},
        **options,
    )


def densenet(depth: int, n_classes: int, **options: Any) -> nn.Module:
    return DenseNet(DENSENET_BLOCKS[depth], n_classes, **options)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "r3d": r3d,
    "r2plus1d": r2plus1d,
    "preact-r3d": preact_r3d,
    "wrn": wrn,
    "resnext": resnext,
    "densenet": densenet,
}

MODELS: dict[str, Callable[..., nn.Module]] = {
    f"{family}-{depth}": partial(_BUILDERS[family], depth)
    for family, spec in FAMILIES.items()
    for depth in spec.depths
}


def build_model(name: str, n_classes: int, **options: Any) -> nn.Module:
    """A freshly initialised model; `name` may be a mega3d name or a reference alias."""
    canonical = canonical_name(name)
    if canonical not in MODELS:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    _, family = family_of(canonical)
    unknown = sorted(set(options) - set(family.options))
    if unknown:
        raise ValueError(
            f"{canonical} takes no option {', '.join(unknown)} (it takes: {', '.join(family.options)})"
        )
    return MODELS[canonical](n_classes=n_classes, **options)
