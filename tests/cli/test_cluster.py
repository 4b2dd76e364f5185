"""`mega3d submit`, `runs` and `schedule` through the real kfp.Client, over HTTP, against tests/kfp_api.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from mega3d.cli.main import app
from tests.conftest import QUICKSTART
from tests.kfp_api import PREFIX, KfpApi, kfp_api

TOKEN = "t0ken-that-must-stay-out-of-pipelines"
BUCKET = "gs://team-videos/mega3d"
EXPERIMENT = "retraining"
CRON = "0 0 3 * * *"


@pytest.fixture(autouse=True)
def no_machine_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing from the machine running the tests: no settings file, $MEGA3D_*, or in-cluster token."""
    for name in [name for name in os.environ if name.startswith("MEGA3D_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token-here"))


@pytest.fixture
def api() -> Iterator[KfpApi]:
    with kfp_api(token=TOKEN) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(f"bucket: {BUCKET}\nexperiment: {EXPERIMENT}\n")
    return path


def mega3d(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args], env=env)


def connection(api: KfpApi, settings: Path) -> list[str]:
    return ["--host", api.url, "--token", TOKEN, "--settings", str(settings)]


def experiment_named(api: KfpApi, name: str) -> str:
    [experiment_id] = [key for key, value in api.experiments.items() if value["display_name"] == name]
    return experiment_id


def parameter_defaults(pipeline_spec: dict[str, Any]) -> dict[str, Any]:
    parameters = pipeline_spec["root"]["inputDefinitions"]["parameters"]
    return {name: parameter.get("defaultValue") for name, parameter in parameters.items()}


