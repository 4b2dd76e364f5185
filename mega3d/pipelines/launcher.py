"""Runs a TorchX app from inside a pipeline step: submit, stream every replica's log, wait, fail on failure.

Locally (`local_cwd`) the app runs as processes on this machine. On a cluster (`kubernetes`) TorchX submits
a Volcano Job with one task per node to the deployment's namespace and queue; the kubernetes client reads
the step pod's in-cluster configuration first, else a kubeconfig. The Volcano job is not owned by the
step's pod, so a cancelled KFP run (SIGTERM to the step) must delete the job itself.
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import re
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from torchx.runner import Runner, get_runner
from torchx.schedulers.api import Stream
from torchx.specs import NONE, AppDef, AppState, AppStatus, CfgVal, VolumeMount
from torchx.specs.overlays import JOIN, set_overlay

from mega3d.pipelines.settings import CREDENTIALS_DIR, CREDENTIALS_KEY, Deployment

LOCAL_SCHEDULER = "local_cwd"
KUBERNETES_SCHEDULER = "kubernetes"

# Pod names are DNS labels of at most 63 characters. TorchX names the Volcano job `{app}-{id}` with a random
# id of up to 14 characters, and each pod `{job}-{role}-{node}-0`; the trainer's role is "trainer". This
# leaves an app name 34 characters for up to 1,000 nodes.
APP_NAME_LIMIT = 63 - len("-") - 14 - len("-trainer-999-0")
# How often a job's status is read: on a cluster each reading costs a request per node (TorchX looks up
# every pod), and a training job runs for hours.
STATUS_POLL_SECONDS = {LOCAL_SCHEDULER: 1.0, KUBERNETES_SCHEDULER: 5.0}
# Ports chosen for local jobs lie above the well-known services' (Prometheus 9090, metrics 9400...).
PORT_FLOOR = 10000
# How soon a cluster log is opened again: its pod may not exist yet, or Volcano may have replaced it.
LOG_RETRY_SECONDS = 5.0


class LaunchError(RuntimeError):
    pass


def free_port() -> int:
    """A loopback port that is free now and that the kernel does not hand out by itself.

    A local job's rendezvous port is chosen before its processes start and kept for its restarts; a port of
    the ephemeral range could meanwhile become the source port of an outgoing connection, and the job's
    store could then not listen on it.
    """
    ephemeral_start = _ephemeral_port_start()
    if ephemeral_start - PORT_FLOOR >= 1000:
        for port in random.sample(range(PORT_FLOOR, ephemeral_start), 100):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as probe:  # a machine whose ephemeral range leaves no room below it
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ephemeral_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def job_name(experiment: str, stage: str) -> str:
    """`{experiment}-{stage}` as an app name that stays a DNS label in every pod name TorchX derives.

    Names that do not fit (or had to be changed to become DNS-safe) are cut short and end in a hash of the
    whole, so different experiments and stages keep different names."""
    wanted = f"{experiment}-{stage}"
    name = re.sub(r"[^a-z0-9]+", "-", wanted.lower()).strip("-")
    if not name[:1].isalpha():  # Volcano names a Service after the job, and those start with a letter
        name = f"job-{name}".rstrip("-")
    if name == wanted and len(name) <= APP_NAME_LIMIT:
        return name
    digest = hashlib.sha256(f"{experiment}\0{stage}".encode()).hexdigest()[:6]
    return f"{name[: APP_NAME_LIMIT - len(digest) - 1].rstrip('-')}-{digest}"


def scheduler_cfg(scheduler: str, deployment: Deployment, log_dir: str | None) -> dict[str, CfgVal]:
    """TorchX run options: where local logs go, or the namespace, queue and service account on a cluster."""
    if scheduler == LOCAL_SCHEDULER:
        return {"log_dir": log_dir} if log_dir is not None else {}
    if scheduler == KUBERNETES_SCHEDULER:
        cfg: dict[str, CfgVal] = {"namespace": deployment.namespace, "queue": deployment.queue}
        if deployment.service_account is not None:
            cfg["service_account"] = deployment.service_account
        return cfg
    raise ValueError(f"unknown scheduler {scheduler!r}: expected {LOCAL_SCHEDULER} or {KUBERNETES_SCHEDULER}")


def cluster_app(app: AppDef, deployment: Deployment) -> AppDef:
    """A copy of the app, ready for the kubernetes scheduler on the deployment's cluster.

    Pods run as non-root, as the pipeline's steps do with the same image, and without an Istio sidecar.
    Roles that use GPUs get the node
    selector and tolerations of the GPU nodes. With `credentials_secret` set, every pod mounts that Secret
    read-only at CREDENTIALS_DIR (its files are world-readable, whatever user the image runs as) and
    GOOGLE_APPLICATION_CREDENTIALS points at its key file; only the Secret's name enters the job.
    """
    app = copy.deepcopy(app)
    for role in app.roles:
        pod_spec: dict[str, object] = {"securityContext": {"runAsNonRoot": True}}
        if role.resource.gpu > 0 and deployment.node_selector:
            pod_spec["nodeSelector"] = dict(deployment.node_selector)
        if role.resource.gpu > 0 and deployment.tolerations:
            pod_spec["tolerations"] = [t.model_dump(exclude_none=True) for t in deployment.tolerations]
        if deployment.credentials_secret is not None:
            # TorchX mounts a role's volume in the container and names it `mount-{index}`, but knows only
            # claims: mount one, then turn that volume into the Secret.
            role.mounts.append(
                VolumeMount(src=deployment.credentials_secret, dst_path=CREDENTIALS_DIR, read_only=True)
            )
            volume = {
                "name": f"mount-{len(role.mounts) - 1}",
                "persistentVolumeClaim": None,
                "secret": {"secretName": deployment.credentials_secret},
            }
            pod_spec[JOIN("volumes", on="name")] = [volume]
            role.env["GOOGLE_APPLICATION_CREDENTIALS"] = f"{CREDENTIALS_DIR}/{CREDENTIALS_KEY}"
        # Kubeflow's profile namespaces inject Istio sidecars, which would keep a finished pod running.
        metadata = {"annotations": {"sidecar.istio.io/inject": "false"}}
        set_overlay(role, KUBERNETES_SCHEDULER, "V1Pod", {"metadata": metadata, "spec": pod_spec})
    return app


def _stream(runner: Runner, handle: str, role: str, replica: int, prefix: str) -> None:
    try:
        for line in runner.log_lines(handle, role, k=replica, should_tail=True, streams=Stream.COMBINED):
            print(f"{prefix}{line.rstrip()}", flush=True)
    except Exception as error:  # a log that cannot be read must not fail the job
        print(f"{prefix}(log unavailable: {error})", flush=True)


def _timestamp_key(stamp: str) -> str:
    """Kubernetes log timestamps (RFC 3339, UTC, trailing zeros of the fraction dropped) in sortable form."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{whole}.{fraction:0<9}"


