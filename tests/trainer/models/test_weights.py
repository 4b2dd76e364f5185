from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from trainer.models import WeightsError, build_model, load_weights

TINY = {"widen_factor": 0.0625}


def outputs(model: torch.nn.Module, clip: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(clip)


def reference_file(tmp_path: Path, model: torch.nn.Module, prefix: str, arch: str = "resnet-18") -> Path:
    """A checkpoint as 3D-ResNets-PyTorch writes it (DataParallel adds the `module.` prefix)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / f"ref{prefix or '-bare'}.pth"
    torch.save(
        {
            "epoch": 200,
            "arch": arch,
            "state_dict": {f"{prefix}{key}": value for key, value in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer).state_dict(),
        },
        path,
    )
    return path


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_reference_checkpoints_load_with_identical_outputs(tmp_path: Path, prefix: str) -> None:
    torch.manual_seed(0)
    trained = build_model("r3d-18", 7, **TINY)
    trained.train()
    trained(torch.randn(4, 3, 4, 32, 32))  # move BN statistics away from their initial values
    path = reference_file(tmp_path, trained, prefix)
    clip = torch.randn(2, 3, 4, 32, 32)

    fresh = build_model("resnet-18", 7, **TINY)
    assert not torch.equal(outputs(fresh, clip), outputs(trained, clip))
    load_weights(fresh, str(path))
    assert torch.equal(outputs(fresh, clip), outputs(trained, clip))

    bare = build_model("r3d-18", 7, **TINY)
    load_weights(bare, trained.state_dict())
    assert torch.equal(outputs(bare, clip), outputs(trained, clip))


def test_a_different_architecture_fails_listing_the_keys(tmp_path: Path) -> None:
    path = reference_file(tmp_path, build_model("r3d-18", 7, **TINY), "module.")
    with pytest.raises(WeightsError) as caught:
        load_weights(build_model("r3d-34", 7, **TINY), str(path))
    message = str(caught.value)
    assert "missing (" in message and "layer1.2.conv1.weight" in message
    assert "does not fit ResNet" in message


def test_shortcut_mismatch_comes_with_a_hint(tmp_path: Path) -> None:
    path = reference_file(tmp_path, build_model("r3d-18", 7, **TINY), "module.")
    with pytest.raises(WeightsError, match=r"unexpected \(.*downsample.*Hint: .*shortcut_type='B'"):
        load_weights(build_model("r3d-18", 7, shortcut_type="A", **TINY), str(path))


def test_a_head_of_another_size_is_replaced_only_when_asked(tmp_path: Path) -> None:
    source = build_model("r3d-18", 1039, **TINY)
    path = reference_file(tmp_path, source, "")
    target = build_model("r3d-18", 101, **TINY)
    with pytest.raises(
        WeightsError, match=r"mis-shaped \(2\): fc.weight \(1039, 32\) vs \(101, 32\).*new_head=True"
    ):
        load_weights(target, str(path))
    fresh_head = target.fc.weight.clone()
    load_weights(target, str(path), new_head=True)
    assert torch.equal(target.fc.weight, fresh_head)
    assert torch.equal(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


class Payload:
    """Unpickling this would run a command: a checkpoint must never be able to do that."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": build_model("r3d-10", 2, **TINY).state_dict(), "hook": Payload(marker)}, path)
    with pytest.raises(WeightsError, match="refused: not a checkpoint of plain tensors"):
        load_weights(build_model("r3d-10", 2, **TINY), str(path))
    assert not marker.exists()
