"""A fake Kubernetes API server on a loopback port, for the real kubernetes client and TorchX code over HTTP.

It speaks what TorchX's kubernetes scheduler and mega3d's launcher use for a Volcano job: create it (also
as a server-side dry run), list jobs by label, read a job and its status, merge-patch and delete it; read a
pod and its log, list pods by label and Warning events. A created job reports the phases it was given, one
per status read (the last one stays). Its pods exist from the start, as Volcano creates them before they
are scheduled: while the job is Pending each is unscheduled (condition PodScheduled=False, with the
`unschedulable` message and a FailedScheduling event, as Volcano's scheduler records them: volcano
docs/design/scheduling-reason.md) and its log cannot be read yet. `outage()` stops answering (connections
are refused) and then serves again on the same port, as an API server does across a control-plane upgrade.
Every request is recorded.

With a `Kubelet`, a created job's pods run instead: each pod's container command runs as a process on this
machine, with the container's environment and what Volcano's svc and env plugins add to it, and the job is
Running until its processes end, then Completed (all exited 0) or Failed; its pods' logs are what the
processes printed, each line timestamped as the kubelet does (`timestamps=true`). Deleting the job kills
its processes, as deleting pods stops their containers. A pod that fails where its task's policies say
`PodFailed: RestartJob` restarts the job as Volcano's job controller does (volcano-sh/volcano v1.10:
job_controller_util.go applyPolicies takes the task's policies first, the first match wins, none is
SyncJob; state/running.go RestartJobAction kills every pod, sets the phase Restarting and counts
status.retryCount up; state/restarting.go fails the job once retryCount reaches spec.maxRetry, 3 where
the webhook found 0; syncJob then creates the pods again under their names): the next status read says
Restarting, and the pods run again from the start.

As the real API server does (k8s.io/apiserver): created objects get a uid, a resourceVersion that every
write changes, and a creationTimestamp; a JSON merge patch (RFC 7386, what the python client sends for
custom objects) whose metadata.resourceVersion differs from the object's fails with 409 Conflict; label
selectors of the form k=v,k2=v2 match every pair; answers for missing objects are Status objects with 404.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

VOLCANO_JOBS = re.compile(
    r"^/apis/batch\.volcano\.sh/v1alpha1/namespaces/(?P<namespace>[^/]+)/jobs"
    r"(?:/(?P<name>[^/]+)(?P<status>/status)?)?$"
)
POD = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/pods/(?P<name>[^/]+)(?P<log>/log)?$")
PODS = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/pods$")
EVENTS = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/events$")
TOKEN = "fake-token"
# TorchX's kubernetes scheduler points every node's torchrun at rank 0's pod on this port.
RENDEZVOUS_PORT = 29500


class PodProcess:
    """One pod's container, run as a process; its output kept line by line with the time it was read."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its torchrun and workers are killed together
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            now = time.time()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
            self.lines.append(f"{stamp} {line.rstrip()}")

    @property
    def phase(self) -> str:
        """The pod's phase; Running until its output has been read to the end too."""
        code = self.process.poll()
        if code is None or self.reader.is_alive():
            return "Running"
        return "Succeeded" if code == 0 else "Failed"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


