"""The launcher on a cluster: the Volcano Job TorchX makes of a training stage, and the job's life through the
kubernetes client (against a fake API server on loopback).

After an intended change of the job: UPDATE_GOLDEN=1 pytest tests/pipelines
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes.config.kube_config
import kubernetes_validate
import pytest
import yaml
from torchx.runner import get_runner
from torchx.schedulers.kubernetes_scheduler import sanitize_for_serialization
from torchx.specs import AppDef

from mega3d.components.train import trainer
from mega3d.pipelines import launcher
from mega3d.pipelines.launcher import (
    APP_NAME_LIMIT,
    KUBERNETES_SCHEDULER,
    LOCAL_SCHEDULER,
    LaunchError,
    cluster_app,
    job_name,
    launch,
    scheduler_cfg,
)
from mega3d.pipelines.settings import CREDENTIALS_DIR, Deployment, Toleration
from mega3d.trainer import layout
from mega3d.trainer.data.format import index_uri
from tests.conftest import ROOT
from tests.fake_kubernetes import FakeKubernetes, Request

GOLDEN = Path(__file__).parent / "golden" / "volcano-job.yaml"
VOLCANO_JOB_CRD = ROOT / "tests" / "k8s" / "schemas" / "batch.volcano.sh_jobs.yaml"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
ACCELERATOR = "cloud.google.com/gke-accelerator"
IMAGE = "mega3d:0.1.0"
GPU_TOLERATION = Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
DEPLOYMENT = Deployment(
    namespace="vision",
    image=IMAGE,
    queue="gpu-training",
    service_account="mega3d-trainer",
    credentials_secret="gcs-key",
    node_selector={ACCELERATOR: "nvidia-h100-80gb"},
    tolerations=[GPU_TOLERATION],
)
RUN = "gs://team-videos/mega3d/quickstart/runs/run-1"


def gpu_app(nnodes: int, name: str = "quickstart-pretrain") -> AppDef:
    """The quickstart's pretraining as the launcher builds it for a cluster: nnodes x 8 GPUs."""
    app = trainer(
        *("train", "--spec", f"{RUN}/{layout.SPEC_FILE}", "--stage", "pretrain"),
        *(
            "--data-index",
            index_uri(layout.merged_dataset(RUN, "pretrain")),
            "--out",
            layout.stage_dir(RUN, "pretrain"),
        ),
        name=name,
        image=IMAGE,
        nnodes=nnodes,
        nproc_per_node=8,
        gpus=8,
        cpu=96,
        memory_gb=640,
        max_retries=3,
        env=DEPLOYMENT.trainer_environment(one_host=False),
        metrics_port=DEPLOYMENT.metrics_port or 0,
    )
    return cluster_app(app, DEPLOYMENT)


def volcano_job(app: AppDef) -> dict[str, Any]:
    """TorchX's Volcano Job for the app, as the API server would receive it; no API server is asked."""
    cfg = {**scheduler_cfg(KUBERNETES_SCHEDULER, DEPLOYMENT, None), "validate_spec": False}
    with warnings.catch_warnings():  # TorchX warns about Volcano's retries of old versions
        warnings.simplefilter("ignore", UserWarning)
        info = get_runner().dryrun(app, KUBERNETES_SCHEDULER, cfg=cfg)
    return cast(dict[str, Any], sanitize_for_serialization(info.request.resource))


def pods(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods Volcano makes of the job's tasks (one replica each), named as Volcano names them."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                **task["template"]["metadata"],
                "name": f"{job['metadata']['name']}-{task['name']}-0",
            },
            "spec": task["template"]["spec"],
        }
        for task in job["spec"]["tasks"]
        for _ in range(task["replicas"])
    ]


