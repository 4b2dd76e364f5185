from __future__ import annotations

import pytest
import torch

from trainer.models import MODELS, build_model
from trainer.spec import model_names

# The reference implementation's parameter counts at 700 classes with default options.
R3D_PARAMETERS = {
    10: 14_758_524,
    18: 33_563_004,
    34: 63_872_636,
    50: 47_633_276,
    101: 86_679_420,
    152: 118_838_140,
    200: 128_037_756,
}


def test_registry_and_spec_name_the_same_models() -> None:
    assert sorted(MODELS) == sorted(model_names())


@pytest.mark.parametrize("depth", sorted(R3D_PARAMETERS))
def test_parameter_counts_match_the_reference(depth: int) -> None:
    with torch.device("meta"):
        model = build_model(f"r3d-{depth}", 700)
    assert sum(p.numel() for p in model.parameters()) == R3D_PARAMETERS[depth]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward_on_a_tiny_clip(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 5, widen_factor=0.0625)
    logits = model(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_state_dict_uses_the_reference_key_names() -> None:
    keys = set(build_model("r3d-50", 10).state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
    ):
        assert key in keys
    assert build_model("r3d-18", 10).state_dict()["conv1.weight"].shape == (64, 3, 7, 7, 7)


def test_shortcut_a_has_no_parameters_in_the_shortcut() -> None:
    a = build_model("r3d-18", 10, shortcut_type="A")
    assert not any(".downsample." in key for key in a.state_dict())
    assert a(torch.randn(2, 3, 4, 32, 32)).shape == (2, 10)


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="unknown model 'r3d-11'"):
        build_model("r3d-11", 4)
