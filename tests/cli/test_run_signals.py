"""`mega3d run` stopped while it trains: by SIGTERM, by Ctrl-C (SIGINT), and killed outright (SIGKILL).

Every process the run starts (pipeline process, steps, torchrun, trainers) inherits the environment of the
`mega3d run` process, so a marker set there finds them all in /proc, whatever session they made for
themselves. Each case trains a tiny stage for many epochs and is stopped once its second epoch is logged.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest
import yaml

from tests.cli.test_object_storage import TINY_STAGE
from tests.conftest import MEGA3D

pytestmark = pytest.mark.slow

MARKER = "MEGA3D_TEST_SIGNALS"
STOPPED_WITHIN_SECONDS = 15


def long_spec(tmp_path: Path) -> Path:
    spec = {
        "name": "stopped",
        "storage": str(tmp_path / "store"),
        "datasets": {
            "motion": {
                "uri": "datasets/motion",
                "synthetic": {"classes": 3, "videos_per_class": 4, "frames": 8, "size": 24, "seed": 1},
            }
        },
        "model": {"name": "r3d-10", "widen_factor": 0.125},
        "finetune": [
            {"name": "tuned", "dataset": "motion", "init_from": "scratch", **TINY_STAGE, "epochs": 5000}
        ],
    }
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def marked(value: str) -> list[int]:
    """Live processes whose environment carries MARKER=value (a zombie's environment reads empty)."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if needle in Path(entry.path, "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def stop_while_training(tmp_path: Path, signum: int, *extra: str) -> tuple[subprocess.Popen[str], str, str]:
    """Start `mega3d run`, send `signum` once training has begun; (process, stdout, stderr) once every
    process of the run has ended."""
    value = os.urandom(6).hex()
    process = subprocess.Popen(
        [MEGA3D, "run", str(long_spec(tmp_path)), "--run-id", "r1", *extra],
        cwd=tmp_path,
        env={**os.environ, MARKER: value},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()  # None: the output has ended

    def read(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, args=(process.stdout,), daemon=True).start()
    seen: list[str] = []
    try:
        while not any("epoch 2/" in line for line in seen):
            line = lines.get(timeout=180)
            assert line is not None, "".join(seen) + process.stderr.read()
            seen.append(line)
        assert len(marked(value)) >= 4  # mega3d run, the pipeline process, the step, torchrun, the trainer
        process.send_signal(signum)
        deadline = time.monotonic() + STOPPED_WITHIN_SECONDS
        while marked(value) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marked(value) == [], f"left running {STOPPED_WITHIN_SECONDS}s after the signal"
    finally:
        for pid in marked(value):  # never leave a test's processes behind, even when it fails
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)
    while (line := lines.get(timeout=10)) is not None:
        seen.append(line)
    return process, "".join(seen), process.stderr.read()


def assert_nothing_written_after(store: Path) -> None:
    before = files(store)
    time.sleep(2)
    assert files(store) == before


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_stops_whole_and_says_so_in_one_line(tmp_path: Path, signum: int, code: int) -> None:
    verbose = ["-v"] if signum == signal.SIGINT else []  # -v shows KFP's own output as well
    process, stdout, stderr = stop_while_training(tmp_path, signum, *verbose)
    assert process.returncode == code
    name = signal.Signals(signum).name
    assert stderr.splitlines() == [stderr.strip()] and stderr.startswith(f"stopped: {name} ended run r1")
    assert "--run-id OTHER` starts afresh" in stderr and "Traceback" not in stdout + stderr
    assert ("KFP Executor" in stdout) == bool(verbose)
    assert_nothing_written_after(tmp_path / "store")
    run = tmp_path / "store" / "experiments" / "stopped" / "runs" / "r1"
    assert "epoch 2/" in (run / "run.log").read_text()


def test_a_killed_run_leaves_nothing_running(tmp_path: Path) -> None:
    """SIGKILL gives `mega3d run` no chance: the kernel tells the pipeline process, which stops the rest."""
    process, _, _ = stop_while_training(tmp_path, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert_nothing_written_after(tmp_path / "store")
