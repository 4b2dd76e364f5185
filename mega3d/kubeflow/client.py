"""The Kubeflow Pipelines API through kfp.Client: submit a compiled pipeline as a run or a recurring run;
list, read, wait for and cancel runs; list, pause, resume and delete recurring runs.

Whatever a user can get wrong or fix (an unreachable host, missing or rejected credentials, an unknown id)
ends as a ClusterError of one line that says so. kfp's own chatter (prints of links, warnings, logged
retries) is kept from the user, who gets mega3d's lines instead. kfp is imported here at the top: the
cluster commands (mega3d.cli.cluster) import this module when they run, so that `mega3d --help` stays quick.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import kfp
import kfp_server_api
import urllib3

# The health check at connection: one attempt, limited in time, instead of kfp's five attempts 5 s apart.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 15.0
SUCCEEDED = "SUCCEEDED"
TERMINAL_STATES = frozenset({SUCCEEDED, "FAILED", "CANCELED", "SKIPPED"})
# KFP cron (robfig/cron): six fields, seconds first.
CRON_FIELDS = (
    ("seconds", 0, 59),
    ("minutes", 0, 59),
    ("hours", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
CRON_NAMES = {
    "month": ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    "day of week": ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}
CRON_ITEM = re.compile(r"(?:[*?]|(?P<first>\w+)(?:-(?P<last>\w+))?)(?:/(?P<step>\d+))?")
# A release as the server's health check reports it (its image's TAG_NAME): 2.17.0, v2.17.0, 2.0.0-rc.2.
RELEASE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.+-]*)?")


class ClusterError(ValueError):
    """A request that Kubeflow Pipelines did not serve, with one line that says why."""


@dataclass(frozen=True)
class Run:
    run_id: str
    name: str
    state: str
    experiment_id: str
    created_at: datetime | None
    finished_at: datetime | None
    error: str  # the server's message for a failed run; empty otherwise


@dataclass(frozen=True)
class RecurringRun:
    recurring_run_id: str
    name: str
    cron: str
    status: str  # ENABLED | DISABLED
    max_concurrency: str
    no_catchup: bool
    created_at: datetime | None


def cron_problem(expression: str) -> str | None:
    """What is wrong with a KFP cron expression, or None: six fields, seconds first, values in range."""
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        return (
            f"{len(fields)} fields; KFP cron has 6, seconds first "
            "(e.g. '0 0 3 * * *' is 03:00 every day, '0 30 2 * * sun' 02:30 on Sundays)"
        )
    for text, (field, low, high) in zip(fields, CRON_FIELDS, strict=True):
        if not all(_cron_item_fits(item, field, low, high) for item in text.split(",")):
            return f"{field} field {text!r}: use *, ?, {low}-{high}, ranges a-b, lists a,b and steps /n"
    return None


def _cron_item_fits(item: str, field: str, low: int, high: int) -> bool:
    match = CRON_ITEM.fullmatch(item)
    if match is None or (match["step"] is not None and int(match["step"]) == 0):
        return False
    values = [_cron_value(match[part], field) for part in ("first", "last") if match[part]]
    bounded = [value for value in values if value is not None and low <= value <= high]
    return len(bounded) == len(values) and bounded == sorted(bounded)


def _cron_value(word: str, field: str) -> int | None:
    if word.isdigit():
        return int(word)
    names = CRON_NAMES.get(field, [])
    if word.lower() not in names:
        return None
    return names.index(word.lower()) + (1 if field == "month" else 0)


def release_of(tag: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a Kubeflow Pipelines release tag, or None for a build that names no release
    ("unknown", the backend image's default; "master"; a commit). A pre-release counts as its release."""
    match = RELEASE.fullmatch(tag.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def in_cluster_credentials() -> kfp.client.ServiceAccountTokenVolumeCredentials | None:
    """The pod's Kubeflow Pipelines service-account token, where one is mounted."""
    path = os.environ.get(kfp.client.KF_PIPELINES_SA_TOKEN_ENV) or kfp.client.KF_PIPELINES_SA_TOKEN_PATH
    return kfp.client.ServiceAccountTokenVolumeCredentials(path) if os.path.isfile(path) else None


class _QuickClient(kfp.Client):
    """kfp.Client whose health check asks once, within a time limit: kfp's own retries five times 5 s apart,
    which turns a wrong host or token into half a minute of waiting. `healthz` keeps the answer as the
    server sent it: kfp's model of it drops the server's version (tag_name, commit_sha)."""

    def __init__(self, **options: Any) -> None:
        self.healthz: dict[str, Any] | None = None  # None: no answer yet, or not Kubeflow Pipelines' JSON
        super().__init__(**options)

    def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
        answer = self._healthz_api.healthz_service_get_healthz(
            _request_timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S), _preload_content=False
        )
        try:
            body = json.loads(answer.data)
        except ValueError:
            body = None
        self.healthz = body if isinstance(body, dict) else None
        multi_user = bool(self.healthz and self.healthz.get("multi_user"))
        return kfp_server_api.V2beta1GetHealthzResponse(multi_user=multi_user)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """kfp prints links to experiments and runs as it creates them; mega3d prints its own."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class Cluster:
    """One Kubeflow Pipelines API endpoint, connected (and its health checked) on construction.

    `token` is a bearer token; without one, the in-cluster service-account token is used where it exists,
    else no credentials. `namespace` is the Kubeflow profile (multi-user deployments)."""

    def __init__(self, host: str, token: str | None = None, namespace: str = "kubeflow") -> None:
        self.host = host.rstrip("/")
        credentials = None if token else in_cluster_credentials()
        if token:
            self._credentials_sent = "the token given"
        elif credentials:
            self._credentials_sent = "the in-cluster token"
        else:
            self._credentials_sent = "requests without a token"
        with self._answers(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # kfp warns about server versions on every client
            self._client = _QuickClient(
                host=self.host, existing_token=token, credentials=credentials, namespace=namespace
            )
            if self._client.get_user_namespace():  # kfp checks health at construction only without one
                self._client.get_kfp_healthz()
        if self._client.healthz is None:  # e.g. the Kubeflow dashboard's HTML page
            raise ClusterError(
                f"{self.host} does not answer as the Kubeflow Pipelines API (its /apis/v2beta1/healthz is "
                "not Kubeflow Pipelines' JSON): give the API endpoint, e.g. https://kubeflow.example.com/pipeline"
            )
        # The release the server reports; "" when it reports none.
        self.server_version = str(self._client.healthz.get("tag_name") or "")

    def run_link(self, run_id: str) -> str:
        return f"{self.host}/#/runs/details/{run_id}"

    def submit(
        self,
        package: str,
        experiment: str,
        run_name: str,
        parameters: dict[str, Any],
        service_account: str | None,
    ) -> Run:
        """Run a compiled pipeline in `experiment` (created when missing), its pods as `service_account`
        (None: the server's default); parameters not given keep their compiled defaults."""
        with self._answers(), _quiet():
            experiment_id = self._client.create_experiment(name=experiment).experiment_id
            created = self._client.run_pipeline(
                experiment_id=experiment_id,
                job_name=run_name,
                pipeline_package_path=package,
                params=parameters,
                service_account=service_account,
            )
        return _run(created)

    def schedule(
        self,
        package: str,
        experiment: str,
        name: str,
        cron: str,
        parameters: dict[str, Any],
        service_account: str | None,
    ) -> RecurringRun:
        """A recurring run of a compiled pipeline in `experiment` (created when missing), its runs' pods as
        `service_account` (None: the server's default): one run at a time, and after a pause only the
        latest missed run, not every one (no catch-up)."""
        problem = cron_problem(cron)
        if problem:
            raise ClusterError(f"cron {cron!r}: {problem}")
        with self._answers(), _quiet():
            experiment_id = self._client.create_experiment(name=experiment).experiment_id
            created = self._client.create_recurring_run(
                experiment_id=experiment_id,
                job_name=name,
                cron_expression=cron,
                # An int64 of the API, which travels as a JSON string (the model's declared type).
                max_concurrency="1",
                no_catchup=True,
                pipeline_package_path=package,
                params=parameters,
                service_account=service_account,
            )
        return _recurring_run(created)

    def experiment_id(self, name: str) -> str:
        with self._answers():
            try:
                return str(self._client.get_experiment(experiment_name=name).experiment_id)
            except ValueError as error:  # kfp: no experiment, or several, of that name
                if str(error).startswith("No experiment is found"):
                    raise ClusterError(f"no experiment named {name!r} at {self.host}") from None
                raise ClusterError(f"{self.host}: {error}") from None

    def runs(self, experiment: str, limit: int) -> list[Run]:
        """The newest runs of an experiment."""
        experiment_id = self.experiment_id(experiment)
        with self._answers():
            found = self._client.list_runs(
                experiment_id=experiment_id, page_size=limit, sort_by="created_at desc"
            )
        return [_run(run) for run in found.runs or []]

    def run(self, run_id: str) -> Run:
        with self._answers(missing=f"run {run_id!r}"):
            return _run(self._client.get_run(run_id))

    def wait(self, run_id: str, timeout_s: float, poll_s: float, on_change: Callable[[Run], None]) -> Run:
        """Read the run every `poll_s` seconds until it ends or `timeout_s` passes; `on_change` sees each new
        state. Returns the last reading, whose state is not terminal when time ran out."""
        deadline = time.monotonic() + timeout_s
        run = self.run(run_id)
        on_change(run)
        while run.state not in TERMINAL_STATES and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(poll_s, left))
            latest = self.run(run_id)
            if latest.state != run.state:
                on_change(latest)
            run = latest
        return run

    def cancel(self, run_id: str) -> None:
        with self._answers(missing=f"run {run_id!r}"):
            self._client.terminate_run(run_id)

    def recurring_runs(self, experiment: str, limit: int) -> list[RecurringRun]:
        experiment_id = self.experiment_id(experiment)
        with self._answers():
            found = self._client.list_recurring_runs(
                experiment_id=experiment_id, page_size=limit, sort_by="created_at desc"
            )
        return [_recurring_run(item) for item in found.recurring_runs or []]

    def pause(self, recurring_run_id: str) -> None:
        with self._answers(missing=f"recurring run {recurring_run_id!r}"):
            self._client.disable_recurring_run(recurring_run_id)

    def resume(self, recurring_run_id: str) -> None:
        with self._answers(missing=f"recurring run {recurring_run_id!r}"):
            self._client.enable_recurring_run(recurring_run_id)

    def delete(self, recurring_run_id: str) -> None:
        with self._answers(missing=f"recurring run {recurring_run_id!r}"):
            self._client.delete_recurring_run(recurring_run_id)

    @contextlib.contextmanager
    def _answers(self, missing: str = "") -> Iterator[None]:
        """Turn what the API and the network raise into a ClusterError of one line; `missing` names what a
        404 means."""
        try:
            yield
        except kfp_server_api.ApiException as error:
            raise ClusterError(self._explain(error, missing)) from None
        except urllib3.exceptions.HTTPError as error:
            raise ClusterError(
                f"cannot reach Kubeflow Pipelines at {self.host}: {_root_cause(error)}"
            ) from None

    def _explain(self, error: kfp_server_api.ApiException, missing: str) -> str:
        status = error.status or 0
        if status in (401, 403):
            return (
                f"{self.host} refused {self._credentials_sent} (HTTP {status} {error.reason}): "
                "give a valid token with --token or $MEGA3D_TOKEN"
            )
        if status == 404 and missing:
            return f"{missing} not found at {self.host}"
        if status == 0:  # no HTTP answer, e.g. a TLS failure
            return f"cannot reach Kubeflow Pipelines at {self.host}: {' '.join(str(error.reason).split())}"
        return f"{self.host}: HTTP {status} {error.reason}: {_server_message(error.body)}"


