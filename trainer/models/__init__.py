"""The model registry: one name per architecture, each mapped to its builder.

Names come from `trainer.spec.MODEL_DEPTHS`, the table specs are validated against.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from trainer.models.resnet3d import ResNet3d
from trainer.spec import MODEL_DEPTHS

_FAMILIES: dict[str, Callable[..., nn.Module]] = {"r3d": ResNet3d}

MODELS: dict[str, Callable[..., nn.Module]] = {
    f"{family}-{depth}": partial(_FAMILIES[family], depth)
    for family, depths in MODEL_DEPTHS.items()
    for depth in depths
}


def build_model(name: str, n_classes: int, **options: Any) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    return MODELS[name](n_classes=n_classes, **options)
