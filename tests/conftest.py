from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
MEGA3D = str(Path(sys.executable).with_name("mega3d"))


def mega3d(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    return subprocess.run([MEGA3D, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 3-class synthetic dataset small enough to train on in seconds."""
    from trainer.data.synth import synthesize
    from trainer.spec import SyntheticSpec

    uri = str(tmp_path_factory.mktemp("data") / "tiny")
    synthesize(uri, SyntheticSpec(classes=3, videos_per_class=6, frames=10, size=24, seed=7))
    return uri


@pytest.fixture(scope="session")
def gcs_bucket() -> Iterator[str]:
    """A real GCS JSON API (gcp-storage-emulator, in memory) on a loopback port, used through gcsfs.

    The environment variables point gcsfs at it, in this process and in subprocesses started after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator = Path(sys.executable).with_name("gcp-storage-emulator")
    server = subprocess.Popen(
        [
            str(emulator),
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--in-memory",
            "--default-bucket=mega3d",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/storage/v1/b/mega3d", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the GCS emulator did not start") from None
            time.sleep(0.2)
    saved = {
        key: os.environ.get(key) for key in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
    }
    # Without the second variable gcsfs probes every bucket over gRPC for a minute first.
    os.environ.update(STORAGE_EMULATOR_HOST=endpoint, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    try:
        yield "gs://mega3d"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(timeout=10)
