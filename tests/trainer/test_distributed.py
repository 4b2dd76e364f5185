from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mega3d.trainer import distributed, environment
from mega3d.trainer.distributed import MissingGPUs, nvidia_driver, require_gpus
from tests.conftest import ROOT

# The first line of /proc/driver/nvidia/version on a GPU node.
DRIVER_LINE = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"


@pytest.fixture
def without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose GPUs torch cannot use (no device plugin, a driver older than torch's CUDA)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_the_driver_version_is_read_from_the_kernel_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = tmp_path / "version"
    version.write_text(DRIVER_LINE + "GCC version:  gcc version 12.2.0\n")
    monkeypatch.setattr(distributed, "NVIDIA_DRIVER", version)
    assert nvidia_driver() == "550.54.15"
    monkeypatch.setattr(distributed, "NVIDIA_DRIVER", tmp_path / "absent")
    assert nvidia_driver() == "not loaded"


@pytest.mark.usefixtures("without_cuda")
def test_a_gpu_node_without_usable_gpus_stops_and_says_what_it_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = tmp_path / "version"
    version.write_text(DRIVER_LINE)
    monkeypatch.setattr(distributed, "NVIDIA_DRIVER", version)
    monkeypatch.setenv(environment.GPUS_REQUIRED, "1")
    monkeypatch.setenv(environment.NODE_NAME, "gke-gpu-pool-7f3a")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(MissingGPUs) as raised:
        require_gpus()
    message = str(raised.value)
    assert "node gke-gpu-pool-7f3a" in message and "torch sees 0 CUDA device(s) for 8 process(es)" in message
    assert f"torch {torch.__version__}" in message and "NVIDIA driver 550.54.15" in message


@pytest.mark.usefixtures("without_cuda")
def test_without_gpus_given_a_stage_runs_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(environment.GPUS_REQUIRED, raising=False)
    require_gpus()  # raises nothing: local runs fall back to CPU


def test_the_trainer_exits_with_one_line_before_reading_anything(tmp_path: Path) -> None:
    """Torch sees no GPU (none are visible to it, as on a node whose device plugin gave it none): the stage
    stops before it reads the spec (which does not exist)."""
    node = {
        environment.GPUS_REQUIRED: "1",
        environment.NODE_NAME: "node-a",
        "LOCAL_WORLD_SIZE": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    env = {**os.environ, **node}
    absent = str(tmp_path / "absent")
    paths = ["--spec", absent, "--data-index", absent, "--out", absent]
    result = subprocess.run(
        [sys.executable, "-m", "mega3d.trainer", "train", "--stage", "pretrain", *paths],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: node node-a: this stage was given GPUs") and "Traceback" not in (
        result.stderr
    )
    assert not (tmp_path / "absent").exists()
