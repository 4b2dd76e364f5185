"""The product's main path on object storage: datasets, run directory and checkpoints all in a GCS bucket
(the GCS emulator, through the real gcsfs client)."""

from __future__ import annotations

import yaml

from tests.conftest import mega3d
from trainer import storage
from trainer.data.format import index_uri, load_index, read_frames

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
    assert index.shards == [f"{dataset}/shard-00000.bin"]
    assert read_frames(index, index.videos[0], 2, 4).shape == (4, 24, 24, 3)

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
    merged = storage.read_json(f"{run}/data/pretrain/index.json")
    assert merged["shards"] == [f"{dataset}/shard-00000.bin"]  # the merge points at the bucket's shards
