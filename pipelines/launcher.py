"""Runs a TorchX app from inside a pipeline step: submit, stream every replica's log, wait, fail on failure.

The Volcano job on a cluster is not owned by the step's pod, so a cancelled KFP run (SIGTERM to the step)
must cancel the TorchX job itself.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from types import FrameType

from torchx.runner import Runner, get_runner
from torchx.schedulers.api import Stream
from torchx.specs import AppDef, AppState

LOCAL_SCHEDULER = "local_cwd"


class LaunchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stream(runner: Runner, handle: str, role: str, replica: int, prefix: str) -> None:
    try:
        for line in runner.log_lines(handle, role, k=replica, should_tail=True, streams=Stream.COMBINED):
            print(f"{prefix}{line.rstrip()}", flush=True)
    except Exception as error:  # a log that cannot be read must not fail the job
        print(f"{prefix}(log unavailable: {error})", flush=True)


def launch(app: AppDef, scheduler: str, cfg: dict[str, str] | None = None) -> None:
    """Run the app to its end; fail with LaunchError if it does not succeed.

    A scheduler that retries failed jobs (Volcano on Kubernetes) restarts the whole job itself, up to the
    roles' `max_retries`. TorchX's local scheduler does not, so locally the launcher does the same: a job
    that fails (a node's process died) is started again, and training resumes from its latest checkpoint.
    """
    retries = max((role.max_retries for role in app.roles), default=0) if scheduler == LOCAL_SCHEDULER else 0
    for attempt in range(retries + 1):
        handle, state = _run(app, scheduler, cfg)
        if state == AppState.SUCCEEDED:
            return
        if attempt < retries:
            print(
                f"{handle} ended {state.name}: starting it again ({retries - attempt} retries left)",
                flush=True,
            )
    raise LaunchError(f"{app.name}: TorchX job {handle} ended {state.name}")


def _run(app: AppDef, scheduler: str, cfg: dict[str, str] | None) -> tuple[str, AppState]:
    """Submit the app once, stream every replica's log, wait: its handle and final state."""
    if scheduler == LOCAL_SCHEDULER:
        # local_cwd starts `torchrun` from PATH: use the one beside this interpreter.
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    runner = get_runner()
    handle = runner.run(app, scheduler=scheduler, cfg=cfg)
    print(f"launched {handle}", flush=True)

    def cancel(signum: int, frame: FrameType | None) -> None:
        print(f"received signal {signum}: cancelling {handle}", flush=True)
        runner.cancel(handle)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, cancel)
    streams = [
        threading.Thread(
            target=_stream,
            args=(runner, handle, role.name, replica, f"node{replica} | " if role.num_replicas > 1 else ""),
            daemon=True,
        )
        for role in app.roles
        for replica in range(role.num_replicas)
    ]
    try:
        for thread in streams:
            thread.start()
        status = runner.wait(handle, wait_interval=1)
        for thread in streams:
            thread.join(timeout=10)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return handle, status.state if status is not None else AppState.UNKNOWN
