"""A `mega3d run` whose training fails ends with one line naming the stage and the cause; the whole story
(tracebacks, torchrun's report, KFP's bookkeeping) stays in the run's log."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cli.test_object_storage import TINY_STAGE
from tests.conftest import mega3d

pytestmark = pytest.mark.slow


def spec_with(tmp_path: Path, dataset: dict[str, object], init_from: str) -> Path:
    spec = {
        "name": "failing",
        "storage": str(tmp_path / "store"),
        "datasets": {"motion": dataset},
        "model": {"name": "r3d-10", "widen_factor": 0.125},
        "finetune": [{"name": "tuned", "dataset": "motion", "init_from": init_from, **TINY_STAGE}],
    }
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def not_a_checkpoint(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "weights.pt").write_text("not a checkpoint")
    synthetic = {"classes": 3, "videos_per_class": 4, "frames": 8, "size": 24, "seed": 1}
    spec = spec_with(tmp_path, {"uri": "datasets/motion", "synthetic": synthetic}, "weights.pt")
    return spec, f"{tmp_path / 'store' / 'weights.pt'}: refused: not a checkpoint"


def test_a_failed_training_ends_with_its_stage_and_cause(tmp_path: Path) -> None:
    spec, cause = not_a_checkpoint(tmp_path)
    result = mega3d("run", str(spec), "--run-id", "r1", cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "store" / "experiments" / "failing" / "runs" / "r1"
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: run r1 failed: training of stage tuned: {cause}")
    assert line.endswith(f"(whole log: {run / 'run.log'})")
    shown = result.stdout + result.stderr
    assert "Traceback" not in shown and "\x1b[" not in shown and len(result.stdout.splitlines()) < 20
    assert "Traceback" in (run / "run.log").read_text()


@pytest.mark.parametrize("damage", ["missing", "short"])
def test_a_dataset_with_a_missing_or_short_shard_is_refused_before_anything_runs(
    tmp_path: Path, damage: str
) -> None:
    sizes = ["--classes", "3", "--videos-per-class", "4", "--frames", "8", "--size", "24"]
    made = mega3d("data", "synth", str(tmp_path / "motion"), *sizes)
    assert made.returncode == 0, made.stderr
    (shard,) = (tmp_path / "motion").glob("shard-*")
    if damage == "missing":
        shard.unlink()  # the index is there, its videos are not
    else:
        shard.write_bytes(shard.read_bytes()[:-1])
    spec = spec_with(tmp_path, {"uri": str(tmp_path / "motion")}, "scratch")
    result = mega3d("run", str(spec), "--run-id", "r1", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {spec}: datasets.motion.uri: {shard}: {damage} shard (")
    assert not (tmp_path / "store").exists()  # refused before the run directory was made


def test_a_storage_path_that_is_a_file_is_named_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("a file, not a directory")
    synthetic = {"classes": 3, "videos_per_class": 4, "frames": 8, "size": 24, "seed": 1}
    spec = spec_with(tmp_path, {"uri": "datasets/motion", "synthetic": synthetic}, "scratch")
    result = mega3d("run", str(spec), "--run-id", "r1", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    store = tmp_path / "store"
    assert line == f"error: {spec}: storage {store}: {store}/experiments/failing/runs/r1: Not a directory"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system: a dataset fits, a stage's checkpoint does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_is_named_in_the_last_line(tmp_path: Path, small_disk: Path) -> None:
    synthetic = {"classes": 3, "videos_per_class": 4, "frames": 8, "size": 24, "seed": 1}
    spec = spec_with(tmp_path, {"uri": "datasets/motion", "synthetic": synthetic}, "scratch")
    spec.write_text(spec.read_text().replace(str(tmp_path / "store"), str(small_disk / "store")))
    result = mega3d("run", str(spec), "--run-id", "r1", cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    line = result.stderr.splitlines()[-1]
    assert line.startswith("error: run r1 failed: training of stage tuned: No space left on device")