class Kubelet:
    """Runs the pods of created jobs on this machine, in `workdir`. The processes see this machine's
    environment (the image's, here: this interpreter's PATH first), the container's variables, and what
    Volcano adds: the svc plugin's `VC_<TASK>_HOSTS` (here every host is this machine), which TorchX's
    kubernetes scheduler points the other nodes' torchrun at (torchx/schedulers/kubernetes_scheduler.py:
    `rank0_env=f"VC_{role}_0_HOSTS"`; rank 0 itself gets TORCHX_RANK0_HOST=localhost), and the env
    plugin's task index (`VK_TASK_INDEX` and `VC_TASK_INDEX`, the same value: volcano's env plugin user
    guide). On a cluster every pod has an address of its own, so that every job's torchrun may use
    TorchX's default rendezvous port 29500 (torchx/components/dist.py); on one machine each job gets a
    free port in its place. A container's log lines carry the kubelet's RFC 3339 timestamps with
    nanoseconds, as `timestamps=true` asks of the real one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def start(self, job: Job) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        tasks = job.resource["spec"]["tasks"]
        hosts = {f"VC_{task['name'].upper().replace('-', '_')}_HOSTS": "127.0.0.1" for task in tasks}
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        for index, pod in enumerate(job.pods()):
            (container,) = pod["spec"]["containers"]
            env = {**os.environ, "PATH": path, **hosts, "VC_TASK_INDEX": "0", "VK_TASK_INDEX": "0"}
            for variable in container.get("env", []):
                env[variable["name"]] = _resolve(variable, pod, node=f"fake-node-{index}")
            command = [
                part.replace(f":{RENDEZVOUS_PORT} ", f":{port} ")
                for part in [*container.get("command", []), *container.get("args", [])]
            ]
            job.processes[pod["metadata"]["name"]] = PodProcess(command, env, self.workdir)


def _resolve(variable: dict[str, Any], pod: dict[str, Any], node: str) -> str:
    """A container variable's value; the downward API's fields as the kubelet fills them in."""
    if "value" in variable:
        return str(variable["value"])
    fields = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"].get("namespace", ""),
        "spec.nodeName": node,
        "status.podIP": "127.0.0.1",
    }
    return fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    authorization: str | None
    time: float = field(default_factory=time.monotonic)


@dataclass
class Job:
    resource: dict[str, Any]
    phases: Sequence[str]
    reason: str = ""
    message: str = ""
    unschedulable: str = ""
    status_reads: int = 0
    log_reads: dict[str, int] = field(default_factory=dict)
    processes: dict[str, PodProcess] = field(default_factory=dict)  # by pod name, with a Kubelet
    kubelet: Kubelet | None = None
    retry_count: int = 0
    restarting: bool = False  # restarted since the last status read
    failed: bool = False  # out of restarts

    @property
    def phase(self) -> str:
        if self.failed:
            return "Failed"
        if self.restarting:
            return "Restarting"
        if self.processes:
            phases = {process.phase for process in self.processes.values()}
            return "Running" if "Running" in phases else "Failed" if "Failed" in phases else "Completed"
        return self.phases[min(self.status_reads, len(self.phases)) - 1] if self.status_reads else "Pending"

    def restart_on_failure(self) -> None:
        """What Volcano's job controller does when a pod of a running job has failed (see the module)."""
        by_pod = {
            f"{self.resource['metadata']['name']}-{t['name']}-0": t for t in self.resource["spec"]["tasks"]
        }
        failed = [name for name, process in self.processes.items() if process.phase == "Failed"]
        if self.failed or not failed:
            return
        policies = by_pod[failed[0]].get("policies", []) + self.resource["spec"].get("policies", [])
        action = next((p["action"] for p in policies if p.get("event") in ("PodFailed", "*")), None)
        if action != "RestartJob" or self.kubelet is None:
            return  # SyncJob: a failed pod stays failed
        for process in self.processes.values():
            process.kill()
        self.retry_count += 1
        if self.retry_count >= (self.resource["spec"].get("maxRetry") or 3):
            self.failed = True
            return
        self.restarting = True
        self.kubelet.start(self)

    def with_status(self) -> dict[str, Any]:
        self.restart_on_failure()
        phase = self.phase
        self.restarting = False
        task_phase = {"Pending": "Pending", "Completed": "Succeeded", "Failed": "Failed"}.get(
            phase, "Running"
        )
        state = {"phase": phase, "reason": self.reason, "message": self.message}
        tasks = {task["name"]: {"phase": {task_phase: 1}} for task in self.resource["spec"]["tasks"]}
        status = {"state": state, "taskStatusCount": tasks, "retryCount": self.retry_count}
        return {**self.resource, "status": status}

    def pods(self) -> list[dict[str, Any]]:
        """The pods Volcano names `{job}-{task}-0`: unscheduled while the job is Pending."""
        job = self.resource["metadata"]["name"]
        made = []
        for index, task in enumerate(self.resource["spec"]["tasks"]):
            metadata = {**task["template"]["metadata"], "name": f"{job}-{task['name']}-0"}
            if self.phase == "Pending":
                condition = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": self.unschedulable,
                }
                status: dict[str, Any] = {"phase": "Pending", "conditions": [condition]}
            else:
                running = self.processes.get(metadata["name"])
                phase = running.phase if running is not None else "Running"
                status = {"phase": phase, "podIP": f"10.0.0.{index + 1}"}
            made.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": metadata,
                    "spec": task["template"]["spec"],
                    "status": status,
                }
            )
        return made

    def pod(self, pod_name: str) -> dict[str, Any] | None:
        return next((pod for pod in self.pods() if pod["metadata"]["name"] == pod_name), None)

    def events(self) -> list[dict[str, Any]]:
        """The Warning events of its unscheduled pods."""
        if self.phase != "Pending" or not self.unschedulable:
            return []
        return [
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{pod['metadata']['name']}.1", "namespace": self.namespace},
                "involvedObject": {
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "namespace": self.namespace,
                },
                "type": "Warning",
                "reason": "FailedScheduling",
                "message": self.unschedulable,
            }
            for pod in self.pods()
        ]

    @property
    def namespace(self) -> str:
        return str(self.resource["metadata"]["namespace"])