def _follow_pod_log(
    runner: Runner, handle: str, role: str, replica: int, prefix: str, finished: threading.Event
) -> None:
    """Follow one node's log on a cluster until the job has ended.

    The pod appears (and its container starts) a while after the job is submitted, a followed log may be
    closed early, and Volcano replaces every pod when it restarts the job: so the log is opened again until
    the job has ended, and lines already printed are recognised by their timestamps and skipped.
    """
    last, printed_at_last = "", 0  # newest timestamp printed, and how many lines carried it
    error: Exception | None = None
    while True:
        try:
            seen_at_last = 0
            for line in runner.log_lines(handle, role, k=replica, should_tail=True, streams=Stream.COMBINED):
                stamp, _, text = line.rstrip("\n").partition(" ")
                key = _timestamp_key(stamp)
                if key < last:
                    continue
                if key == last:
                    seen_at_last += 1
                    if seen_at_last <= printed_at_last:
                        continue
                    printed_at_last = seen_at_last
                else:
                    last, printed_at_last, seen_at_last = key, 1, 1
                print(f"{prefix}{text.rstrip()}", flush=True)
            error = None
        except Exception as failure:  # no pod yet, or a log that cannot be read: not a failed job
            error = failure
        if finished.is_set():
            break
        finished.wait(LOG_RETRY_SECONDS)  # wakes at once when the job ends, for a last complete read
    if error is not None and not last:
        print(f"{prefix}(log unavailable: {error})", flush=True)


