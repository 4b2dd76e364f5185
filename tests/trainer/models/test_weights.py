from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mega3d.trainer.models import WeightsError, build_model, load_weights

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
    with pytest.raises(WeightsError, match=r"unexpected \(.*downsample.*Hint: .*use shortcut_type B"):
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
    with pytest.raises(WeightsError, match=r"refused: not a checkpoint of plain tensors \(.*GLOBAL.*system"):
        load_weights(build_model("r3d-10", 2, **TINY), str(path))
    assert not marker.exists()


def test_old_reference_files_without_batchnorm_counters_load(tmp_path: Path) -> None:
    """Files saved before PyTorch 0.4.1 have no num_batches_tracked (and a `module.` prefix)."""
    source = build_model("r3d-18", 7, **TINY)
    old = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = build_model("r3d-18", 7, **TINY)
    load_weights(target, {"state_dict": old, "arch": "resnet-18"})
    assert torch.equal(target.layer2[0].downsample[1].running_var, source.layer2[0].downsample[1].running_var)


def test_prefixes_are_removed_key_by_key_and_paths_are_accepted(tmp_path: Path) -> None:
    source = build_model("r3d-10", 3, **TINY)
    mixed = {(f"module.{k}" if i % 2 else k): v for i, (k, v) in enumerate(source.state_dict().items())}
    path = tmp_path / "mixed.pth"
    torch.save(mixed, path)
    target = build_model("r3d-10", 3, **TINY)
    load_weights(target, path)  # a pathlib.Path
    assert torch.equal(target.fc.weight, source.fc.weight)
    with pytest.raises(WeightsError, match=r"both fc\.bias and module\.fc\.bias"):
        load_weights(target, {**mixed, "fc.bias": source.fc.bias, "module.fc.bias": source.fc.bias})


def test_non_strict_loading_copies_what_fits() -> None:
    source = build_model("r3d-18", 7, **TINY)
    target = build_model("r3d-34", 9, **TINY)
    only_in_target = target.layer1[2].conv2.weight.clone()
    fresh_head = target.fc.weight.clone()
    load_weights(target, source.state_dict(), strict=False)
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert torch.equal(target.layer1[1].conv2.weight, source.layer1[1].conv2.weight)
    assert torch.equal(target.layer1[2].conv2.weight, only_in_target)  # not in an r3d-18: left alone
    assert torch.equal(target.fc.weight, fresh_head)  # 7 classes do not fit 9: left alone


def test_densenet_heads_are_found_by_their_own_name() -> None:
    source = build_model("densenet-121", 400)
    target = build_model("densenet-121", 10)
    fresh = target.classifier.weight.clone()
    load_weights(target, source.state_dict(), new_head=True)
    assert torch.equal(target.classifier.weight, fresh)
    assert torch.equal(target.features.conv1.weight, source.features.conv1.weight)


@pytest.mark.parametrize("content", [b"", b"hello world garbage", b"PK\x03\x04 not a zip"])
def test_files_that_are_not_checkpoints_are_clear_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"broken.pth: refused: not a checkpoint of plain tensors \(.+\)"):
        load_weights(build_model("r3d-10", 2, **TINY), str(path))
