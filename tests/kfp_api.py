"""A small Kubeflow Pipelines API server on a loopback port, for the real kfp.Client to talk to over HTTP.

It speaks the `/apis/v2beta1` routes and JSON of kfp 2.17 (`kfp_server_api/api/*.py` and `models/*.py`):
healthz (with the server's release, `tag_name`, as the backend's healthzResponse in
backend/src/apiserver/main.go has it, though kfp's model of the answer leaves it out); experiments (create,
list by display name, get); runs (create, list, get, terminate); recurring runs (create, list, get, enable,
disable, delete). Every request is recorded (method, path, query, JSON body, headers with lower-case names)
so that tests can assert what the client sent. It can demand a bearer token, answering 401 (or another
status) without it, report another release, and a run can be given the states that successive reads of it
report.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

PREFIX = "/apis/v2beta1"
CREATED_AT = "2026-11-24T02:37:46Z"
NOT_FOUND_CODE = 5  # google.rpc.Code NOT_FOUND, as the real server's error bodies carry it
UNAUTHENTICATED_CODE = 16
# What a released 2.17.0 server reports; a self-built one reports "unknown" (its image's default TAG_NAME).
TAG_NAME = "2.17.0"
COMMIT_SHA = "0f3c1d2e4b5a69788a7b6c5d4e3f2a1b0c9d8e7f"

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class KfpApi:
    """The server's state; `url` is the `--host` to give the client."""

    def __init__(
        self, token: str | None = None, auth_failure_status: int = 401, tag_name: str = TAG_NAME
    ) -> None:
        self.token = token
        self.auth_failure_status = auth_failure_status
        self.tag_name = tag_name
        self.requests: list[Request] = []
        self.experiments: dict[str, JsonObject] = {}
        self.runs: dict[str, JsonObject] = {}
        self.recurring_runs: dict[str, JsonObject] = {}
        # States a run reports on successive reads; the last one stays.
        self.run_states: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.url = ""

    def posts(self) -> list[Request]:
        """Requests that would change something on a real server."""
        return [r for r in self.requests if r.method in ("POST", "DELETE")]

    def add_experiment(self, display_name: str) -> str:
        experiment_id = str(uuid.uuid4())
        self.experiments[experiment_id] = {
            "experiment_id": experiment_id,
            "display_name": display_name,
            "created_at": CREATED_AT,
            "storage_state": "AVAILABLE",
        }
        return experiment_id

    def add_run(self, display_name: str, states: list[str], experiment_id: str = "") -> str:
        """A run as if submitted earlier, whose reads report `states` one after another."""
        run_id = str(uuid.uuid4())
        self.runs[run_id] = {
            "run_id": run_id,
            "display_name": display_name,
            "experiment_id": experiment_id,
            "created_at": CREATED_AT,
            "state": states[0],
        }
        self.run_states[run_id] = list(states)
        return run_id

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> JsonObject:
        for pattern, route_method, action in self._routes():
            match = re.fullmatch(pattern, path)
            if match and method == route_method:
                return action(*match.groups(), query=query, body=body)
        raise ApiError(404, NOT_FOUND_CODE, f"no route {method} {path}")

    def _routes(self) -> list[tuple[str, str, Callable[..., JsonObject]]]:
        one = r"([^/:]+)"
        return [
            (f"{PREFIX}/healthz", "GET", self._healthz),
            (f"{PREFIX}/experiments", "POST", self._create_experiment),
            (f"{PREFIX}/experiments", "GET", self._list_experiments),
            (f"{PREFIX}/experiments/{one}", "GET", self._get_experiment),
            (f"{PREFIX}/runs", "POST", self._create_run),
            (f"{PREFIX}/runs", "GET", self._list_runs),
            (f"{PREFIX}/runs/{one}", "GET", self._get_run),
            (f"{PREFIX}/runs/{one}:terminate", "POST", self._terminate_run),
            (f"{PREFIX}/recurringruns", "POST", self._create_recurring_run),
            (f"{PREFIX}/recurringruns", "GET", self._list_recurring_runs),
            (f"{PREFIX}/recurringruns/{one}", "GET", self._get_recurring_run),
            (f"{PREFIX}/recurringruns/{one}:enable", "POST", self._set_mode("ENABLE")),
            (f"{PREFIX}/recurringruns/{one}:disable", "POST", self._set_mode("DISABLE")),
            (f"{PREFIX}/recurringruns/{one}", "DELETE", self._delete_recurring_run),
        ]

    def _healthz(self, **_: Any) -> JsonObject:
        return {
            "commit_sha": COMMIT_SHA,
            "tag_name": self.tag_name,
            "multi_user": False,
            "pipeline_store": "database",
        }

    def _create_experiment(self, body: JsonObject, **_: Any) -> JsonObject:
        return self.experiments[self.add_experiment(body["display_name"])]

    def _list_experiments(self, query: dict[str, str], **_: Any) -> JsonObject:
        wanted = [
            p["stringValue"]
            for p in json.loads(query.get("filter") or '{"predicates": []}')["predicates"]
            if p["key"] == "display_name"
        ]
        found = [e for e in self.experiments.values() if not wanted or e["display_name"] in wanted]
        # Like the real server (protobuf JSON), empty lists and zero counts are left out.
        return {"experiments": found, "total_size": len(found)} if found else {}

    def _get_experiment(self, experiment_id: str, **_: Any) -> JsonObject:
        return self._find(self.experiments, experiment_id, "experiment")

    def _create_run(self, body: JsonObject, **_: Any) -> JsonObject:
        run_id = str(uuid.uuid4())
        self.runs[run_id] = {**body, "run_id": run_id, "created_at": CREATED_AT, "state": "PENDING"}
        return self.runs[run_id]

    def _list_runs(self, query: dict[str, str], **_: Any) -> JsonObject:
        experiment_id = query.get("experiment_id")
        found = [r for r in self.runs.values() if experiment_id in (None, r.get("experiment_id"))]
        return {"runs": found, "total_size": len(found)} if found else {}

    def _get_run(self, run_id: str, **_: Any) -> JsonObject:
        run = self._find(self.runs, run_id, "run")
        states = self.run_states.get(run_id, [])
        if states:
            run["state"] = states.pop(0) if len(states) > 1 else states[0]
            if run["state"] == "FAILED":
                run["error"] = {"code": 2, "message": "step finetune motion-c failed"}
        return run

    def _terminate_run(self, run_id: str, **_: Any) -> JsonObject:
        run = self._find(self.runs, run_id, "run")
        run["state"] = "CANCELING"
        self.run_states[run_id] = ["CANCELING", "CANCELED"]
        return {}

    def _create_recurring_run(self, body: JsonObject, **_: Any) -> JsonObject:
        recurring_run_id = str(uuid.uuid4())
        status = "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED"
        self.recurring_runs[recurring_run_id] = {
            **body,
            "recurring_run_id": recurring_run_id,
            "created_at": CREATED_AT,
            "updated_at": CREATED_AT,
            "status": status,
        }
        return self.recurring_runs[recurring_run_id]

    def _list_recurring_runs(self, query: dict[str, str], **_: Any) -> JsonObject:
        experiment_id = query.get("experiment_id")
        found = [r for r in self.recurring_runs.values() if experiment_id in (None, r.get("experiment_id"))]
        # The one camelCase key of these responses (V2beta1ListRecurringRunsResponse.attribute_map).
        return {"recurringRuns": found, "total_size": len(found)} if found else {}

    def _get_recurring_run(self, recurring_run_id: str, **_: Any) -> JsonObject:
        return self._find(self.recurring_runs, recurring_run_id, "recurring run")

    def _set_mode(self, mode: str) -> Callable[..., JsonObject]:
        def set_mode(recurring_run_id: str, **_: Any) -> JsonObject:
            recurring_run = self._find(self.recurring_runs, recurring_run_id, "recurring run")
            recurring_run["mode"] = mode
            recurring_run["status"] = "ENABLED" if mode == "ENABLE" else "DISABLED"
            return {}

        return set_mode

    def _delete_recurring_run(self, recurring_run_id: str, **_: Any) -> JsonObject:
        self._find(self.recurring_runs, recurring_run_id, "recurring run")
        del self.recurring_runs[recurring_run_id]
        return {}

    @staticmethod
    def _find(table: dict[str, JsonObject], key: str, kind: str) -> JsonObject:
        if key not in table:
            raise ApiError(404, NOT_FOUND_CODE, f"{kind} {key} not found")
        return table[key]