def launch(app: AppDef, scheduler: str, cfg: Mapping[str, CfgVal] | None = None) -> None:
    """Run the app to its end; fail with LaunchError if it does not succeed.

    A scheduler that retries failed jobs (Volcano on Kubernetes) restarts the whole job itself, up to the
    roles' `max_retries`. TorchX's local scheduler does not, so locally the launcher does the same: a job
    that fails (a node's process died) is started again, and training resumes from its latest checkpoint.
    """
    retries = max((role.max_retries for role in app.roles), default=0) if scheduler == LOCAL_SCHEDULER else 0
    for attempt in range(retries + 1):
        handle, state, reason = _run(app, scheduler, cfg)
        if state == AppState.SUCCEEDED:
            return
        if attempt < retries:
            print(
                f"{handle} ended {state.name}: starting it again ({retries - attempt} retries left)",
                flush=True,
            )
    raise LaunchError(f"{app.name}: TorchX job {handle} ended {state.name}{f': {reason}' if reason else ''}")


def _run(app: AppDef, scheduler: str, cfg: Mapping[str, CfgVal] | None) -> tuple[str, AppState, str]:
    """Submit the app once, stream every replica's log, wait: its handle, final state and why it ended."""
    if scheduler == LOCAL_SCHEDULER:
        # local_cwd starts `torchrun` from PATH: use the one beside this interpreter.
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    # Closed on leaving, not whenever it is garbage-collected: closing a local runner kills its jobs' process
    # groups, which must not happen once their ids may belong to a later attempt's processes.
    with get_runner() as runner:
        return _submit_and_follow(runner, app, scheduler, cfg)


def _submit_and_follow(
    runner: Runner, app: AppDef, scheduler: str, cfg: Mapping[str, CfgVal] | None
) -> tuple[str, AppState, str]:
    handle = runner.run(app, scheduler=scheduler, cfg=cfg)
    print(f"launched {handle}", flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        # Delete rather than cancel: TorchX cancels a Volcano job by rewriting its status to Aborted, which
        # needs write access to job status; deleting removes the job and its pods with the `delete` verb.
        print(f"received signal {signum}: deleting {handle}", flush=True)
        runner.delete(handle)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    finished = threading.Event()

    def follow(role: str, replica: int, prefix: str) -> None:
        if scheduler == KUBERNETES_SCHEDULER:
            _follow_pod_log(runner, handle, role, replica, prefix, finished)
        else:
            _stream(runner, handle, role, replica, prefix)

    streams = [
        threading.Thread(
            target=follow,
            args=(role.name, replica, f"node{replica} | " if role.num_replicas > 1 else ""),
            daemon=True,
        )
        for role in app.roles
        for replica in range(role.num_replicas)
    ]
    try:
        for thread in streams:
            thread.start()
        status = runner.wait(handle, wait_interval=STATUS_POLL_SECONDS[scheduler])
        finished.set()
        for thread in streams:
            thread.join(timeout=10)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if status is None:
        return handle, AppState.UNKNOWN, "the job no longer exists"
    return handle, status.state, _reason(runner, handle, scheduler, status)


def _reason(runner: Runner, handle: str, scheduler: str, status: AppStatus) -> str:
    """What the scheduler says about how the job ended; Volcano keeps it in the job's status."""
    message = "" if status.msg == NONE else status.msg
    if message or status.state == AppState.SUCCEEDED or scheduler != KUBERNETES_SCHEDULER:
        return message
    from torchx.schedulers.kubernetes_scheduler import KubernetesJob  # loads docker: only on a cluster

    native = runner.describe_native(handle)
    if native is None or not isinstance(native.request, KubernetesJob):
        return ""
    state = native.request.resource.get("status", {}).get("state", {})
    return ": ".join(part for part in (state.get("reason"), state.get("message")) if part)
