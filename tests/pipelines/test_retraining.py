"""Scheduled retraining end to end: a schedule on a spec that names a catalog dataset trains when a new
version is published and skips otherwise.

`mega3d schedule` sends the spec to a Kubeflow Pipelines API (tests/kfp_api.py) as a recurring run. Each
night's run is then what the backend makes of it: kfp.local executes the recurring run's IR with its
parameters (`skip_if_trained` on) and a run id of its own. Storage, datasets and the catalog live in the
GCS emulator. Training runs on TorchX local_cwd here (the `scheduler` parameter): the cluster's launcher
path has its own test (test_cluster_path.py); this one is about what a scheduled run decides to train.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mega3d.trainer import storage
from mega3d.trainer.data.synth import synthesize
from mega3d.trainer.spec import SyntheticSpec
from tests.cli.test_object_storage import TINY_STAGE
from tests.conftest import MEGA3D
from tests.kfp_api import kfp_api, run_as_the_backend

pytestmark = pytest.mark.slow


def test_a_schedule_trains_each_new_catalog_version_once(tmp_path: Path, gcs_bucket: str) -> None:
    root = f"{gcs_bucket}/retraining"
    env = {name: value for name, value in os.environ.items() if not name.startswith("MEGA3D_")}
    env.update(HOME=str(tmp_path), KF_PIPELINES_SA_TOKEN_PATH=str(tmp_path / "none"))

    def mega3d(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([MEGA3D, *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    tiny = {"classes": 2, "videos_per_class": 4, "frames": 8, "size": 24}
    for name, seed in (("kinetics", 1), ("moments", 2)):
        synthesize(f"{root}/datasets/{name}", SyntheticSpec(**tiny, seed=seed))
    mega3d("data", "publish", "pretraining", f"{root}/datasets/kinetics", "--storage", root)
    spec = {
        "name": "nightly",
        "storage": root,
        "datasets": {
            "merged": {"catalog": "pretraining"},
            "target": {"uri": "datasets/target", "synthetic": {**tiny, "rotation": 45, "seed": 3}},
        },
        "model": {"name": "r3d-10", "widen_factor": 0.125},
        "pretrain": {"datasets": ["merged"], **TINY_STAGE},
        "finetune": [{"name": "target", "dataset": "target", **TINY_STAGE}],
    }
    (tmp_path / "nightly.yaml").write_text(yaml.safe_dump(spec))
    with kfp_api() as kfp:
        (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({"host": kfp.url, "metrics_port": None}))
        mega3d(
            "schedule", str(tmp_path / "nightly.yaml"), "--cron", "0 0 3 * * *",
            "--settings", str(tmp_path / "cluster.yaml"),
        )  # fmt: skip
        (scheduled,) = kfp.recurring_runs.values()
    parameters = scheduled["runtime_config"]["parameters"]
    assert parameters == {"skip_if_trained": True}

    def night(run_id: str, succeeds: bool = True) -> str:
        arguments = {**parameters, "run_id": run_id, "scheduler": "local_cwd"}
        ran = run_as_the_backend(scheduled, arguments, tmp_path, env)
        assert (ran.returncode == 0) == succeeds, ran.stdout[-6000:] + ran.stderr[-6000:]
        return ran.stdout + ran.stderr

    runs = f"{root}/experiments/nightly/runs"
    registry = f"{root}/registry/nightly/main"

    first = night("night-1")
    assert "datasets.merged: catalog pretraining@1" in first
    assert storage.read_json(f"{runs}/night-1/spec.json")["datasets"]["merged"]["catalog"] == "pretraining@1"
    assert storage.read_json(f"{registry}/champion.json")["run_id"] == "night-1"

    second = night("night-2")  # nothing new: nothing trains
    assert "nothing to train" in second and "(run night-1, run key" in second
    assert not storage.exists(f"{runs}/night-2/pretrain")

    mega3d(
        "data", "merge", f"{root}/datasets/kinetics", f"{root}/datasets/moments",
        "-o", f"{root}/datasets/kinetics-moments", "--publish", "pretraining", "--storage", root,
    )  # fmt: skip
    # A new merge landed: night 3 trains on the new version, but its fine-tuning fails (a shard of the
    # target is gone for a while) after pretraining finished.
    (shard,) = [uri for uri in storage.list_dir(f"{root}/datasets/target") if "/shard-" in uri]
    kept = storage.read_bytes(shard)
    storage.remove(shard)
    failed = night("night-3", succeeds=False)
    assert "datasets.merged: catalog pretraining@2" in failed
    assert len(storage.read_json(f"{runs}/night-3/pretrain/metrics.json")["classes"]) == 4
    pretrained = storage.read_bytes(f"{runs}/night-3/pretrain/checkpoint.pt")
    storage.write_bytes(shard, kept)
    retried = night("night-3")  # retried with the same run id, as the backend retries a run
    assert "[pretrain] finished before this run was resumed: its results are kept" in retried
    assert "catalog pretraining@2" in retried  # the versions it started with, though none is pinned
    assert storage.read_bytes(f"{runs}/night-3/pretrain/checkpoint.pt") == pretrained
    history = storage.read_json(f"{registry}/history.json")
    assert [decision["run_id"] for decision in history] == ["night-1", "night-3"]
    # The challenger is compared with the champion on the same evaluation data.
    assert "not comparable" not in history[1]["reason"] and "champion" in history[1]["reason"]
    records = [storage.read_json(uri) for uri in storage.list_dir(f"{registry}/models")]
    assert sorted(record["run_id"] for record in records) == ["night-1", "night-3"]
    assert len({record["targets"]["target"]["evaluation_set"] for record in records}) == 1
