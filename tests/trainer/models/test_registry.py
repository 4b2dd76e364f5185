from __future__ import annotations

from typing import Any

import pytest
import torch

from mega3d.trainer.model_catalog import FAMILIES, canonical_name, model_names
from mega3d.trainer.models import MODELS, build_model

# The reference implementation's parameter counts at 700 classes with default options.
PARAMETERS = {
    "r3d": {
        10: 14_758_524,
        18: 33_563_004,
        34: 63_872_636,
        50: 47_633_276,
        101: 86_679_420,
        152: 118_838_140,
        200: 128_037_756,
    },
    "r2plus1d": {
        10: 14_761_944,
        18: 33_575_064,
        34: 63_901_400,
        50: 47_650_082,
        101: 86_715_810,
        152: 118_891_810,
        200: 128_100_642,
    },
    # The reference's other families (where they construct), as counted by an independent re-implementation.
    "preact-r3d": {
        10: 14_757_628,
        18: 33_562_108,
        34: 63_871_740,
        50: 47_629_308,
        101: 86_675_452,
        152: 118_834_172,
        200: 128_033_788,
    },
    "wrn": {50: 158_953_532, 101: 297_173_052, 152: 411_004_988, 200: 443_543_612},
    "resnext": {50: 27_390_524, 101: 49_046_076, 152: 66_884_156, 200: 71_995_964},
    "densenet": {121: 12_004_028, 169: 19_752_124, 201: 26_719_420, 264: 42_172_092},
}

# Small widths keep every family's forward/backward quick; DenseNet needs 16 frames for its transitions.
TINY: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "r3d": ({"widen_factor": 0.0625}, (2, 3, 4, 32, 32)),
    "r2plus1d": ({"widen_factor": 0.0625}, (2, 3, 4, 32, 32)),
    "preact-r3d": ({"widen_factor": 0.0625}, (2, 3, 4, 32, 32)),
    "wrn": ({"widen_factor": 0.0625, "k": 1}, (2, 3, 4, 32, 32)),
    "resnext": ({"widen_factor": 0.25, "cardinality": 4}, (2, 3, 4, 32, 32)),
    "densenet": ({}, (2, 3, 16, 32, 32)),
}


def test_registry_and_catalog_name_the_same_models() -> None:
    assert sorted(MODELS) == sorted(model_names())
    assert len(MODELS) == sum(len(family.depths) for family in FAMILIES.values()) == 33


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"{family}-{depth}", count)
        for family, counts in PARAMETERS.items()
        for depth, count in counts.items()
    ],
)
def test_parameter_counts_match_the_reference(name: str, expected: int) -> None:
    with torch.device("meta"):
        model = build_model(name, 700)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward_on_a_tiny_clip(name: str) -> None:
    torch.manual_seed(0)
    options, shape = TINY[name.rsplit("-", 1)[0]]
    model = build_model(name, 5, **options)
    logits = model(torch.randn(*shape))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("resnet-50", "r3d-50"),
        ("resnet2p1d-18", "r2plus1d-18"),
        ("preresnet-34", "preact-r3d-34"),
        ("wideresnet-50", "wrn-50"),
        ("resnext-101", "resnext-101"),
        ("densenet-121", "densenet-121"),
    ],
)
def test_reference_arch_strings_are_aliases(alias: str, name: str) -> None:
    assert canonical_name(alias) == name
    with torch.device("meta"):
        assert type(build_model(alias, 10)) is type(build_model(name, 10))


def test_state_dict_uses_the_reference_key_names() -> None:
    with torch.device("meta"):
        r3d = build_model("r3d-50", 10).state_dict()
        r2p1d = build_model("r2plus1d-18", 10).state_dict()
        dense = build_model("densenet-121", 10).state_dict()
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
    ):
        assert key in r3d
    for key in (
        "conv1_s.weight",
        "bn1_s.weight",
        "conv1_t.weight",
        "bn1_t.running_var",
        "layer1.0.conv1_s.weight",
        "layer1.0.conv2_t.weight",
        "layer2.0.downsample.1.weight",
    ):
        assert key in r2p1d
    for key in (
        "features.conv1.weight",
        "features.denseblock1.denselayer1.conv1.weight",
        "features.transition3.conv.weight",
        "features.norm5.bias",
        "classifier.weight",
    ):
        assert key in dense
    assert r3d["conv1.weight"].shape == (64, 3, 7, 7, 7)


def test_reference_options_change_the_architecture() -> None:
    with torch.device("meta"):
        a = build_model("r3d-18", 10, shortcut_type="A", conv1_t_size=3, conv1_t_stride=2, n_input_channels=2)
        wide = build_model("wrn-50", 10, k=3)
        grouped = build_model("resnext-50", 10, cardinality=16)
    assert not any(".downsample." in key for key in a.state_dict())
    assert a.state_dict()["conv1.weight"].shape == (64, 2, 3, 7, 7)
    assert wide.state_dict()["fc.weight"].shape == (10, 512 * 3 * 2)
    assert grouped.state_dict()["layer1.0.conv2.weight"].shape == (64, 64 // 16, 3, 3, 3)
    x = torch.randn(2, 2, 8, 32, 32)
    assert build_model("r3d-10", 4, shortcut_type="A", n_input_channels=2, no_max_pool=True)(x).shape == (
        2,
        4,
    )


def test_unknown_models_and_options_are_clear_errors() -> None:
    with pytest.raises(KeyError, match="unknown model 'r3d-11'"):
        build_model("r3d-11", 4)
    with pytest.raises(ValueError, match="densenet-121 takes no option widen_factor"):
        build_model("densenet-121", 4, widen_factor=2.0)