@pytest.fixture
def quickstart_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    # dist.torchrun copies LOGLEVEL from the launcher's environment; a local key file must not leak.
    monkeypatch.delenv("LOGLEVEL", raising=False)
    key = tmp_path / "key.json"
    key.write_text('{"private_key": "-----BEGIN PRIVATE KEY-----not-a-real-key"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    return volcano_job(gpu_app(nnodes=4))


def test_volcano_job_matches_the_golden_file(quickstart_job: dict[str, Any]) -> None:
    job = copy.deepcopy(quickstart_job)
    for pod in pods(job):  # TorchX's random parts
        for var in pod["spec"]["containers"][0]["env"]:
            if var["name"] == "TORCHX_INTERNAL_SESSION_ID":
                var["value"] = "<session-id>"
    unique = job["metadata"]["name"]
    assert re.fullmatch(r"quickstart-pretrain-[a-z0-9]{1,14}", unique)
    text = yaml.safe_dump(job, sort_keys=True).replace(unique, "quickstart-pretrain-<unique-id>")
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "the Volcano Job changed: UPDATE_GOLDEN=1 pytest tests/pipelines"


def test_volcano_job_runs_every_node_on_the_gpu_nodes_with_storage_credentials(
    quickstart_job: dict[str, Any], tmp_path: Path
) -> None:
    job = quickstart_job
    spec = job["spec"]
    assert (spec["queue"], spec["schedulerName"], spec["maxRetry"]) == ("gpu-training", "volcano", 3)
    assert [task["name"] for task in spec["tasks"]] == ["trainer-0", "trainer-1", "trainer-2", "trainer-3"]
    assert {task["replicas"] for task in spec["tasks"]} == {1}
    for pod in pods(job):
        pod_spec = pod["spec"]
        (container,) = pod_spec["containers"]
        assert container["image"] == IMAGE
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert "--nnodes 4 --nproc_per_node 8" in container["command"][-1]
        assert pod_spec["nodeSelector"] == {ACCELERATOR: "nvidia-h100-80gb"}
        assert pod_spec["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert pod_spec["serviceAccountName"] == "mega3d-trainer"
        assert pod_spec["securityContext"] == {"runAsNonRoot": True}
        (secret,) = [volume for volume in pod_spec["volumes"] if "secret" in volume]
        assert secret["secret"] == {"secretName": "gcs-key"} and set(secret) == {"name", "secret"}
        mount = next(m for m in container["volumeMounts"] if m["name"] == secret["name"])
        assert mount == {"name": secret["name"], "mountPath": CREDENTIALS_DIR, "readOnly": True}
        env = {var["name"]: var.get("value") for var in container["env"]}
        assert env["GOOGLE_APPLICATION_CREDENTIALS"] == f"{CREDENTIALS_DIR}/key.json"
        assert env["MEGA3D_METRICS_PORT"] == "9400" and "MEGA3D_METRICS_ONE_HOST" not in env
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert {name: ports[name] for name in ports if name.startswith("metrics")} == {
            f"metrics-{rank}": 9400 + rank for rank in range(8)
        }  # one per local rank, as the PodMonitor scrapes them
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    text = json.dumps(job)
    assert "PRIVATE KEY" not in text and str(tmp_path) not in text and "persistentVolumeClaim" not in text


def test_volcano_job_and_its_pods_match_the_schemas(quickstart_job: dict[str, Any]) -> None:
    validate_volcano_job(quickstart_job)
    for pod in pods(quickstart_job):
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_schema_checks_catch_mistakes(quickstart_job: dict[str, Any]) -> None:
    misspelled = copy.deepcopy(quickstart_job)
    misspelled["spec"]["maxRetries"] = misspelled["spec"].pop("maxRetry")  # Kubernetes would drop it silently
    wrong_type = copy.deepcopy(quickstart_job)
    wrong_type["spec"]["tasks"][0]["replicas"] = "1"
    for broken in (misspelled, wrong_type):
        with pytest.raises(jsonschema.ValidationError):
            validate_volcano_job(broken)
    (pod, *_) = pods(quickstart_job)
    pod["spec"]["tolerations"][0]["tolerationSeconds"] = "forever"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def validate_volcano_job(job: dict[str, Any]) -> None:
    """Against the Volcano CRD's schema, with unknown fields rejected rather than pruned."""
    crd = yaml.safe_load(VOLCANO_JOB_CRD.read_text())
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == job["apiVersion"].split("/")[1])
    jsonschema.Draft4Validator(closed(version["schema"]["openAPIV3Schema"])).validate(job)


def closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever it lists an object's properties."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        result["additionalProperties"] = False
    return result


def test_a_cpu_role_stays_off_the_gpu_nodes_and_without_a_secret_nothing_is_mounted() -> None:
    app = trainer("evaluate", name="quickstart-evaluate", nnodes=1, gpus=0)
    (pod,) = pods(volcano_job(cluster_app(app, DEPLOYMENT.model_copy(update={"credentials_secret": None}))))
    assert "tolerations" not in pod["spec"] and pod["spec"]["nodeSelector"] == {}
    assert [volume["name"] for volume in pod["spec"]["volumes"]] == ["dshm"]
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in {
        var["name"] for var in pod["spec"]["containers"][0]["env"]
    }


def test_job_names_are_kept_when_they_fit() -> None:
    assert job_name("quickstart", "pretrain") == "quickstart-pretrain"


def test_long_or_unsafe_names_are_cut_to_dns_labels_that_stay_apart() -> None:
    experiment = "kinetics700-mit-r3d-50-lr-sweep"  # specs allow names of up to 32 characters
    stages = ["finetune-ucf101-split1", "finetune-ucf101-split2", "finetune-hmdb51-split1"]
    names = [job_name(experiment, stage) for stage in stages]
    assert len(set(names)) == len(stages)
    assert names == [job_name(experiment, stage) for stage in stages]  # the same name every time
    unsafe = [job_name("My_Experiment", "Stage 1"), job_name("3d-resnets", "pretrain"), job_name("", "")]
    for name in names + unsafe:
        assert len(name) <= APP_NAME_LIMIT and DNS_LABEL.match(name), name
    assert names[0].startswith("kinetics700-mit-r3d-50-lr-") and unsafe[1].startswith("job-3d-resnets")


def test_every_pod_name_is_a_dns_label_for_the_longest_names_and_1000_nodes() -> None:
    longest = job_name("e" * 32, "s" * 32)
    job = volcano_job(gpu_app(nnodes=1000, name=longest))
    names = [pod["metadata"]["name"] for pod in pods(job)]
    assert len(names) == 1000 and all(DNS_LABEL.match(name) for name in names)
    # TorchX's unique id has up to 14 characters, whatever length it drew this time.
    worst = f"{longest}-{'x' * 14}-trainer-999-0"
    assert len(worst) <= 63


def test_scheduler_options() -> None:
    assert scheduler_cfg(LOCAL_SCHEDULER, DEPLOYMENT, "/runs/r/logs") == {"log_dir": "/runs/r/logs"}
    assert scheduler_cfg(LOCAL_SCHEDULER, DEPLOYMENT, None) == {}
    assert scheduler_cfg(KUBERNETES_SCHEDULER, DEPLOYMENT, None) == {
        "namespace": "vision",
        "queue": "gpu-training",
        "service_account": "mega3d-trainer",
    }
    assert "service_account" not in scheduler_cfg(KUBERNETES_SCHEDULER, Deployment(), None)
    with pytest.raises(ValueError, match="unknown scheduler 'slurm'"):
        scheduler_cfg("slurm", DEPLOYMENT, None)


# Lines as the kubelet timestamps them: RFC 3339 in UTC, trailing zeros of the fraction dropped, so that
# "…01.55Z" sorts before "…01.5Z" as text; two lines may share a timestamp.
LOG = [
    "2026-01-01T00:00:01.5Z epoch 1 loss 2.08",
    "2026-01-01T00:00:01.5Z epoch 1 clip accuracy 0.31",
    "2026-01-01T00:00:01.55Z epoch 2 loss 1.71",
    "2026-01-01T00:00:02Z finished",
]


def growing_log(pod: str, read: int, phase: str) -> list[str]:
    """Each reading of a running pod's log finds one more line, as when a followed log is closed early."""
    return LOG if phase == "Completed" else LOG[: read + 2]


@pytest.fixture
def use_fake_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeKubernetes], Path]:
    """Point the kubernetes client of this process at the fake, which answers at once: the launcher may ask
    it often. Returns the kubeconfig, for subprocesses."""
    monkeypatch.setitem(launcher.STATUS_POLL_SECONDS, KUBERNETES_SCHEDULER, 0.1)
    monkeypatch.setattr(launcher, "LOG_RETRY_SECONDS", 0.2)

    def use(fake: FakeKubernetes) -> Path:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", DEPLOYMENT.namespace)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # no in-cluster configuration
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        # The client reads $KUBECONFIG once, when first imported (kfp imports it early).
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
        return kubeconfig

    return use