def pipeline_spec_of(body: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = body["pipeline_spec"]
    # With Kubernetes settings (kfp-kubernetes), kfp sends {pipeline_spec, platform_spec}.
    return document.get("pipeline_spec", document)


def assert_quickstart_pipeline_on_the_bucket(body: dict[str, Any]) -> None:
    """The compiled quickstart, its storage replaced by the settings' bucket, and no credential in it."""
    pipeline_spec = pipeline_spec_of(body)
    assert pipeline_spec["pipelineInfo"]["name"] == "mega3d-quickstart"
    defaults = parameter_defaults(pipeline_spec)
    spec = json.loads(defaults["spec_json"])
    assert spec["name"] == "quickstart" and spec["storage"] == BUCKET
    assert json.loads(defaults["cluster_json"])["bucket"] == BUCKET
    assert defaults["run_id"] == "" and defaults["scheduler"] == "kubernetes"
    assert TOKEN not in json.dumps(body)


def test_submit_sends_the_compiled_pipeline_to_the_experiment(api: KfpApi, settings: Path) -> None:
    result = mega3d("submit", QUICKSTART, *connection(api, settings))

    assert result.exit_code == 0, result.output
    [created] = [r for r in api.posts() if r.path == f"{PREFIX}/runs"]
    assert created.body["experiment_id"] == experiment_named(api, EXPERIMENT)
    assert created.body["runtime_config"]["parameters"] == {}  # compiled defaults throughout
    assert created.body["service_account"] == "mega3d-launcher"  # k8s/base's, not the profile's default
    assert_quickstart_pipeline_on_the_bucket(created.body)
    [run_id] = api.runs
    assert f"run id: {run_id}" in result.stdout
    assert f"{api.url}/#/runs/details/{run_id}" in result.stdout
    assert {r.headers.get("authorization") for r in api.requests} == {f"Bearer {TOKEN}"}


def test_submit_takes_host_and_token_from_the_environment_and_reuses_the_experiment(
    api: KfpApi, settings: Path
) -> None:
    experiment_id = api.add_experiment("nightly")
    environment = {"MEGA3D_HOST": api.url, "MEGA3D_TOKEN": TOKEN}
    result = mega3d(
        "submit",
        QUICKSTART,
        "--settings",
        settings,
        "--experiment",
        "nightly",
        "--skip-if-trained",
        env=environment,
    )

    assert result.exit_code == 0, result.output
    [created] = api.posts()  # the run only: the experiment existed
    assert created.path == f"{PREFIX}/runs" and created.body["experiment_id"] == experiment_id
    assert created.body["runtime_config"]["parameters"] == {"skip_if_trained": True}
    assert created.headers["authorization"] == f"Bearer {TOKEN}"


def test_submit_files_the_run_under_the_namespace(api: KfpApi, settings: Path) -> None:
    result = mega3d("submit", QUICKSTART, "--namespace", "team-video", *connection(api, settings))

    assert result.exit_code == 0, result.output
    assert api.requests[0].path == f"{PREFIX}/healthz"  # kfp skips it with a namespace; mega3d does not
    [experiment, run] = api.posts()
    assert experiment.body == {"display_name": EXPERIMENT, "namespace": "team-video"}
    defaults = parameter_defaults(pipeline_spec_of(run.body))
    assert json.loads(defaults["cluster_json"])["namespace"] == "team-video"


def test_the_in_cluster_token_is_sent_when_no_token_is_given(
    api: KfpApi, settings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    run_id = api.add_run("quickstart", ["RUNNING"], api.add_experiment(EXPERIMENT))

    result = mega3d("runs", "list", "--host", api.url, "--settings", settings)

    assert result.exit_code == 0, result.output
    assert run_id in result.stdout
    assert {r.headers.get("authorization") for r in api.requests} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize("command", [["schedule"], ["schedule", "create"]], ids=["short", "create"])
def test_schedule_creates_a_recurring_run(api: KfpApi, settings: Path, command: list[str]) -> None:
    result = mega3d(*command, QUICKSTART, "--cron", CRON, "--name", "nightly", *connection(api, settings))

    assert result.exit_code == 0, result.output
    [created] = [r for r in api.posts() if r.path == f"{PREFIX}/recurringruns"]
    body = created.body
    assert body["trigger"] == {"cron_schedule": {"cron": CRON}}
    assert body["no_catchup"] is True and body["max_concurrency"] == "1" and body["mode"] == "ENABLE"
    assert body["display_name"] == "nightly"
    assert body["experiment_id"] == experiment_named(api, EXPERIMENT)
    assert body["runtime_config"]["parameters"] == {"skip_if_trained": True}
    assert body["service_account"] == "mega3d-launcher"
    assert_quickstart_pipeline_on_the_bucket(body)
    assert created.headers["authorization"] == f"Bearer {TOKEN}"
    [recurring_run_id] = api.recurring_runs
    assert f"recurring run id: {recurring_run_id}" in result.stdout


@pytest.mark.parametrize(
    ("setting", "environment", "sent"),
    [
        ("run_service_account: null\n", {}, None),
        ("", {"MEGA3D_RUN_SERVICE_ACCOUNT": "team-runner"}, "team-runner"),
    ],
    ids=["server default", "from the environment"],
)
def test_runs_execute_as_the_settings_run_service_account(
    api: KfpApi, tmp_path: Path, setting: str, environment: dict[str, str], sent: str | None
) -> None:
    settings = settings_file(tmp_path, f"bucket: {BUCKET}\n{setting}")
    options = connection(api, settings)
    submitted = mega3d("submit", QUICKSTART, *options, env=environment)
    scheduled = mega3d("schedule", QUICKSTART, "--cron", CRON, *options, env=environment)

    assert submitted.exit_code == 0, submitted.output
    assert scheduled.exit_code == 0, scheduled.output
    bodies = [r.body for r in api.posts() if r.path in (f"{PREFIX}/runs", f"{PREFIX}/recurringruns")]
    assert len(bodies) == 2
    assert [body.get("service_account") for body in bodies] == [sent, sent]


def test_schedule_takes_a_mistyped_subcommand_for_one(api: KfpApi, settings: Path) -> None:
    result = mega3d("schedule", "lst", *connection(api, settings))

    assert result.exit_code == 2
    assert "No such command 'lst'. Did you mean 'list'?" in result.output
    assert api.requests == []


def test_schedule_always_train_keeps_the_compiled_default(api: KfpApi, settings: Path) -> None:
    result = mega3d("schedule", QUICKSTART, "--cron", CRON, "--always-train", *connection(api, settings))

    assert result.exit_code == 0, result.output
    [created] = [r for r in api.posts() if r.path == f"{PREFIX}/recurringruns"]
    assert created.body["runtime_config"]["parameters"] == {}
    assert created.body["display_name"] == "quickstart"


def test_schedule_list_pause_resume_delete(api: KfpApi, settings: Path) -> None:
    options = connection(api, settings)
    assert mega3d("schedule", QUICKSTART, "--cron", CRON, *options).exit_code == 0
    [recurring_run_id] = api.recurring_runs

    listed = mega3d("schedule", "list", *options)
    assert listed.exit_code == 0, listed.output
    assert recurring_run_id in listed.stdout and CRON in listed.stdout and "ENABLED" in listed.stdout

    paused = mega3d("schedule", "pause", recurring_run_id, *options)
    assert paused.exit_code == 0, paused.output
    assert api.posts()[-1].path == f"{PREFIX}/recurringruns/{recurring_run_id}:disable"
    assert api.recurring_runs[recurring_run_id]["status"] == "DISABLED"
    assert "DISABLED" in mega3d("schedule", "list", *options).stdout

    resumed = mega3d("schedule", "resume", recurring_run_id, *options)
    assert resumed.exit_code == 0, resumed.output
    assert api.recurring_runs[recurring_run_id]["status"] == "ENABLED"

    deleted = mega3d("schedule", "delete", recurring_run_id, *options)
    assert deleted.exit_code == 0, deleted.output
    assert (api.posts()[-1].method, api.posts()[-1].path) == (
        "DELETE",
        f"{PREFIX}/recurringruns/{recurring_run_id}",
    )
    assert api.recurring_runs == {}
    assert "no recurring runs" in mega3d("schedule", "list", *options).stdout


def test_runs_list_status_and_cancel(api: KfpApi, settings: Path) -> None:
    options = connection(api, settings)
    experiment_id = api.add_experiment(EXPERIMENT)
    finished = api.add_run("quickstart one", ["SUCCEEDED"], experiment_id)
    running = api.add_run("quickstart two", ["RUNNING"], experiment_id)
    elsewhere = api.add_run("another", ["RUNNING"], api.add_experiment("other"))

    listed = mega3d("runs", "list", *options)
    assert listed.exit_code == 0, listed.output
    assert finished in listed.stdout and running in listed.stdout and elsewhere not in listed.stdout
    assert "SUCCEEDED" in listed.stdout and "RUNNING" in listed.stdout

    status = mega3d("runs", "status", running, *options)
    assert status.exit_code == 0, status.output
    assert f"run {running} (quickstart two): RUNNING" in status.stdout
    assert f"{api.url}/#/runs/details/{running}" in status.stdout

    cancelled = mega3d("runs", "cancel", running, *options)
    assert cancelled.exit_code == 0, cancelled.output
    assert [r.path for r in api.posts()] == [f"{PREFIX}/runs/{running}:terminate"]
    assert api.runs[running]["state"] == "CANCELING"


@pytest.mark.parametrize(
    ("states", "exit_code"),
    [
        (["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"], 0),
        (["RUNNING", "FAILED"], 1),
        (["RUNNING", "CANCELING", "CANCELED"], 1),
    ],
    ids=["succeeded", "failed", "canceled"],
)
def test_wait_prints_each_state_and_exits_by_the_outcome(
    api: KfpApi, settings: Path, states: list[str], exit_code: int
) -> None:
    run_id = api.add_run("quickstart", states)

    result = mega3d("runs", "wait", run_id, "--poll", "0.01", *connection(api, settings))

    assert result.exit_code == exit_code, result.output
    printed = [line.split(f"run {run_id}: ")[1] for line in result.stdout.splitlines()]
    assert printed == list(dict.fromkeys(states))
    if exit_code:
        [line] = result.stderr.strip().splitlines()
        assert f"run {run_id} {states[-1]}" in line
    if states[-1] == "FAILED":
        assert "step finetune motion-c failed" in result.stderr


def test_wait_gives_up_at_the_timeout(api: KfpApi, settings: Path) -> None:
    run_id = api.add_run("quickstart", ["RUNNING"])

    result = mega3d("runs", "wait", run_id, "--timeout", "0.2", "--poll", "0.05", *connection(api, settings))

    assert result.exit_code == 124, result.output
    assert f"run {run_id} is still RUNNING after 0.2 s" in result.stderr


UPLOADS = {
    "submit": ["submit", QUICKSTART],
    "schedule": ["schedule", QUICKSTART, "--cron", CRON],
}


@pytest.mark.parametrize("command", list(UPLOADS))
def test_a_server_older_than_the_minimum_is_refused_before_anything_is_uploaded(
    settings: Path, command: str
) -> None:
    with kfp_api(token=TOKEN, tag_name="2.16.1") as api:
        result = mega3d(*UPLOADS[command], *connection(api, settings))

        assert result.exit_code == 2, result.output
        [line] = result.stderr.strip().splitlines()
        assert f"Kubeflow Pipelines at {api.url} is 2.16.1, older than 2.17.0" in line
        assert "min_kfp_server" in line and "Traceback" not in result.output
        assert [r.path for r in api.requests] == [f"{PREFIX}/healthz"]


@pytest.mark.parametrize(
    ("tag_name", "minimum"),
    [("2.17.0", None), ("v2.18.1", None), ("2.17.0-rc.1", None), ("2.5.0", "2.5.0")],
    ids=["the minimum", "newer, v-prefixed", "its pre-release", "older, allowed by min_kfp_server"],
)
def test_a_server_at_the_minimum_or_allowed_by_the_settings_is_used(
    tmp_path: Path, tag_name: str, minimum: str | None
) -> None:
    settings = settings_file(
        tmp_path, f"bucket: {BUCKET}\n" + (f"min_kfp_server: {minimum}\n" if minimum else "")
    )
    with kfp_api(token=TOKEN, tag_name=tag_name) as api:
        result = mega3d("submit", QUICKSTART, *connection(api, settings))

        assert result.exit_code == 0, result.output
        assert result.stderr == ""
        assert len(api.runs) == 1


@pytest.mark.parametrize("tag_name", ["unknown", "", "master"])
def test_a_server_that_reports_no_release_gets_the_pipeline_with_a_warning(
    settings: Path, tag_name: str
) -> None:
    with kfp_api(token=TOKEN, tag_name=tag_name) as api:
        result = mega3d("submit", QUICKSTART, *connection(api, settings))

        assert result.exit_code == 0, result.output
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("warning: ") and f"(tag_name {tag_name!r})" in line and "2.17.0" in line
        assert len(api.runs) == 1


def test_commands_that_upload_nothing_work_with_an_older_server(settings: Path) -> None:
    with kfp_api(token=TOKEN, tag_name="2.5.0") as api:
        run_id = api.add_run("quickstart", ["RUNNING"], api.add_experiment(EXPERIMENT))
        result = mega3d("runs", "list", *connection(api, settings))

        assert result.exit_code == 0, result.output
        assert run_id in result.stdout and result.stderr == ""


def test_a_host_that_does_not_answer_as_kubeflow_pipelines_is_one_line(settings: Path) -> None:
    class Dashboard(BaseHTTPRequestHandler):
        """Answers every path with a page, as the Kubeflow central dashboard does."""

        def do_GET(self) -> None:
            page = b"<!doctype html><title>Kubeflow Central Dashboard</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        result = mega3d("submit", QUICKSTART, "--host", host, "--settings", settings)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert f"{host} does not answer as the Kubeflow Pipelines API" in line
    assert "Traceback" not in result.output


def staged_spec(tmp_path: Path, stage: str, nnodes: int, gpus: int, **changes: Any) -> Path:
    """The quickstart with one stage ('pretrain' or 'finetune') on `nnodes` nodes of `gpus` GPUs."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec.update(changes)
    target = spec["pretrain"] if stage == "pretrain" else spec["finetune"][0]
    target["resources"].update(nnodes=nnodes, gpus=gpus, nproc_per_node=gpus)
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("settings_text", "changes"),
    [
        (f"bucket: {BUCKET}\nqueue_gpus: null\n", {}),
        (f"bucket: {BUCKET}\n", {"sweep": {"pretrain_datasets": [[]]}}),
    ],
    ids=["queue of unknown size", "a stage no branch runs"],
)
def test_a_big_stage_is_submitted_when_nothing_says_the_queue_is_smaller(
    api: KfpApi, tmp_path: Path, settings_text: str, changes: dict[str, Any]
) -> None:
    spec = staged_spec(tmp_path, "pretrain", 8, 8, **changes)  # 64 GPUs, more than the default 32

    result = mega3d("submit", spec, *connection(api, settings_file(tmp_path, settings_text)))

    assert result.exit_code == 0, result.output
    assert len(api.runs) == 1


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def spec_file(tmp_path: Path, **changes: Any) -> Path:
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def settings_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


# Each: the command line (given the server, the settings file and a folder), and what the one line says.
BadInput = Callable[[KfpApi, Path, Path], list[str | Path]]
BAD_INPUTS: dict[str, tuple[BadInput, str]] = {
    "unreachable host": (
        lambda api, settings, tmp: [
            "submit",
            QUICKSTART,
            "--host",
            closed_port_url(),
            "--settings",
            settings,
        ],
        "cannot reach Kubeflow Pipelines at http://127.0.0.1:",
    ),
    "wrong token": (
        lambda api, settings, tmp: [
            "submit",
            QUICKSTART,
            "--host",
            api.url,
            "--token",
            "nope",
            "--settings",
            settings,
        ],
        "refused the token given (HTTP 401 Unauthorized)",
    ),
    "no token": (
        lambda api, settings, tmp: ["submit", QUICKSTART, "--host", api.url, "--settings", settings],
        "refused requests without a token (HTTP 401 Unauthorized)",
    ),
    "5-field cron": (
        lambda api, settings, tmp: [
            "schedule",
            QUICKSTART,
            "--cron",
            "0 3 * * *",
            *connection(api, settings),
        ],
        "--cron '0 3 * * *': 5 fields; KFP cron has 6, seconds first",
    ),
    "cron value out of range": (
        lambda api, settings, tmp: [
            "schedule",
            QUICKSTART,
            "--cron",
            "0 0 25 * * *",
            *connection(api, settings),
        ],
        "--cron '0 0 25 * * *': hours field '25'",
    ),
    "fine-tune target dataset missing": (
        lambda api, settings, tmp: [
            "submit",
            spec_file(tmp, finetune=[{"name": "target", "dataset": "ucf101"}]),
            *connection(api, settings),
        ],
        "finetune[0].dataset: unknown dataset 'ucf101'",
    ),
    "sweep beyond max_branches": (
        lambda api, settings, tmp: [
            "submit",
            spec_file(tmp, sweep={"depth": [10, 18]}),
            "--host",
            api.url,
            "--token",
            TOKEN,
            "--settings",
            settings_file(tmp, f"bucket: {BUCKET}\nmax_branches: 1\n"),
        ],
        "sweep: expands to 2 branches, more than max_branches 1",
    ),
    "bad settings field": (
        lambda api, settings, tmp: [
            "submit",
            QUICKSTART,
            "--host",
            api.url,
            "--settings",
            settings_file(tmp, "queue: Not_A_Name\n"),
        ],
        "settings.yaml: queue:",
    ),
    "bad --namespace": (
        lambda api, settings, tmp: ["runs", "list", "--namespace", "Team_A", *connection(api, settings)],
        "--namespace: must be lowercase letters, digits and '-', start and end with a letter or digit, "
        'at most 63 long (got "Team_A")',
    ),
    "no host": (
        lambda api, settings, tmp: ["schedule", "list", "--token", TOKEN, "--settings", settings],
        "no Kubeflow Pipelines host: pass --host URL",
    ),
    "host without scheme": (
        lambda api, settings, tmp: [
            "runs",
            "list",
            "--host",
            api.url.removeprefix("http://"),
            "--settings",
            settings,
        ],
        "give the scheme, e.g. https://127.0.0.1:",
    ),
    "stage beyond the queue's GPUs": (
        lambda api, settings, tmp: [
            "submit",
            staged_spec(tmp, "finetune", 4, 16),
            *connection(api, settings),
        ],
        "gpus.yaml: finetune[0].resources: 4 nodes x 16 GPUs = 64 GPUs at once, more than queue_gpus 32",
    ),
    "scheduled stage beyond the queue's GPUs": (
        lambda api, settings, tmp: [
            "schedule",
            staged_spec(tmp, "pretrain", 2, 8),
            "--cron",
            CRON,
            "--host",
            api.url,
            "--settings",
            settings_file(tmp, f"bucket: {BUCKET}\nqueue_gpus: 8\n"),
        ],
        "gpus.yaml: pretrain.resources: 2 nodes x 8 GPUs = 16 GPUs at once, more than queue_gpus 8",
    ),
    "bad min_kfp_server": (
        lambda api, settings, tmp: [
            "submit",
            QUICKSTART,
            "--host",
            api.url,
            "--settings",
            settings_file(tmp, f"bucket: {BUCKET}\nmin_kfp_server: latest\n"),
        ],
        "min_kfp_server 'latest' (settings, $MEGA3D_MIN_KFP_SERVER): give a Kubeflow Pipelines release",
    ),
    "local storage and no bucket": (
        lambda api, settings, tmp: ["submit", QUICKSTART, "--host", api.url, "--token", TOKEN],
        "storage: 'runs/quickstart' is on this machine",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_submitted(
    api: KfpApi, settings: Path, tmp_path: Path, case: str
) -> None:
    command, message = BAD_INPUTS[case]
    folder = tmp_path / "case"
    folder.mkdir()
    started = time.monotonic()

    result = mega3d(*command(api, settings, folder))

    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert message in line
    assert "Traceback" not in result.output
    assert api.posts() == []
    assert time.monotonic() - started < 10  # a dead host or a refused token is reported at once
    if case not in ("wrong token", "no token"):  # found before the cluster is contacted
        assert api.requests == []


def test_a_forbidding_server_is_one_line(settings: Path) -> None:
    with kfp_api(token=TOKEN, auth_failure_status=403) as api:
        result = mega3d(
            "schedule",
            QUICKSTART,
            "--cron",
            CRON,
            "--host",
            api.url,
            "--token",
            "nope",
            "--settings",
            settings,
        )

        assert result.exit_code == 2, result.output
        [line] = result.stderr.strip().splitlines()
        assert "refused the token given (HTTP 403 Forbidden)" in line
        assert api.posts() == []


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["runs", "status", "no-such-run"], "run 'no-such-run'"),
        (["runs", "wait", "no-such-run"], "run 'no-such-run'"),
        (["runs", "cancel", "no-such-run"], "run 'no-such-run'"),
        (["schedule", "pause", "no-such-schedule"], "recurring run 'no-such-schedule'"),
        (["schedule", "delete", "no-such-schedule"], "recurring run 'no-such-schedule'"),
    ],
)
def test_unknown_ids_are_one_line(api: KfpApi, settings: Path, command: list[str], what: str) -> None:
    result = mega3d(*command, *connection(api, settings))

    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line == f"error: {what} not found at {api.url}"
    assert api.runs == {} and api.recurring_runs == {}


def test_cluster_commands_import_neither_torch_nor_kfp_until_they_run(api: KfpApi, settings: Path) -> None:
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from mega3d.cli.main import app\n"
        "for args in (['--help'], ['submit', '--help'], ['runs', '--help'], ['schedule', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'kfp')))\n"
        f"result = CliRunner().invoke(app, ['submit', {str(QUICKSTART)!r}, *{connection(api, settings)!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]"]
    assert len(api.runs) == 1
