from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mega3d.testing import gcs_emulator

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
MEGA3D = str(Path(sys.executable).with_name("mega3d"))


def mega3d(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    return subprocess.run([MEGA3D, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 3-class synthetic dataset small enough to train on in seconds."""
    from mega3d.trainer.data.synth import synthesize
    from mega3d.trainer.spec import SyntheticSpec

    uri = str(tmp_path_factory.mktemp("data") / "tiny")
    synthesize(uri, SyntheticSpec(classes=3, videos_per_class=6, frames=10, size=24, seed=7))
    return uri


@pytest.fixture(scope="session")
def gcs_bucket() -> Iterator[str]:
    """A real GCS JSON API (gcp-storage-emulator, in memory) on a loopback port, used through gcsfs.

    The environment variables point gcsfs at it, in this process and in subprocesses started after."""
    with gcs_emulator():
        yield "gs://mega3d"
