"""A fake Kubernetes API server on a loopback port, for the real kubernetes client and TorchX code over HTTP.

It speaks only what TorchX's kubernetes scheduler uses for a Volcano job: create it (also as a server-side
dry run), read it and its status, delete it; read a pod and its log. A created job reports the phases it
was given, one per status read (the last one stays), and has pods, each with a log, once it is no longer
Pending. Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
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
TOKEN = "fake-token"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    authorization: str | None


@dataclass
class Job:
    resource: dict[str, Any]
    phases: Sequence[str]
    reason: str = ""
    message: str = ""
    status_reads: int = 0
    log_reads: dict[str, int] = field(default_factory=dict)

    @property
    def phase(self) -> str:
        return self.phases[min(self.status_reads, len(self.phases)) - 1] if self.status_reads else "Pending"

    def with_status(self) -> dict[str, Any]:
        task_phase = {"Pending": "Pending", "Completed": "Succeeded", "Failed": "Failed"}.get(
            self.phase, "Running"
        )
        state = {"phase": self.phase, "reason": self.reason, "message": self.message}
        tasks = {task["name"]: {"phase": {task_phase: 1}} for task in self.resource["spec"]["tasks"]}
        return {**self.resource, "status": {"state": state, "taskStatusCount": tasks}}

    def pod(self, pod_name: str) -> dict[str, Any] | None:
        """The pod Volcano names `{job}-{task}-0`, once the job has left Pending."""
        job = self.resource["metadata"]["name"]
        for index, task in enumerate(self.resource["spec"]["tasks"]):
            if pod_name == f"{job}-{task['name']}-0" and self.phase != "Pending":
                metadata = {**task["template"]["metadata"], "name": pod_name}
                status = {"phase": "Running", "podIP": f"10.0.0.{index + 1}"}
                return {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": metadata,
                    "spec": task["template"]["spec"],
                    "status": status,
                }
        return None


class FakeKubernetes:
    """Serves inside its `with` block. `log_lines(pod, read, phase)`: a pod's log at its read-th reading."""

    def __init__(
        self,
        phases: Sequence[str],
        log_lines: Callable[[str, int, str], list[str]] = lambda pod, read, phase: [],
        reason: str = "",
        message: str = "",
    ) -> None:
        self.phases, self.log_lines, self.reason, self.message = phases, log_lines, reason, message
        self.jobs: dict[tuple[str, str], Job] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeKubernetes:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

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
                resource = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
                if "dryRun" not in query:
                    key = (namespace, resource["metadata"]["name"])
                    self.jobs[key] = Job(resource, self.phases, self.reason, self.message)
                return 201, resource
            job = self.jobs.get((namespace, name))
            if job is None:
                return 404, _status(404, "NotFound", f'jobs.batch.volcano.sh "{name}" not found')
            if method == "GET":
                if match["status"]:
                    job.status_reads += 1
                return 200, job.with_status()
            if method == "DELETE":
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
            read = job.log_reads[name] = job.log_reads.get(name, 0) + 1
            return 200, "".join(f"{line}\n" for line in self.log_lines(name, read, job.phase))
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

            do_GET = do_POST = do_DELETE = _serve

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
