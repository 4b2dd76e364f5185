from __future__ import annotations

import pytest
import torch

from mega3d.trainer.models import build_model
from mega3d.trainer.train import freeze_before, set_train_mode


@pytest.mark.parametrize(
    ("name", "options", "first_trained", "clip"),
    [
        ("r3d-18", {"widen_factor": 0.0625}, "layer4", (4, 3, 4, 32, 32)),
        ("r2plus1d-10", {"widen_factor": 0.0625}, "layer3", (4, 3, 4, 32, 32)),
        ("r3d-10", {"widen_factor": 0.0625}, "fc", (4, 3, 4, 32, 32)),
        ("densenet-121", {}, "features.denseblock4", (2, 3, 16, 32, 32)),
        ("densenet-121", {}, "features.transition2", (2, 3, 16, 32, 32)),
    ],
)
def test_frozen_weights_and_batchnorm_statistics_stay_bit_identical(
    name: str, options: dict, first_trained: str, clip: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = build_model(name, 3, **options)
    frozen = freeze_before(model, first_trained)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    set_train_mode(model, frozen)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(
            model(torch.randn(*clip)), torch.tensor([0, 1, 2, 0][: clip[0]])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    names = list(dict(model.named_modules()))
    earlier = [n for n in names[1 : names.index(first_trained)] if not first_trained.startswith(f"{n}.")]
    frozen_keys = [k for k in before if any(k.startswith(f"{n}.") for n in earlier)]
    trained_keys = [k for k in before if k.startswith(f"{first_trained}.") and k.endswith("weight")]
    assert any("running_mean" in k for k in frozen_keys) and trained_keys
    assert all(torch.equal(before[k], after[k]) for k in frozen_keys)
    assert any(not torch.equal(before[k], after[k]) for k in trained_keys)
    # Everything else trains, in train mode: nothing after the first trained module is frozen.
    frozen_modules = {id(inner) for module in frozen for inner in module.modules()}
    unfrozen = [m for n, m in model.named_modules() if n and id(m) not in frozen_modules]
    assert all(m.training for m in unfrozen)
    assert all(p.requires_grad for m in unfrozen for p in m.parameters(recurse=False))
    assert all(not m.training for m in frozen)
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    assert all(order[id(m)] < names.index(first_trained) for m in frozen)


def test_an_unknown_module_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no module 'layer9'"):
        freeze_before(build_model("r3d-10", 2, widen_factor=0.0625), "layer9")
