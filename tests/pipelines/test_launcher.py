from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from torchx import specs

from mega3d.pipelines.launcher import PORT_FLOOR, LaunchError, free_port, launch_local


def python_app(name: str, code: str, replicas: int = 1, max_retries: int = 0) -> specs.AppDef:
    role = specs.Role(
        name="worker",
        image="unused",
        entrypoint=sys.executable,
        args=["-c", code, specs.macros.replica_id],
        num_replicas=replicas,
        max_retries=max_retries,
    )
    return specs.AppDef(name=name, roles=[role])


def test_launch_streams_every_replicas_log(capsys: pytest.CaptureFixture[str]) -> None:
    launch_local(python_app("hello", "import sys; print('hello from', sys.argv[1])", replicas=2))
    printed = capsys.readouterr().out
    assert "node0 | hello from 0" in printed and "node1 | hello from 1" in printed


def test_a_failed_job_fails_the_step() -> None:
    with pytest.raises(LaunchError, match=r"TorchX job local_cwd://.* ended FAILED"):
        launch_local(python_app("boom", "raise SystemExit(3)"))


def test_a_failed_local_job_is_started_again_up_to_its_retries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TorchX's local scheduler retries nothing; the launcher restarts the job as Volcano would."""
    attempts = tmp_path / "attempts"
    code = (
        f"import pathlib, sys; f = pathlib.Path({str(attempts)!r}); "
        "n = len(f.read_text()) if f.exists() else 0; f.write_text('x' * (n + 1)); "
        "print('attempt', n + 1); sys.exit(0 if n + 1 == 2 else 1)"
    )
    launch_local(python_app("flaky", code, max_retries=2))
    assert attempts.read_text() == "xx" and "starting it again (2 retries left)" in capsys.readouterr().out
    attempts.unlink()
    with pytest.raises(LaunchError, match="ended FAILED"):
        launch_local(python_app("broken", code.replace("n + 1 == 2", "False"), max_retries=1))
    assert attempts.read_text() == "xx"  # the first run and one retry


def test_a_job_stopped_after_a_checkpoint_on_notice_is_started_again_without_using_a_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attempts 1 and 2 end after writing a step checkpoint on notice (as the trainer does on SIGTERM):
    preemptions. Attempt 3 ends without a new notice: a failure, its one retry. Attempt 4 succeeds."""
    stage = tmp_path / "stage"
    code = f"""
import pathlib, sys, time
from mega3d.trainer.records import LatestEpoch
stage = pathlib.Path({str(stage)!r}); attempts = stage / "attempts"
n = len(attempts.read_text()) + 1 if attempts.exists() else 1
attempts.write_text("x" * n)
if n <= 2:
    (stage / "checkpoints").mkdir(exist_ok=True)
    pointer = LatestEpoch(epoch=1, file="epoch-00001-batch-000003.pt", sha256="0", noticed_at=time.time())
    pointer.write(str(stage / "checkpoints" / "latest.json"))
sys.exit(0 if n == 4 else 75)
"""
    stage.mkdir()
    launch_local(python_app("spot", code, max_retries=1), stage_dir=str(stage))
    printed = capsys.readouterr().out
    assert (stage / "attempts").read_text() == "xxxx"
    assert "was preempted (1 so far)" in printed and "was preempted (2 so far)" in printed
    assert "ended FAILED: starting it again (1 retries left)" in printed
    (stage / "attempts").unlink()
    with pytest.raises(LaunchError, match="ended FAILED"):  # the same notice again is no new preemption
        launch_local(python_app("spot", code.replace("n <= 2", "False")), stage_dir=str(stage))
    assert (stage / "attempts").read_text() == "x"


def test_a_failed_job_says_why_in_a_line() -> None:
    """The cause is the job's own last error, not TorchX's report of a failed process."""
    code = "raise FileNotFoundError(2, 'No such file or directory', '/data/shard-00000.bin')"
    with pytest.raises(LaunchError) as failure:
        launch_local(python_app("missing", code))
    assert failure.value.cause == "/data/shard-00000.bin: No such file or directory"
    assert str(failure.value).endswith(": /data/shard-00000.bin: No such file or directory")


def test_local_job_ports_lie_below_the_ephemeral_range() -> None:
    """Nothing the kernel hands out by itself can take a chosen port before the job listens on it."""
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(PORT_FLOOR <= port < ephemeral_start for port in ports)
    assert len(ports) > 1  # chosen at random, so that jobs starting together rarely collide
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports.pop()))  # free: a job's store can listen there
        listener.listen()
