"""Runs a TorchX app from inside a pipeline step: submit, stream every replica's log, wait, fail on failure.

Locally (`local_cwd`, `launch_local`) the app runs as processes on this machine. On a cluster
(`kubernetes`, `launch_on_cluster`) TorchX submits a Volcano Job with one task per node to the deployment's
namespace and queue; the kubernetes client reads the step pod's in-cluster configuration first, else a
kubeconfig. The job is labelled with whom it is for and owned by the step's pod (mega3d.pipelines.volcano):
a step started again follows the job it finds instead of submitting a second one. The step reads the job's
state through API outages (up to the deployment's `api_outage_minutes`), says why a job waits to be
scheduled and gives up after `pending_minutes`, and deletes the job at once when the run is cancelled
(SIGTERM to the step).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import TypeVar

from torchx.runner import Runner, get_runner
from torchx.schedulers import get_scheduler_factories
from torchx.schedulers.api import Stream
from torchx.specs import (
    AppDef,
    AppDryRunInfo,
    AppState,
    CfgVal,
    RetryPolicy,
    VolumeMount,
    make_app_handle,
)
from torchx.specs.overlays import JOIN, set_overlay

from mega3d.pipelines.local import cause_in_log
from mega3d.pipelines.settings import CREDENTIALS_DIR, CREDENTIALS_KEY, Deployment
from mega3d.pipelines.volcano import (
    JobIdentity,
    JobState,
    Owner,
    VolcanoJobs,
    finish_resource,
    restart_on_any_pod_loss,
)
from mega3d.trainer import environment, storage
from mega3d.trainer.layout import CHECKPOINTS_DIR, LATEST_FILE
from mega3d.trainer.records import LatestEpoch

LOCAL_SCHEDULER = "local_cwd"
KUBERNETES_SCHEDULER = "kubernetes"

# Pod names are DNS labels of at most 63 characters. TorchX names the Volcano job `{app}-{id}` with a random
# id of up to 14 characters, and each pod `{job}-{role}-{node}-0`; the trainer's role is "trainer". This
# leaves an app name 34 characters for up to 1,000 nodes.
APP_NAME_LIMIT = 63 - len("-") - 14 - len("-trainer-999-0")
SESSION = "torchx"  # the session of get_runner() without a name: the first part of every app handle
# How often a job's status is read. On a cluster, a job that waits to be scheduled is read (and its
# reasons looked up) less and less often, up to PENDING_POLL_MAX_SECONDS; so are reads that fail.
STATUS_POLL_SECONDS = {LOCAL_SCHEDULER: 1.0, KUBERNETES_SCHEDULER: 5.0}
PENDING_POLL_MAX_SECONDS = 60.0
RETRY_MAX_SECONDS = 60.0
# Ports chosen for local jobs lie above the well-known services' (Prometheus 9090, metrics 9400...).
PORT_FLOOR = 10000
# How soon a cluster log is opened again: its pod may not exist yet, or Volcano may have replaced it.
LOG_RETRY_SECONDS = 5.0
LOG_LINES_KEPT = 200  # of a local job's output, the last lines: where a failed job says why
TORCHRUN_SHUTDOWN_TIMEOUT = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"  # torch/distributed/launcher/api.py
TORCHRUN_EXIT_MARGIN_S = 5
MAX_PREEMPTIONS = 100  # restarts after a notice, on top of max_retries: a bound, should notices never stop


class Restarts:
    """What a launcher does with a job that ended without succeeding, on this machine and on a cluster
    alike: a preemption (the stage's newest checkpoint was written on a notice that came since the launcher
    last looked) is started again up to MAX_PREEMPTIONS times, any other end up to `max_retries` times.
    `stage_dir`: where a training job keeps its checkpoints; None for a job without any."""

    def __init__(self, stage_dir: str | None, max_retries: int) -> None:
        self.stage_dir, self.max_retries = stage_dir, max_retries
        self.failures = self.preemptions = 0
        self.notice = self._newest_notice()

    @classmethod
    def of(cls, app: AppDef, stage_dir: str | None) -> Restarts:
        return cls(stage_dir, app_retries(app))

    def _newest_notice(self) -> float | None:
        if self.stage_dir is None:
            return None
        pointer = storage.join(self.stage_dir, CHECKPOINTS_DIR, LATEST_FILE)
        return LatestEpoch.read(pointer).noticed_at if storage.exists(pointer) else None

    def again(self, ended: str) -> str | None:
        """Why the job, which `ended` so (its state), is started again; None when it is not."""
        notice, seen = self._newest_notice(), self.notice
        self.notice = notice
        if notice is not None and notice != seen and self.preemptions < MAX_PREEMPTIONS:
            self.preemptions += 1
            return f"was preempted ({self.preemptions} so far): starting it again"
        if self.failures < self.max_retries:
            self.failures += 1
            return f"ended {ended}: starting it again ({self.max_retries - self.failures + 1} retries left)"
        return None

    def used_up(self) -> str:
        """What the restarts so far were, once `again` has said no."""
        return (
            f"max_retries {self.max_retries} used up; restarted {self.failures} times after a failure and "
            f"{self.preemptions} after a preemption"
        )


def app_retries(app: AppDef) -> int:
    """The app's `max_retries`: its roles' most."""
    return max((role.max_retries for role in app.roles), default=0)


class LaunchError(RuntimeError):
    """`cause`: why the job failed, in a line a user can act on, where its processes' output says."""

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(f"{message}: {cause}" if cause else message)
        self.cause = cause


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