def _handler(api: KfpApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=url.path,
                query=dict(parse_qsl(url.query, keep_blank_values=True)),
                body=json.loads(raw) if raw else None,
                headers={name.lower(): value for name, value in self.headers.items()},
            )
            with api.lock:
                api.requests.append(request)
                try:
                    if (
                        api.token is not None
                        and request.headers.get("authorization") != f"Bearer {api.token}"
                    ):
                        raise ApiError(api.auth_failure_status, UNAUTHENTICATED_CODE, "Unauthenticated")
                    status, answer = (
                        200,
                        api.handle(request.method, request.path, request.query, request.body),
                    )
                except ApiError as error:
                    status, answer = error.status, {"code": error.code, "message": error.message}
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read `api.requests` instead."""

    return Handler


@contextmanager
def kfp_api(
    token: str | None = None, auth_failure_status: int = 401, tag_name: str = TAG_NAME
) -> Iterator[KfpApi]:
    api = KfpApi(token, auth_failure_status, tag_name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# What the backend does with a run it was given: execute its IR with the run's parameters, each task through
# its driver and launcher (kubeflow/pipelines backend/src/v2/cmd/driver/main.go and cmd/launcher-v2/main.go,
# which resolve the task's inputs, run the component's command and record its outputs). kfp.local does the
# same steps in one process here; a retried run is the same IR executed again with the same run id.
RUN_AS_THE_BACKEND = """
import json, sys
from kfp import local
from kfp.components import load_component_from_file
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[2], raise_on_error=True)
load_component_from_file(sys.argv[1])(**json.loads(sys.argv[3]))
"""


def run_as_the_backend(
    body: JsonObject, arguments: JsonObject, work: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run what a run or recurring run was created with (its `pipeline_spec`) with these parameters, as the
    backend would, in `work`; what it printed comes back."""
    document: JsonObject = body["pipeline_spec"]
    package = work / "pipeline.yaml"
    package.write_text(yaml.safe_dump_all([document["pipeline_spec"], document["platform_spec"]]))
    command = [
        sys.executable,
        "-c",
        RUN_AS_THE_BACKEND,
        str(package),
        str(work / "kfp"),
        json.dumps(arguments),
    ]
    return subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, timeout=600)