class FakeKubernetes:
    """Serves inside its `with` block. `log_lines(pod, read, phase)`: a pod's log at its read-th reading."""

    def __init__(
        self,
        phases: Sequence[str],
        log_lines: Callable[[str, int, str], list[str]] = lambda pod, read, phase: [],
        reason: str = "",
        message: str = "",
        unschedulable: str = "",
        kubelet: Kubelet | None = None,
    ) -> None:
        self.phases, self.log_lines, self.reason, self.message = phases, log_lines, reason, message
        self.unschedulable, self.kubelet = unschedulable, kubelet
        self.jobs: dict[tuple[str, str], Job] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.versions = itertools.count(1)
        self.server = self._serve_on(0)
        self.port = int(self.server.server_address[1])

    def _serve_on(self, port: int) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeKubernetes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        for job in self.jobs.values():
            for process in job.processes.values():
                process.kill()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """No API server inside the block: connections to its port are refused."""
        self.server.shutdown()
        self.server.server_close()
        try:
            yield
        finally:
            self.server = self._serve_on(self.port)

    def write_kubeconfig(self, path: Path, namespace: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
            ],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def recorded(self, method: str, pattern: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def wait_until(self, condition: Callable[[], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fake API server did not see it within {timeout} s")
            time.sleep(0.05)

    def created_job(self) -> Job:
        with self.lock:
            (job,) = self.jobs.values()
            return job

    def _handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        """The status code and the JSON (or, for a log, the text) of an answer."""
        if match := VOLCANO_JOBS.match(path):
            namespace, name = match["namespace"], match["name"]
            if method == "POST" and name is None:
                metadata = {
                    **body["metadata"],
                    "namespace": namespace,
                    "uid": f"uid-{next(self.versions)}",
                    "resourceVersion": str(next(self.versions)),
                    "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                resource = {**body, "metadata": metadata}
                if "dryRun" not in query:
                    key = (namespace, resource["metadata"]["name"])
                    job = Job(resource, self.phases, self.reason, self.message, self.unschedulable)
                    job.kubelet = self.kubelet
                    self.jobs[key] = job
                    if self.kubelet is not None:
                        self.kubelet.start(job)
                return 201, resource
            if method == "GET" and name is None:
                wanted = _selector(query)
                items = [
                    job.with_status()
                    for (where, _), job in self.jobs.items()
                    if where == namespace and _matches(job.resource["metadata"].get("labels", {}), wanted)
                ]
                return 200, {"apiVersion": "batch.volcano.sh/v1alpha1", "kind": "JobList", "items": items}
            job = self.jobs.get((namespace, name))
            if job is None:
                return 404, _status(404, "NotFound", f'jobs.batch.volcano.sh "{name}" not found')
            if method == "GET":
                if match["status"]:
                    job.status_reads += 1
                return 200, job.with_status()
            if method == "PATCH":
                current = job.resource["metadata"]["resourceVersion"]
                given = (body.get("metadata") or {}).get("resourceVersion")
                if given is not None and given != current:
                    message = f'Operation cannot be fulfilled on jobs.batch.volcano.sh "{name}": modified'
                    return 409, _status(409, "Conflict", message)
                job.resource = _merge_patch(job.resource, body)
                job.resource["metadata"]["resourceVersion"] = str(next(self.versions))
                return 200, job.with_status()
            if method == "DELETE":
                for process in job.processes.values():
                    process.kill()
                del self.jobs[(namespace, name)]
                return 200, _status(200, "", "")
        elif (match := POD.match(path)) and method == "GET":
            name = match["name"]
            found = [
                (job, pod)
                for (namespace, _), job in self.jobs.items()
                if namespace == match["namespace"] and (pod := job.pod(name)) is not None
            ]
            if not found:
                return 404, _status(404, "NotFound", f'pods "{name}" not found')
            ((job, pod),) = found
            if not match["log"]:
                return 200, pod
            if job.phase == "Pending":  # what the kubelet-less API server says of an unscheduled pod's log
                container = pod["spec"]["containers"][0]["name"]
                message = f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
                return 400, _status(400, "BadRequest", message)
            read = job.log_reads[name] = job.log_reads.get(name, 0) + 1
            running = job.processes.get(name)
            lines = list(running.lines) if running is not None else self.log_lines(name, read, job.phase)
            return 200, "".join(f"{line}\n" for line in lines)
        elif (match := PODS.match(path)) and method == "GET":
            wanted = _selector(query)
            pods = [
                pod
                for job in self.jobs.values()
                if job.namespace == match["namespace"]
                for pod in job.pods()
                if _matches(pod["metadata"].get("labels", {}), wanted)
            ]
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}
        elif (match := EVENTS.match(path)) and method == "GET":
            fields = dict(
                pair.split("=", 1) for pair in query.get("fieldSelector", [""])[0].split(",") if pair
            )
            events = [
                event
                for job in self.jobs.values()
                if job.namespace == match["namespace"]
                for event in job.events()
                if all(event.get(key) == value for key, value in fields.items())
            ]
            return 200, {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": events}
        return 404, _status(404, "NotFound", f"no route {method} {path}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                query = parse_qs(url.query)
                with fake.lock:
                    request = Request(self.command, url.path, query, body, self.headers.get("Authorization"))
                    fake.requests.append(request)
                    code, answer = fake._handle(self.command, url.path, query, body)
                text = answer if isinstance(answer, str) else json.dumps(answer)
                self.send_response(code)
                self.send_header(
                    "Content-Type", "text/plain" if isinstance(answer, str) else "application/json"
                )
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the recorded requests say more

        return Handler


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    outcome = "Success" if code < 400 else "Failure"
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": outcome,
        "code": code,
        "reason": reason,
        "message": message,
    }


def _selector(query: dict[str, list[str]]) -> dict[str, str]:
    text = query.get("labelSelector", [""])[0]
    return dict(pair.split("=", 1) for pair in text.split(",") if pair)


def _matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in wanted.items())


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes a key, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged
