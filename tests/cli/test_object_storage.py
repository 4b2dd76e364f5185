"""The product's main path on object storage: datasets, run directory and checkpoints all in a GCS bucket
(the GCS emulator, through the real gcsfs client)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from mega3d.trainer import storage
from mega3d.trainer.data.format import ClipReader, DatasetIndex, index_uri, load_index, merge, save_index
from mega3d.trainer.data.synth import synthesize
from mega3d.trainer.spec import SyntheticSpec
from tests.cli.test_ingest import ingest, write_reference_dataset
from tests.conftest import mega3d

TINY_STAGE = {
    "epochs": 1,
    "batch_size": 4,
    "num_workers": 0,
    "clip": {"frames": 4, "size": 16},
    "resources": {"nnodes": 1, "nproc_per_node": 1, "cpu": 1, "memory_gb": 1},
}


def test_synthesize_train_and_evaluate_in_a_bucket(gcs_bucket: str, tmp_path: object) -> None:
    dataset = f"{gcs_bucket}/datasets/motion"
    made = mega3d(
        "data", "synth", dataset, "--classes", "3", "--videos-per-class", "4", "--frames", "8", "--size", "24"
    )
    assert made.returncode == 0, made.stderr
    index = load_index(index_uri(dataset))
    assert len(index.shards) == 1 and index.shards[0].startswith(f"{dataset}/shard-")
    assert ClipReader(index).frames(0, 2, 4).shape == (4, 24, 24, 3)

    spec = {
        "name": "bucket",
        "storage": f"{gcs_bucket}/mega3d",
        "datasets": {"motion": {"uri": dataset}},
        "model": {"name": "r3d-10", "widen_factor": 0.125},
        "pretrain": {"datasets": ["motion"], **TINY_STAGE},
        "finetune": [{"name": "tuned", "dataset": "motion", **TINY_STAGE}],
    }
    path = tmp_path / "bucket.yaml"  # type: ignore[operator]
    path.write_text(yaml.safe_dump(spec))
    result = mega3d("run", str(path), "--run-id", "r1", cwd=tmp_path, timeout=600)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = f"{gcs_bucket}/mega3d/experiments/bucket/runs/r1"
    for stage in ("pretrain", "tuned"):
        assert storage.exists(f"{run}/{stage}/checkpoint.pt")
    evaluation = storage.read_json(f"{run}/tuned/evaluation/metrics.json")
    assert evaluation["n_videos"] == 3 and evaluation["checkpoint"] == f"{run}/tuned/checkpoint.pt"
    assert list(tmp_path.iterdir()) == [path]  # type: ignore[attr-defined]  # nothing local but the spec
    merged = load_index(f"{run}/data/pretrain/index.npz")
    assert merged.shards == index.shards  # the merge points at the bucket's shards


def read_every_clip(index: DatasetIndex) -> dict[str, np.ndarray]:
    """Every video's frames, read back the way training reads them, by id."""
    reader = ClipReader(index)
    return {index.video(row).id: reader.frames(row, 0, index.video(row).frames) for row in range(len(index))}


def test_the_data_commands_on_a_bucket(gcs_bucket: str, tmp_path: Path) -> None:
    """Ingest (two worker processes) into a bucket, merge, subset, stats; every clip reads back."""
    expected = write_reference_dataset(tmp_path)
    jpg = f"{gcs_bucket}/datasets/reference"
    made = ingest(tmp_path / "frames", "reference-jpg", tmp_path / "ann.json", jpg, "--workers", "2")
    assert made.returncode == 0, made.stderr
    assert "2 unreadable" in made.stdout
    synthetic = f"{gcs_bucket}/datasets/synthetic"
    assert (
        mega3d(
            "data", "synth", synthetic, "--classes", "2", "--videos-per-class", "4", "--size", "16"
        ).returncode
        == 0
    )
    merged_uri = f"{gcs_bucket}/datasets/merged"
    merged_run = mega3d("data", "merge", jpg, synthetic, "-o", merged_uri)
    assert merged_run.returncode == 0, merged_run.stderr
    assert storage.list_dir(merged_uri) == [f"{merged_uri}/index.npz"]  # no media copied
    half = f"{gcs_bucket}/datasets/half"
    assert (
        mega3d("data", "subset", merged_uri, "--categories", "0.5", "--seed", "2", "-o", half).returncode == 0
    )
    stats = mega3d("data", "stats", merged_uri)
    assert stats.returncode == 0 and "4 classes, 11 videos (8 training, 3 validation)" in stats.stdout

    merged, source, part = (load_index(index_uri(uri)) for uri in (merged_uri, synthetic, half))
    clips = read_every_clip(merged)
    for video_id, frames in expected.items():
        np.testing.assert_array_equal(clips[video_id], frames)  # bit for bit: small JPEGs kept as they were
    for video_id, frames in read_every_clip(source).items():
        np.testing.assert_array_equal(clips[video_id], frames)
    labels = {video.id: merged.classes[video.label] for video in merged.videos()}
    assert labels["v_run_1"] == "reference/run" and labels["v_jump_2"] == "reference/jump"
    assert all(labels[video.id] == part.classes[video.label] for video in part.videos())
    assert not storage.exists(f"{jpg}/ingest")  # the work files are gone once the index is written


def test_memory_filesystem(tmp_path: Path) -> None:
    """The same format through fsspec's memory:// (in this process: memory:// is per process)."""
    first, second = "memory://mega3d-test/first", "memory://mega3d-test/second"
    try:
        synthesize(first, SyntheticSpec(classes=2, videos_per_class=3, frames=5, size=16, seed=1))
        synthesize(second, SyntheticSpec(classes=2, videos_per_class=3, frames=5, size=16, seed=2))
        a, b = load_index(index_uri(first)), load_index(index_uri(second))
        merged = merge([("a", a), ("b", b)])
        save_index("memory://mega3d-test/merged/index.npz", merged)
        reloaded = load_index("memory://mega3d-test/merged/index.npz")
        clips = read_every_clip(reloaded)
        for index in (a, b):
            for video_id, frames in read_every_clip(index).items():
                np.testing.assert_array_equal(clips[video_id], frames)
        assert reloaded.single_labels().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    finally:
        storage.remove("memory://mega3d-test")


def test_a_bucket_that_does_not_exist_is_named_in_words(gcs_bucket: str, tmp_path: Path) -> None:
    made = mega3d("data", "synth", "gs://no-such-bucket/motion", "--classes", "2", "--frames", "4")
    assert made.returncode == 2 and "no bucket 'no-such-bucket' (or these credentials" in made.stderr
    assert "http" not in made.stderr  # not the request's URL
    spec = {
        "name": "nowhere",
        "storage": "gs://no-such-bucket/mega3d",
        "datasets": {"motion": {"uri": "datasets/motion", "synthetic": {"classes": 2, "frames": 4}}},
        "finetune": [{"name": "tuned", "dataset": "motion", "init_from": "scratch", **TINY_STAGE}],
    }
    path = tmp_path / "nowhere.yaml"
    path.write_text(yaml.safe_dump(spec))
    ran = mega3d("run", str(path), "--run-id", "r1", cwd=tmp_path)
    assert ran.returncode == 2 and ran.stdout == ""  # refused before anything ran
    assert ran.stderr.splitlines() == [
        f"error: {path}: storage gs://no-such-bucket/mega3d: no bucket 'no-such-bucket' (or these "
        "credentials cannot see it)"
    ]
    missing = f"{gcs_bucket}/nothing-here.bin"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(missing)}: no such object$"):
        storage.read_bytes(missing)