def _root_cause(error: BaseException) -> str:
    """The innermost cause (e.g. 'Connection refused'), not urllib3's long retry report."""
    cause: BaseException = getattr(error, "reason", None) or error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return " ".join(str(cause).split())


def _server_message(body: Any) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        text = str(answer.get("message") or answer.get("error_message") or text)
    return " ".join(text.split())[:300]


def _run(run: Any) -> Run:
    return Run(
        run_id=str(run.run_id),
        name=str(run.display_name or ""),
        state=str(run.state or "RUNTIME_STATE_UNSPECIFIED"),
        experiment_id=str(run.experiment_id or ""),
        created_at=run.created_at,
        finished_at=run.finished_at,
        error=str(run.error.message or "") if run.error else "",
    )


def _recurring_run(recurring_run: Any) -> RecurringRun:
    cron_schedule = recurring_run.trigger.cron_schedule if recurring_run.trigger else None
    return RecurringRun(
        recurring_run_id=str(recurring_run.recurring_run_id),
        name=str(recurring_run.display_name or ""),
        cron=str(cron_schedule.cron) if cron_schedule else "",
        status=str(recurring_run.status or "STATUS_UNSPECIFIED"),
        max_concurrency=str(recurring_run.max_concurrency or ""),
        no_catchup=bool(recurring_run.no_catchup),
        created_at=recurring_run.created_at,
    )