def job_name(experiment: str, branch: str, stage: str, run_id: str) -> str:
    """`{experiment}-{branch}-{stage}-{run}` (the run id's first 8 characters) as an app name that stays a
    DNS label in every pod name TorchX derives.

    Names that do not fit (or had to be changed to become DNS-safe) are cut short and end in a hash of the
    whole, so different experiments, branches, stages and runs keep different names."""
    wanted = "-".join(part for part in (experiment, branch, stage, run_id[:8]) if part)
    name = re.sub(r"[^a-z0-9]+", "-", wanted.lower()).strip("-")
    if not name[:1].isalpha():  # Volcano names a Service after the job, and those start with a letter
        name = f"job-{name}".rstrip("-")
    if name == wanted and len(name) <= APP_NAME_LIMIT:
        return name
    digest = hashlib.sha256(f"{experiment}\0{branch}\0{stage}\0{run_id}".encode()).hexdigest()[:6]
    return f"{name[: APP_NAME_LIMIT - len(digest) - 1].rstrip('-')}-{digest}"


def scheduler_cfg(scheduler: str, deployment: Deployment, log_dir: str | None) -> dict[str, CfgVal]:
    """TorchX run options: where local logs go, or the namespace, queue, service account and priority
    class on a cluster. No server-side dry run: the job is completed after TorchX builds it
    (`finish_resource`), and the API server checks it when it is created."""
    if scheduler == LOCAL_SCHEDULER:
        return {"log_dir": log_dir} if log_dir is not None else {}
    if scheduler == KUBERNETES_SCHEDULER:
        cfg: dict[str, CfgVal] = {
            "namespace": deployment.namespace,
            "queue": deployment.queue,
            "validate_spec": False,
        }
        if deployment.service_account is not None:
            cfg["service_account"] = deployment.service_account
        if deployment.priority_class is not None:
            cfg["priority_class"] = deployment.priority_class
        return cfg
    raise ValueError(f"unknown scheduler {scheduler!r}: expected {LOCAL_SCHEDULER} or {KUBERNETES_SCHEDULER}")


