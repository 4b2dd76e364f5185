"""`mega3d run` stopped while it trains: by SIGTERM, by Ctrl-C (SIGINT), and killed outright (SIGKILL).

Every process the run starts (pipeline process, steps, torchrun, trainers) inherits the environment of the
`mega3d run` process, so a marker set there finds them all in /proc, whatever session they made for
themselves. Each case trains a tiny stage for many epochs and is stopped once its second epoch is logged.
"""

from __future__ import annotations

import json
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
EPOCHS = 40  # of the interrupted fine-tune stage
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


def stop_while_training(
    tmp_path: Path, signum: int, *extra: str, spec: Path | None = None, after: str = "epoch 2/"
) -> tuple[subprocess.Popen[str], str, str]:
    """Start `mega3d run` (of `long_spec` unless `spec` is given), send `signum` once a line with `after`
    is shown; (process, stdout, stderr) once every process of the run has ended."""
    value = os.urandom(6).hex()
    process = subprocess.Popen(
        [MEGA3D, "run", str(spec or long_spec(tmp_path)), "--run-id", "r1", *extra],
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
        while not any(after in line for line in seen):
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
    assert "--resume" in stderr and "continues it" in stderr and "Traceback" not in stdout + stderr
    assert ("KFP Executor" in stdout) == bool(verbose)
    assert_nothing_written_after(tmp_path / "store")
    run = tmp_path / "store" / "experiments" / "stopped" / "runs" / "r1"
    assert "epoch 2/" in (run / "run.log").read_text()


def test_a_killed_run_leaves_nothing_running(tmp_path: Path) -> None:
    """SIGKILL gives `mega3d run` no chance: the kernel tells the pipeline process, which stops the rest."""
    process, _, _ = stop_while_training(tmp_path, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert_nothing_written_after(tmp_path / "store")


def test_an_interrupted_run_goes_on_from_what_it_finished(tmp_path: Path) -> None:
    """Stopped in its fine-tune stage (of enough tiny epochs that the stop comes before its end), run r1
    has a finished pretraining and fine-tune checkpoints. A new scheduled-style run (r2, --skip-if-trained)
    reuses the one and resumes from the other; r1 itself, resumed, keeps its pretraining and goes on from
    its own last checkpoint."""
    spec = yaml.safe_load(long_spec(tmp_path).read_text())
    spec["pretrain"] = {"datasets": ["motion"], **TINY_STAGE}
    spec["finetune"][0].update(init_from="pretrain", epochs=EPOCHS)
    path = tmp_path / "two-stages.yaml"
    path.write_text(yaml.safe_dump(spec))
    process, _, _ = stop_while_training(
        tmp_path, signal.SIGTERM, "--skip-if-trained", spec=path, after="[tuned] epoch 2/"
    )
    assert process.returncode == 143
    runs = tmp_path / "store" / "experiments" / "stopped" / "runs"
    stopped_at = json.loads((runs / "r1" / "tuned" / "checkpoints" / "latest.json").read_text())["epoch"]
    assert 2 <= stopped_at < EPOCHS and not (runs / "r1" / "tuned" / "metrics.json").exists()

    def completed(*args: str) -> str:
        done = subprocess.run([MEGA3D, "run", str(path), *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        return done.stdout

    later = completed("--run-id", "r2", "--skip-if-trained")
    assert "[pretrain] run r1 trained this stage with the same data, model and recipe: reusing" in later
    interrupted = "[tuned] run r1 was interrupted in this stage (same data, model and recipe): resuming from"
    assert f"{interrupted} its epoch {stopped_at}" in later
    assert not (runs / "r2" / "pretrain" / "checkpoint.pt").exists()  # r1's is used, not trained again

    resumed = completed("--resume", "r1")
    assert "[pretrain] finished before this run was resumed: its results are kept" in resumed
    assert f"resuming after epoch {stopped_at}" in resumed
    for run in ("r1", "r2"):
        history = json.loads((runs / run / "tuned" / "metrics.json").read_text())["history"]
        assert [epoch["epoch"] for epoch in history] == list(range(1, EPOCHS + 1)), run
    pretrained = json.loads((runs / "r1" / "pretrain" / "metrics.json").read_text())
    tuned = json.loads((runs / "r2" / "tuned" / "metrics.json").read_text())
    assert tuned["job"]["init_checkpoint"] == pretrained["checkpoint"]  # r2 fine-tuned r1's pretraining
    assert (
        "already exists; choose another --run-id, or continue it with --resume r1"
        in subprocess.run(
            [MEGA3D, "run", str(path), "--run-id", "r1"], capture_output=True, text=True, timeout=60
        ).stderr
    )