def test_launch_creates_the_volcano_job_streams_its_logs_and_follows_it_to_the_end(
    use_fake_cluster: Callable[[FakeKubernetes], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    phases = ["Pending", "Pending", *["Running"] * 20, "Completed"]
    with FakeKubernetes(phases, log_lines=growing_log) as fake:
        use_fake_cluster(fake)
        app = gpu_app(nnodes=2)
        launch(app, KUBERNETES_SCHEDULER, scheduler_cfg(KUBERNETES_SCHEDULER, DEPLOYMENT, None))
        job = fake.created_job()
    jobs = "/apis/batch.volcano.sh/v1alpha1/namespaces/vision/jobs"
    checked, created = fake.recorded("POST", f"^{jobs}$")
    assert checked.query == {"dryRun": ["All"]} and "dryRun" not in created.query  # TorchX checks first
    assert created.authorization == "Bearer fake-token"
    body = created.body
    assert body["spec"]["queue"] == "gpu-training" and len(body["spec"]["tasks"]) == 2
    for task in body["spec"]["tasks"]:
        assert task["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert job.phase == "Completed" and not fake.recorded("DELETE")
    printed = capsys.readouterr().out
    for node in range(2):
        pod = f"{body['metadata']['name']}-trainer-{node}-0"
        assert job.log_reads[pod] >= 2  # read again and again, yet every line printed once
        shown = [
            line.split(" | ", 1)[1] for line in printed.splitlines() if line.startswith(f"node{node} | ")
        ]
        assert shown == [line.split(" ", 1)[1] for line in LOG]


def test_a_failed_volcano_job_fails_the_step_with_its_reason(
    use_fake_cluster: Callable[[FakeKubernetes], Path],
) -> None:
    failed = {"reason": "PodFailed", "message": "trainer-1 exited with code 1"}
    with FakeKubernetes(["Pending", "Running", "Failed"], **failed) as fake:
        use_fake_cluster(fake)
        with pytest.raises(LaunchError, match=r"ended FAILED: PodFailed: trainer-1 exited with code 1$"):
            launch(
                gpu_app(nnodes=2), KUBERNETES_SCHEDULER, scheduler_cfg(KUBERNETES_SCHEDULER, DEPLOYMENT, None)
            )


RBAC = ROOT / "k8s" / "base" / "launcher-rbac.yaml"
API_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/[^/]+/(?P<resource>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<subresource>[^/]+))?)?$"
)


