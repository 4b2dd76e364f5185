"""`mega3d data ingest` with more than one writer: workers die with their ingest, one writer per dataset."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mega3d.trainer import storage
from mega3d.trainer.data.format import index_uri, load_index
from tests.cli.test_ingest import ingest_args
from tests.conftest import MEGA3D, mega3d

FRAMES = 12


def write_many_videos(root: Path, count: int) -> None:
    """`count` reference-jpg videos of FRAMES large noisy frames (slow to decode and scale down), all linked
    to the same few files so that making them is quick."""
    rng = np.random.default_rng(5)
    pool = root / "pool"
    pool.mkdir(parents=True)
    for number in range(1, FRAMES + 1):
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(pool / f"{number}.jpg")
    database = {}
    for i in range(count):
        folder = root / "frames" / "walk" / f"v{i:03d}"
        folder.mkdir(parents=True)
        for number in range(1, FRAMES + 1):
            (folder / f"image_{number:05d}.jpg").symlink_to(pool / f"{number}.jpg")
        database[f"v{i:03d}"] = {"subset": "training", "annotations": {"label": "walk"}}
    (root / "ann.json").write_text(json.dumps({"labels": ["walk"], "database": database}))


def command(root: Path, output: Path, workers: int) -> list[str]:
    return ingest_args(
        root / "frames", "reference-jpg", root / "ann.json", output,
        "--short-side", "64", "--shard-mb", "0.01", "--workers", str(workers),
    )  # fmt: skip


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def assert_complete(output: Path, count: int) -> None:
    index = load_index(index_uri(str(output)))
    ids = [video.id for video in index.videos()]
    assert ids == [f"v{i:03d}" for i in range(count)]  # every video once, in the source's order
    assert {p.name for p in output.iterdir()} == {"index.npz", *(Path(s).name for s in index.shards)}


@pytest.mark.slow
def test_workers_die_with_a_killed_ingest_and_the_resumed_run_writes_each_video_once(tmp_path: Path) -> None:
    count = 300
    write_many_videos(tmp_path, count)
    output = tmp_path / "out"
    words = command(tmp_path, output, workers=2)
    parent = subprocess.Popen([MEGA3D, *words], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: len(list((output / "ingest").glob("*.npz"))) >= 4, 60)
    workers = children_of(parent.pid)
    assert len(workers) >= 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_for(lambda: not any(running(pid) for pid in workers), 2.0), "orphaned workers still run"
    assert not (output / "index.npz").exists()

    resumed = mega3d(*words, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "took over the lock of a command that ended without releasing it (its process is gone)" in (
        resumed.stderr
    )
    assert_complete(output, count)


@pytest.mark.slow
def test_a_terminated_ingest_stops_its_workers_and_releases_its_lock(tmp_path: Path) -> None:
    count = 150
    write_many_videos(tmp_path, count)
    output = tmp_path / "out"
    words = command(tmp_path, output, workers=2)
    parent = subprocess.Popen([MEGA3D, *words], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(list((output / "ingest").glob("*.npz"))) >= 4, 60)
    workers = children_of(parent.pid)
    parent.send_signal(signal.SIGTERM)
    _, stderr = parent.communicate(timeout=20)
    assert parent.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    assert wait_for(lambda: not any(running(pid) for pid in workers), 2.0), "workers still run"
    assert not (output / "ingest.lock").exists() and not (output / "index.npz").exists()

    resumed = mega3d(*words, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "took over" not in resumed.stderr
    assert_complete(output, count)


@pytest.mark.slow
def test_a_second_ingest_of_the_same_dataset_is_refused_and_the_first_completes(tmp_path: Path) -> None:
    count = 300
    write_many_videos(tmp_path, count)
    output = tmp_path / "out"
    words = command(tmp_path, output, workers=1)
    first = subprocess.Popen([MEGA3D, *words], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: (output / "ingest" / "plan.json").exists(), 30)
    second = mega3d(*words)
    assert first.poll() is None, "the first ingest ended before the second was refused: make it slower"
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()
    holder = f"pid {first.pid} on {socket.gethostname()}"
    assert line.startswith(f"error: {output}: another command is writing there ({holder}, since ")
    assert line.endswith(f"UTC: mega3d {' '.join(words)})")
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert f"wrote {count} videos of 1 classes" in stdout
    assert_complete(output, count)


def lock_file(host: str, pid: int, heartbeat_age: float) -> bytes:
    now = time.time()
    holder = {
        "host": host,
        "pid": pid,
        "started": now - heartbeat_age - 60,
        "command": "mega3d data ingest elsewhere",
        "token": "0" * 32,
        "heartbeat": now - heartbeat_age,
    }
    return json.dumps(holder).encode()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# (holder host, holder pid, heartbeat age in s, taken over, what the refusal or notice says)
HOLDERS = [
    ("this", "alive", 5.0, False, "another command is writing there (pid {pid} on {host}, since "),
    ("this", "dead", 5.0, True, "(its process is gone): pid {pid} on {host}"),
    ("other", "alive", 5.0, False, "another command is writing there (pid {pid} on {host}, since "),
    ("other", "alive", storage.STALE_AFTER_S + 60, True, "(no heartbeat for "),
]


@pytest.mark.parametrize("where", ["local", "gcs"])
@pytest.mark.parametrize(("host", "pid", "age", "taken", "said"), HOLDERS)
def test_the_writer_lock_refuses_a_live_holder_and_takes_over_a_dead_one(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    where: str,
    host: str,
    pid: str,
    age: float,
    taken: bool,
    said: str,
) -> None:
    root = str(tmp_path) if where == "local" else f"{request.getfixturevalue('gcs_bucket')}/{tmp_path.name}"
    uri = storage.join(root, "ds", "ingest.lock")
    holder_host = socket.gethostname() if host == "this" else "elsewhere.example"
    holder_pid = os.getpid() if pid == "alive" else dead_pid()
    storage.write_bytes(uri, lock_file(holder_host, holder_pid, age))
    expected = said.format(pid=holder_pid, host=holder_host)
    notices: list[str] = []
    if not taken:
        with pytest.raises(storage.Locked) as refused, storage.exclusive(uri, notices.append):
            pass
        assert expected in str(refused.value) and "mega3d data ingest elsewhere" in str(refused.value)
        assert json.loads(storage.read_bytes(uri))["pid"] == holder_pid  # the holder's lock is untouched
        return
    with storage.exclusive(uri, notices.append) as lock:
        (notice,) = notices
        assert notice.startswith("took over the lock of a command that ended without releasing it")
        assert expected in notice
        held = json.loads(storage.read_bytes(uri))
        assert (held["pid"], held["host"], held["token"]) == (
            os.getpid(),
            socket.gethostname(),
            lock.holder.token,
        )
        second = pytest.raises(
            storage.Locked, match=f"another command is writing there \\(pid {os.getpid()} "
        )
        with second, storage.exclusive(uri):
            pass
        lock.check()
    assert not storage.exists(uri)  # released


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_a_lock_taken_over_is_noticed_by_its_old_holder(
    tmp_path: Path, request: pytest.FixtureRequest, where: str
) -> None:
    root = str(tmp_path) if where == "local" else f"{request.getfixturevalue('gcs_bucket')}/{tmp_path.name}"
    uri = storage.join(root, "ingest.lock")
    with storage.exclusive(uri) as lock:
        storage.write_bytes(uri, lock_file("elsewhere.example", 1, 0))
        with pytest.raises(storage.Locked, match="taken over by another command \\(pid 1 on elsewhere"):
            lock.check()
    assert json.loads(storage.read_bytes(uri))["host"] == "elsewhere.example"  # not ours to remove


def test_an_ingest_to_gcs_is_refused_while_another_host_writes_and_resumes_after(
    tmp_path: Path, gcs_bucket: str
) -> None:
    write_many_videos(tmp_path, 3)
    output = f"{gcs_bucket}/refused"
    lock = f"{output}/ingest.lock"
    storage.write_bytes(lock, lock_file("elsewhere.example", 4242, 10))
    words = ingest_args(tmp_path / "frames", "reference-jpg", tmp_path / "ann.json", output, "--workers", "1")
    refused = mega3d(*words)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(
        f"error: {output}: another command is writing there (pid 4242 on elsewhere.example"
    )
    assert storage.list_dir(output) == [lock]  # nothing written beside the holder's lock

    storage.write_bytes(lock, lock_file("elsewhere.example", 4242, storage.STALE_AFTER_S + 5))
    taken = mega3d(*words)
    assert taken.returncode == 0, taken.stderr
    assert "warning: took over the lock" in taken.stderr and "(no heartbeat for " in taken.stderr
    assert len(load_index(index_uri(output))) == 3
    assert not storage.exists(lock)
