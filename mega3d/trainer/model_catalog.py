"""Which architectures exist, as plain data (stdlib only: the spec validates against it without torch).

A model name is `<family>-<depth>`, e.g. `r3d-50`. The reference implementation's arch strings
(`resnet-50`, `resnet2p1d-18`, `preresnet-34`, `wideresnet-50`, `resnext-101`, `densenet-121`) are aliases.
The model registry in `mega3d.trainer.models` is built from this table.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

# Parameters and GFLOPs of every model, computed by `python -m mega3d.trainer.models stats` (checked by the
# tests).
STATS_FILE = Path(__file__).with_name("model_stats.json")
STATS_CLASSES = 700
STATS_CLIP = (3, 16, 112, 112)

RESNET_DEPTHS = (10, 18, 34, 50, 101, 152, 200)
BOTTLENECK_DEPTHS = (50, 101, 152, 200)
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4", "fc")
RESNET_OPTIONS = (
    "n_input_channels",
    "conv1_t_size",
    "conv1_t_stride",
    "no_max_pool",
    "shortcut_type",
    "widen_factor",
)

DENSENET_STAGES = (
    *(
        f"features.{kind}{i}"
        for i in range(1, 5)
        for kind in ("denseblock", "transition")
        if (kind, i) != ("transition", 4)
    ),
    "features.norm5",
    "classifier",
)


@dataclass(frozen=True)
class Family:
    depths: tuple[int, ...]
    reference_name: str
    # Modules in forward order where fine-tuning may begin: everything before the chosen one is frozen.
    stages: tuple[str, ...]
    options: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "r3d": Family(RESNET_DEPTHS, "resnet", RESNET_STAGES, RESNET_OPTIONS),
    "r2plus1d": Family(RESNET_DEPTHS, "resnet2p1d", RESNET_STAGES, RESNET_OPTIONS),
    "preact-r3d": Family(RESNET_DEPTHS, "preresnet", RESNET_STAGES, RESNET_OPTIONS),
    "wrn": Family(BOTTLENECK_DEPTHS, "wideresnet", RESNET_STAGES, (*RESNET_OPTIONS, "k")),
    "resnext": Family(BOTTLENECK_DEPTHS, "resnext", RESNET_STAGES, (*RESNET_OPTIONS, "cardinality")),
    "densenet": Family(
        (121, 169, 201, 264),
        "densenet",
        DENSENET_STAGES,
        ("n_input_channels", "conv1_t_size", "conv1_t_stride", "no_max_pool"),
    ),
}


def model_names() -> list[str]:
    return [f"{family}-{depth}" for family, spec in FAMILIES.items() for depth in spec.depths]


def unknown_model(name: str) -> str:
    """Why `name` names no architecture, with the closest names (a typo of a depth or family)."""
    close = difflib.get_close_matches(name, model_names(), n=2, cutoff=0.8)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"unknown architecture {name!r} ({hint}known: {', '.join(model_names())})"


def canonical_name(name: str) -> str:
    """The mega3d name for a model name or a reference alias; unknown names come back unchanged."""
    family, _, depth = name.rpartition("-")
    for canonical, spec in FAMILIES.items():
        if family == spec.reference_name:
            return f"{canonical}-{depth}"
    return name


def family_of(name: str) -> tuple[str, Family]:
    """(family name, family) of a canonical model name."""
    family, _, _ = name.rpartition("-")
    return family, FAMILIES[family]


def model_stats() -> dict[str, dict[str, float]]:
    """{name: {"parameters", "gflops"}} at 700 classes for one 3 x 16 x 112 x 112 clip."""
    stats: dict[str, dict[str, float]] = json.loads(STATS_FILE.read_text())
    return stats