def authorised_as(request: Request) -> tuple[str, str, str]:
    """The API group, resource and verb Kubernetes authorises a request as (RBAC)."""
    match = API_PATH.match(request.path)
    assert match is not None, request.path
    resource = "/".join(part for part in (match["resource"], match["subresource"]) if part)
    verb = {"POST": "create", "DELETE": "delete"}.get(request.method) or ("get" if match["name"] else "list")
    return match["group"] or "", resource, verb


def launcher_role_grants(group: str, resource: str, verb: str) -> bool:
    role = next(doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc and doc["kind"] == "Role")
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in role["rules"]
    )


def test_the_launcher_needs_no_more_than_its_role_grants(
    use_fake_cluster: Callable[[FakeKubernetes], Path],
) -> None:
    with FakeKubernetes(["Pending", "Running", "Completed"], log_lines=growing_log) as fake:
        use_fake_cluster(fake)
        launch(gpu_app(nnodes=2), KUBERNETES_SCHEDULER, scheduler_cfg(KUBERNETES_SCHEDULER, DEPLOYMENT, None))
    needed = {authorised_as(request) for request in fake.requests}
    assert {need for need in needed if not launcher_role_grants(*need)} == set()


# A pipeline step's launcher, in a process of its own that the test can send SIGTERM to.
LAUNCHER = """
import sys
from mega3d.components.train import trainer
from mega3d.pipelines.launcher import KUBERNETES_SCHEDULER, cluster_app, launch, scheduler_cfg
from mega3d.pipelines.settings import Deployment
deployment = Deployment.model_validate_json(sys.argv[1])
app = cluster_app(trainer("train", name="quickstart-pretrain", nnodes=2, gpus=8), deployment)
launch(app, KUBERNETES_SCHEDULER, scheduler_cfg(KUBERNETES_SCHEDULER, deployment, None))
"""


def test_a_cancelled_step_deletes_its_volcano_job(use_fake_cluster: Callable[[FakeKubernetes], Path]) -> None:
    with FakeKubernetes(["Pending", "Running"]) as fake:  # running until deleted
        kubeconfig = use_fake_cluster(fake)
        env = {key: value for key, value in os.environ.items() if key != "KUBERNETES_SERVICE_HOST"}
        step = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, DEPLOYMENT.model_dump_json()],
            cwd=ROOT,
            env={**env, "KUBECONFIG": str(kubeconfig)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            fake.wait_until(lambda: bool(fake.jobs) and fake.created_job().phase == "Running")
            name = fake.created_job().resource["metadata"]["name"]
            step.send_signal(signal.SIGTERM)
            output, _ = step.communicate(timeout=15)
        finally:
            step.kill()
    assert step.returncode == 128 + signal.SIGTERM, output
    assert [r.path for r in fake.recorded("DELETE")] == [
        f"/apis/batch.volcano.sh/v1alpha1/namespaces/vision/jobs/{name}"
    ]
    assert not fake.jobs and f"deleting kubernetes://torchx/vision:{name}" in output
    assert launcher_role_grants(*authorised_as(fake.recorded("DELETE")[0]))
