"""The quickstart through the cluster path, as far as it goes on one machine.

`mega3d submit` sends the quickstart to a Kubeflow Pipelines API (tests/kfp_api.py). The pipeline it sent
then runs as the backend would run it: kfp.local executes the uploaded IR with the run's parameters (its
compiled defaults: the kubernetes scheduler, the settings as `cluster_json`), and each training step
launches its stage with the real TorchX kubernetes scheduler and kubernetes client against the fake API
server (tests/fake_kubernetes.py), whose kubelet runs the Volcano job's pods on this machine. Storage is
the settings' bucket, in the GCS emulator. What only a real cluster does is not here: the KFP backend's
driver and launcher, Volcano's scheduling, the downward API (the step's pod name and UID are given as the
driver would give them).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mega3d.pipelines.settings import STEP_POD_NAME, STEP_POD_UID
from mega3d.trainer import storage
from mega3d.trainer.data.format import index_uri, load_index
from mega3d.trainer.data.ingest import Options, ingest, read_video_list
from tests.conftest import MEGA3D, QUICKSTART
from tests.fake_kubernetes import FakeKubernetes, Kubelet
from tests.kfp_api import KfpApi, kfp_api, run_as_the_backend
from tests.trainer.data.test_replicas import video_list

STEP_POD = ("quickstart-xk2p9-system-container-impl-3141592653", "9b1e2c4d-uid-of-the-step-pod")


def tiny_quickstart(tmp_path: Path) -> Path:
    """The quickstart at a fraction of its size: every stage, pretraining on two pods."""
    data = yaml.safe_load(QUICKSTART.read_text())
    for dataset in data["datasets"].values():
        dataset["synthetic"].update(videos_per_class=6, frames=8, size=24)
    for stage in [data["pretrain"], *data["finetune"]]:
        stage.update(epochs=1, batch_size=4, clip={"frames": 4, "size": 16, "flip": False})
    data["finetune"][0]["resources"]["nnodes"] = 1
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def kfp() -> Iterator[KfpApi]:
    with kfp_api() as server:
        yield server


def test_the_quickstart_runs_from_submit_to_finished_jobs_on_the_cluster_path(
    tmp_path: Path, gcs_bucket: str, kfp: KfpApi
) -> None:
    settings = tmp_path / "cluster.yaml"
    # No metrics ports: on a cluster each pod serves on its own address; here every pod shares this one.
    cluster = {"host": kfp.url, "bucket": f"{gcs_bucket}/cluster", "image": "mega3d", "metrics_port": None}
    settings.write_text(yaml.safe_dump(cluster))
    env = {name: value for name, value in os.environ.items() if not name.startswith("MEGA3D_")}
    submitted = subprocess.run(
        [MEGA3D, "submit", str(tiny_quickstart(tmp_path)), "--settings", str(settings)],
        env={**env, "HOME": str(tmp_path), "KF_PIPELINES_SA_TOKEN_PATH": str(tmp_path / "none")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    (run_id,) = kfp.runs
    body = kfp.runs[run_id]
    assert body["service_account"] == "mega3d-launcher" and f"run id: {run_id}" in submitted.stdout
    arguments = {**body["runtime_config"].get("parameters", {}), "run_id": run_id}

    with FakeKubernetes([], kubelet=Kubelet(tmp_path)) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", "mega3d")
        step_env = {name: value for name, value in env.items() if name != "KUBERNETES_SERVICE_HOST"}
        step_env.update(
            {"KUBECONFIG": str(kubeconfig), STEP_POD_NAME: STEP_POD[0], STEP_POD_UID: STEP_POD[1]}
        )
        ran = run_as_the_backend(body, arguments, tmp_path, step_env)
        jobs = [job.resource for job in cluster.jobs.values()]
    assert ran.returncode == 0, ran.stdout[-8000:] + ran.stderr[-8000:]

    # One Volcano job per stage, each named, labelled and owned as the launcher makes it.
    launched = sorted(
        (job["metadata"]["labels"]["mega3d.io/stage"], job["metadata"]["labels"]["mega3d.io/task"])
        for job in jobs
    )
    assert launched == [("motion-c", "evaluate"), ("motion-c", "train"), ("pretrain", "train")]
    for job in jobs:
        labels = job["metadata"]["labels"]
        assert labels["mega3d.io/experiment"] == "quickstart" and labels["mega3d.io/run"] == run_id
        assert job["metadata"]["name"].startswith("quickstart-")
        assert run_id[:8] in job["metadata"]["name"]
        assert [owner["uid"] for owner in job["metadata"]["ownerReferences"]] == [STEP_POD[1]]
        assert job["spec"]["queue"] == "mega3d" and job["spec"]["ttlSecondsAfterFinished"] == 3600
    (pretraining,) = [job for job in jobs if job["metadata"]["labels"]["mega3d.io/stage"] == "pretrain"]
    assert len(pretraining["spec"]["tasks"]) == 2  # two pods, one DDP job

    # What the pods wrote is in the bucket, and what the steps made of it.
    run = f"{gcs_bucket}/cluster/experiments/quickstart/runs/{run_id}"
    pretrained = storage.read_json(f"{run}/pretrain/metrics.json")
    assert pretrained["world_size"] == 2 and len(pretrained["classes"]) == 8
    evaluation = storage.read_json(f"{run}/motion-c/evaluation/metrics.json")
    assert evaluation["n_videos"] > 0 and len(evaluation["confusion"]) == 4
    (table,) = (tmp_path / "kfp").rglob("confusion_csv")
    assert table.read_text().splitlines()[0].startswith("true\\predicted,")
    # The steps' logs: each job launched and its pods' logs followed, node by node.
    logs = ran.stdout + ran.stderr  # kfp.local relays each step's output on its own streams
    assert f"launched kubernetes://torchx/mega3d:quickstart-pretrain-{run_id[:8]}" in logs
    assert "node0 | [0]:[pretrain] world size 2" in logs  # rank 0 speaks for the job


def test_an_ingest_on_the_cluster_runs_its_replicas_as_one_volcano_job(
    tmp_path: Path, gcs_bucket: str
) -> None:
    """`mega3d data ingest --replicas 2 --on-cluster`: the replicas are the pods of one Volcano job (the real
    TorchX kubernetes scheduler against the fake API server, whose kubelet runs them here), reading the
    videos from the bucket; the dataset is the one a single-machine ingest of the same list writes."""
    local = tmp_path / "videos"
    listing = video_list(local)
    bucket_videos = f"{gcs_bucket}/ingest-source/videos"
    for video in local.iterdir():
        storage.write_bytes(f"{bucket_videos}/{video.name}", video.read_bytes())
    one_machine = ingest(
        str(tmp_path / "single"), read_video_list(local, listing), Options(short_side=16, shard_bytes=1)
    )
    settings = tmp_path / "cluster.yaml"
    settings.write_text(yaml.safe_dump({"image": "mega3d", "namespace": "mega3d"}))
    env = {name: value for name, value in os.environ.items() if not name.startswith("MEGA3D_")}
    dataset = f"{gcs_bucket}/ingest-on-cluster/phones"
    with FakeKubernetes([], kubelet=Kubelet(tmp_path)) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", "mega3d")
        env = {name: value for name, value in env.items() if name != "KUBERNETES_SERVICE_HOST"}
        command = [
            MEGA3D, "data", "ingest", bucket_videos, "--format", "csv", "--annotations", str(listing),
            "--short-side", "16", "--shard-mb", "0.01", "--replicas", "2", "--workers", "1",
            "--on-cluster", "--settings", str(settings), "-o", dataset,
        ]  # fmt: skip
        ingest_env = {**env, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
        made = subprocess.run(command, env=ingest_env, capture_output=True, text=True, timeout=300)
        jobs = [job.resource for job in cluster.jobs.values()]
    assert made.returncode == 0, made.stdout[-4000:] + made.stderr[-4000:]
    (job,) = jobs
    assert job["metadata"]["labels"]["mega3d.io/task"] == "ingest" and len(job["spec"]["tasks"]) == 2
    assert job["spec"]["queue"] == "mega3d" and job["spec"]["ttlSecondsAfterFinished"] == 3600
    index = load_index(index_uri(dataset))
    assert index.fingerprint == one_machine.fingerprint
    assert [error.id for error in index.errors] == [error.id for error in one_machine.errors]
    assert index.errors[0].error.startswith(f"{bucket_videos}/broken.mp4: ")  # read from the bucket
    assert [video.id for video in index.videos()] == [video.id for video in one_machine.videos()]