def cluster_app(app: AppDef, deployment: Deployment) -> AppDef:
    """A copy of the app, ready for the kubernetes scheduler on the deployment's cluster.

    Pods run as non-root with the runtime's default seccomp profile (with `finish_resource`'s container
    settings: the "restricted" Pod Security level), without an Istio sidecar, with the deployment's
    annotations and its termination grace period (torchrun's shutdown timeout a little shorter). Roles that
    use GPUs get the node selector and tolerations of the GPU nodes, and their processes fail at once where
    they find fewer GPUs than they were given. With `credentials_secret`
    set, every pod mounts that Secret read-only at CREDENTIALS_DIR (its files are world-readable, whatever
    user the image runs as) and GOOGLE_APPLICATION_CREDENTIALS points at its key file; only the Secret's
    name enters the job.
    """
    app = copy.deepcopy(app)
    for role in app.roles:
        security = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        grace = deployment.termination_grace_seconds
        pod_spec: dict[str, object] = {"securityContext": security, "terminationGracePeriodSeconds": grace}
        # torchrun passes SIGTERM on to its workers and kills them after this timeout (30 s by default):
        # the step checkpoint gets the pod's grace period, less the time torchrun needs to end after them.
        role.env[TORCHRUN_SHUTDOWN_TIMEOUT] = str(grace - TORCHRUN_EXIT_MARGIN_S)
        if role.resource.gpu > 0:
            role.env[environment.GPUS_REQUIRED] = "1"
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
        annotations = {**deployment.pod_annotations, "sidecar.istio.io/inject": "false"}
        set_overlay(
            role, KUBERNETES_SCHEDULER, "V1Pod", {"metadata": {"annotations": annotations}, "spec": pod_spec}
        )
    return app


def cluster_request(
    runner: Runner, app: AppDef, deployment: Deployment, identity: JobIdentity, owner: Owner | None
) -> AppDryRunInfo:
    """The Volcano Job of a cluster app, as it will be created: TorchX's, finished by mega3d."""
    cfg = scheduler_cfg(KUBERNETES_SCHEDULER, deployment, None)
    with warnings.catch_warnings():  # TorchX warns about Volcano's retries of versions before 1.4
        warnings.simplefilter("ignore", UserWarning)
        info = runner.dryrun(cluster_app(app, deployment), KUBERNETES_SCHEDULER, cfg=cfg)
    finish_resource(info.request.resource, identity, owner, deployment.finished_job_minutes * 60)
    # Replicas that restart alone (an ingest's) keep TorchX's per-task retries; a DDP job restarts whole.
    if all(role.retry_policy == RetryPolicy.APPLICATION for role in app.roles):
        restart_on_any_pod_loss(info.request.resource, app_retries(app) + MAX_PREEMPTIONS)
    return info


# A replica's log, given its role and index: the lines it has written, then those it writes, until closed.
OpenLog = Callable[[str, int], Iterable[str]]


def _stream(open_log: OpenLog, role: str, replica: int, prefix: str) -> None:
    try:
        for line in open_log(role, replica):
            print(f"{prefix}{line.rstrip()}", flush=True)
    except Exception as error:  # a log that cannot be read must not fail the job
        print(f"{prefix}(log unavailable: {error})", flush=True)


def _timestamp_key(stamp: str) -> str:
    """Kubernetes log timestamps (RFC 3339, UTC, trailing zeros of the fraction dropped) in sortable form."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{whole}.{fraction:0<9}"


def _follow_pod_log(
    open_log: OpenLog, role: str, replica: int, prefix: str, finished: threading.Event
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
            for line in open_log(role, replica):
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


def launch_local(app: AppDef, cfg: Mapping[str, CfgVal] | None = None, stage_dir: str | None = None) -> None:
    """Run the app as processes on this machine to its end; fail with LaunchError if it does not succeed.

    TorchX's local scheduler does not start a failed job again; the launcher does, as Restarts says: a
    job that fails (a node's process died) up to the roles' `max_retries` times, and training resumes
    from its latest checkpoint; a job its trainers stopped on notice (SIGTERM, after a step checkpoint in
    `stage_dir`) without using up a retry.
    """
    restarts = Restarts.of(app, stage_dir)
    # local_cwd starts `torchrun` from PATH: use the one beside this interpreter.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    while True:
        recent: deque[str] = deque(maxlen=LOG_LINES_KEPT)  # where the cause of a failure is read
        # Closed on leaving, not whenever it is garbage-collected: closing a local runner kills its jobs'
        # process groups, which must not happen once their ids may belong to a later attempt's processes.
        with get_runner() as runner:
            handle = runner.run(app, scheduler=LOCAL_SCHEDULER, cfg=cfg)
            print(f"launched {handle}", flush=True)

            def open_log(
                role: str, replica: int, handle: str = handle, recent: deque[str] = recent
            ) -> Iterable[str]:
                lines = runner.log_lines(handle, role, k=replica, should_tail=True, streams=Stream.COMBINED)
                for line in lines:
                    recent.append(line)
                    yield line

            with _on_sigterm(_exit_on_signal), _following(open_log, app, finished=None):
                status = runner.wait(handle, wait_interval=STATUS_POLL_SECONDS[LOCAL_SCHEDULER])
        state = status.state if status is not None else AppState.UNKNOWN
        if state == AppState.SUCCEEDED:
            return
        again = restarts.again(state.name)
        if again is None:
            break
        print(f"{handle} {again}", flush=True)
    reason = status.msg if status is not None and status.msg not in ("", "<NONE>") else ""
    raise LaunchError(
        f"{app.name}: TorchX job {handle} ended {state.name}{f' ({reason})' if reason else ''}",
        cause_in_log(list(recent)),
    )


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """Leave the runner's block: closing a local runner kills its jobs' process groups."""
    print(f"received signal {signum}: stopping the job", flush=True)
    raise SystemExit(128 + signum)


def launch_on_cluster(
    app: AppDef, deployment: Deployment, identity: JobIdentity, stage_dir: str | None = None
) -> None:
    """Run the app as a Volcano job to its end, or follow the one an earlier attempt of this step
    submitted; fail with LaunchError if it does not succeed. Volcano restarts the job after any pod's
    failure or eviction; each restart the launcher sees is judged as Restarts says (counted from when
    it starts to follow the job), and the job is deleted once failures have used up `max_retries`."""
    restarts = Restarts.of(app, stage_dir)
    owner = Owner.from_environment(os.environ)
    jobs = VolcanoJobs(deployment.namespace)
    with get_runner() as runner:
        info = cluster_request(runner, app, deployment, identity, owner)
        name = _reading(deployment, "look for this step's job", lambda: jobs.find_resumable(identity))
        if name is None:
            handle = runner.schedule(info)
            name = handle.rpartition(":")[2]
            print(f"launched {handle}", flush=True)
        else:
            handle = make_app_handle(KUBERNETES_SCHEDULER, SESSION, f"{deployment.namespace}:{name}")
            print(f"following {handle}, which an earlier attempt of this step launched", flush=True)
            if owner is not None:
                _reading(deployment, f"adopt {name}", lambda: jobs.adopt(name, owner))

        def stop(signum: int, frame: FrameType | None) -> None:
            # One request, before anything else: the step's container may be killed soon after SIGTERM.
            # Delete rather than cancel: TorchX cancels by rewriting the job's status to Aborted, which
            # needs write access to jobs/status.
            print(f"received signal {signum}: deleting {handle}", flush=True)
            try:
                jobs.delete(name)
            except Exception as error:  # the owner reference and the TTL still bound the job's life
                print(f"could not delete {name}: {error}", flush=True)
            raise SystemExit(128 + signum)

        # The scheduler's own log stream: the runner's would read the job's status again at each opening.
        scheduler = get_scheduler_factories()[KUBERNETES_SCHEDULER](SESSION)
        app_id = f"{deployment.namespace}:{name}"

        def open_log(role: str, replica: int) -> Iterable[str]:
            return scheduler.log_iter(app_id, role, k=replica, should_tail=True, streams=Stream.COMBINED)

        with _on_sigterm(stop), _following(open_log, app, threading.Event()):
            state = _wait_on_cluster(jobs, name, deployment, restarts)
    if state.phase != "Completed":
        why = state.why()
        raise LaunchError(f"{app.name}: Volcano job {name} ended {state.phase}{f': {why}' if why else ''}")


@contextlib.contextmanager
def _on_sigterm(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """`handler` answers SIGTERM (what Kubernetes and kfp.local send a cancelled step) within the block.
    Python delivers signals to the main thread only: elsewhere (a test's thread) the block runs without."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _following(open_log: OpenLog, app: AppDef, finished: threading.Event | None) -> Iterator[None]:
    """Print every replica's log while the block waits for the job. On a cluster (`finished` given) logs
    are opened again until the block has ended, and read once more to its end."""
    event = finished or threading.Event()

    def follow(role: str, replica: int, prefix: str) -> None:
        if finished is not None:
            _follow_pod_log(open_log, role, replica, prefix, event)
        else:
            _stream(open_log, role, replica, prefix)

    streams = [
        threading.Thread(
            target=follow,
            args=(role.name, replica, f"node{replica} | " if role.num_replicas > 1 else ""),
            daemon=True,
        )
        for role in app.roles
        for replica in range(role.num_replicas)
    ]
    for thread in streams:
        thread.start()
    yield
    event.set()
    for thread in streams:
        thread.join(timeout=10)


Result = TypeVar("Result")


def _is_outage(error: BaseException) -> bool:
    """An answer that a later request may not get: the API server or its network is down or overloaded."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(error, ApiException):
        return error.status in (0, 429) or error.status >= 500
    return isinstance(error, (HTTPError, OSError))


def _reading(deployment: Deployment, what: str, request: Callable[[], Result]) -> Result:
    """The request's answer, asked again with growing pauses while the API server cannot answer, for up
    to the deployment's `api_outage_minutes`; any other failure is raised at once."""
    limit = deployment.api_outage_minutes * 60
    started = time.monotonic()
    pause = STATUS_POLL_SECONDS[KUBERNETES_SCHEDULER]
    failures = 0
    while True:
        try:
            return request()
        except Exception as error:
            if not _is_outage(error):
                raise
            waited = time.monotonic() - started
            if waited + pause > limit:
                raise LaunchError(
                    f"could not {what}: the Kubernetes API did not answer for {waited / 60:.1f} min "
                    f"(api_outage_minutes: {deployment.api_outage_minutes:g}): {_first_line(error)}"
                ) from None
            failures += 1
            if failures == 1 or pause >= RETRY_MAX_SECONDS:  # said once, then about once a minute
                print(
                    f"the Kubernetes API does not answer ({_first_line(error)}): trying to {what} again "
                    f"for up to {deployment.api_outage_minutes:g} min",
                    flush=True,
                )
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_SECONDS)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _wait_on_cluster(jobs: VolcanoJobs, name: str, deployment: Deployment, restarts: Restarts) -> JobState:
    """The job's state once it has ended. Each restart by Volcano is judged by `restarts`: one it does
    not allow deletes the job and fails the step. While the job waits to be scheduled, the step says why
    (once per reason) and reads it less often; after `pending_minutes` of waiting, the job is deleted and
    the step fails with those reasons."""
    interval = STATUS_POLL_SECONDS[KUBERNETES_SCHEDULER]
    pending_since: float | None = None
    told: list[str] = []
    judged: int | None = None  # Volcano's restarts of the job so far, all judged (from the first read on)
    while True:
        state = _reading(deployment, f"read the state of {name}", lambda: jobs.state(name))
        if state is None:
            return JobState("Deleted", "", "the job no longer exists")
        judged = state.restarts if judged is None else judged
        for _ in range(state.restarts - judged):
            again = restarts.again("Failed")
            if again is None:
                _reading(deployment, f"delete {name}", lambda: jobs.delete(name))
                why = f"{state.why()}; " if state.why() else ""
                raise LaunchError(f"Volcano job {name} failed again ({why}{restarts.used_up()}): deleted it")
            print(f"{name} {again}", flush=True)
        judged = state.restarts
        if state.ended:
            return state
        if state.phase != "Pending":
            pending_since, interval = None, STATUS_POLL_SECONDS[KUBERNETES_SCHEDULER]
        else:
            now = time.monotonic()
            pending_since = now if pending_since is None else pending_since
            problems = _scheduling_problems(jobs, name)
            for problem in problems:
                if problem not in told:
                    print(f"{name} waits to be scheduled: {problem}", flush=True)
                    told.append(problem)
            if now - pending_since > deployment.pending_minutes * 60:
                _reading(deployment, f"delete {name}", lambda: jobs.delete(name))
                raise LaunchError(
                    f"Volcano job {name} was not scheduled within {deployment.pending_minutes:g} min "
                    f"(pending_minutes) and was deleted: {'; '.join(problems) or 'no reason given'}"
                )
            interval = min(interval * 2, PENDING_POLL_MAX_SECONDS)
        time.sleep(interval)


def _scheduling_problems(jobs: VolcanoJobs, name: str) -> list[str]:
    try:
        return jobs.scheduling_problems(name)
    except Exception as error:  # what explains a wait must not end it
        return [f"(reasons unavailable: {_first_line(error)})"]
