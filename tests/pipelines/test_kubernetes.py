"""The launcher on a cluster: the Volcano Job TorchX makes of a training stage, and the job's life through the
kubernetes client (against a fake API server on loopback).

After an intended change of the job: UPDATE_GOLDEN=1 pytest tests/pipelines
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
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
    cluster_request,
    job_name,
    launch_on_cluster,
    scheduler_cfg,
)
from mega3d.pipelines.settings import CREDENTIALS_DIR, STEP_POD_NAME, STEP_POD_UID, Deployment, Toleration
from mega3d.pipelines.volcano import RESTART_POLICIES, JobIdentity, Owner, VolcanoJobs
from mega3d.trainer import layout
from mega3d.trainer.data.format import index_uri
from tests.conftest import ROOT
from tests.fake_kubernetes import FakeKubernetes, Kubelet, Request

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
IDENTITY = JobIdentity("quickstart", "run-1", "", "pretrain", "train")
STEP_POD = Owner("quickstart-abcde-system-container-impl-1234567890", "0c4e7f5a-uid-of-the-step-pod")


def gpu_app(nnodes: int | str, name: str = "quickstart-pretrain") -> AppDef:
    """The quickstart's pretraining as the launcher builds it: nnodes x 8 GPUs."""
    return trainer(
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
        env=DEPLOYMENT.trainer_environment(one_host=False, run_id="run-1", branch=""),
        metrics_port=DEPLOYMENT.metrics_port or 0,
    )


def volcano_job(app: AppDef, deployment: Deployment = DEPLOYMENT) -> dict[str, Any]:
    """The Volcano Job the launcher creates for the app, as the API server would receive it; no API server
    is asked."""
    info = cluster_request(get_runner(), app, deployment, IDENTITY, STEP_POD)
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
    # 3 retries and 100 preemptions: the launcher tells them apart (launcher.Restarts), not Volcano.
    assert (spec["queue"], spec["schedulerName"], spec["maxRetry"]) == ("gpu-training", "volcano", 104)
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
        assert pod_spec["securityContext"] == {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
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


def test_an_elastic_job_needs_its_fewest_nodes_and_takes_up_to_its_most() -> None:
    """`nnodes: "2:4"`: four tasks, of which the first two are required (Volcano's job minAvailable,
    unset, defaults to the sum of its tasks', as volcano-sh/volcano pkg/webhooks/admission/jobs/mutate
    does): the gang starts on 2 nodes, and torchrun's rendezvous takes whoever joins up to 4."""
    job = volcano_job(gpu_app(nnodes="2:4"))
    validate_volcano_job(job)
    tasks = job["spec"]["tasks"]
    assert [task.get("minAvailable") for task in tasks] == [1, 1, 0, 0] and "minAvailable" not in job["spec"]
    for pod in pods(job):
        assert "--nnodes 2:4 --nproc_per_node 8" in pod["spec"]["containers"][0]["command"][-1]


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
    (pod,) = pods(volcano_job(app, DEPLOYMENT.model_copy(update={"credentials_secret": None})))
    assert "tolerations" not in pod["spec"] and pod["spec"]["nodeSelector"] == {}
    assert [volume["name"] for volume in pod["spec"]["volumes"]] == ["dshm"]
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in {
        var["name"] for var in pod["spec"]["containers"][0]["env"]
    }


def test_job_names_say_experiment_branch_stage_and_run_and_are_kept_when_they_fit() -> None:
    run = "3f2a9c1d-7b1e-4c3a-9d2e-0a1b2c3d4e5f"  # a KFP run id
    assert job_name("quickstart", "", "pretrain", run) == "quickstart-pretrain-3f2a9c1d"
    assert job_name("sweep", "lr0-1", "pretrain", run) == "sweep-lr0-1-pretrain-3f2a9c1d"


def test_long_or_unsafe_names_are_cut_to_dns_labels_that_stay_apart() -> None:
    experiment = "kinetics700-mit-r3d-50-lr-sweep"  # specs allow names of up to 32 characters
    stages = ["finetune-ucf101-split1", "finetune-ucf101-split2", "finetune-hmdb51-split1"]
    names = [job_name(experiment, "", stage, "run-1") for stage in stages]
    names += [job_name(experiment, branch, stages[0], "run-1") for branch in ("lr-0.1", "lr-0.01")]
    names += [job_name(experiment, "", stages[0], "run-2")]
    assert len(set(names)) == len(names)
    again = [job_name(experiment, "", stage, "run-1") for stage in stages]
    assert names[:3] == again  # the same name every time
    unsafe = [
        job_name("My_Experiment", "", "Stage 1", "r"),
        job_name("3d-resnets", "", "pretrain", "r"),
        job_name("", "", "", ""),
    ]
    for name in names + unsafe:
        assert len(name) <= APP_NAME_LIMIT and DNS_LABEL.match(name), name
    assert names[0].startswith("kinetics700-mit-r3d-50-lr-") and unsafe[1].startswith("job-3d-resnets")


def test_every_pod_name_is_a_dns_label_for_the_longest_names_and_1000_nodes() -> None:
    longest = job_name("e" * 32, "b" * 32, "s" * 32, "r" * 36)
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
        "validate_spec": False,
    }
    defaults = scheduler_cfg(KUBERNETES_SCHEDULER, Deployment(), None)
    assert "service_account" not in defaults and "priority_class" not in defaults
    assert (defaults["namespace"], defaults["queue"]) == ("mega3d", "mega3d")  # k8s/base's
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
        launch_on_cluster(gpu_app(nnodes=2), DEPLOYMENT, IDENTITY)
        job = fake.created_job()
    jobs = "/apis/batch.volcano.sh/v1alpha1/namespaces/vision/jobs"
    (created,) = fake.recorded("POST", f"^{jobs}$")
    assert created.authorization == "Bearer fake-token"
    # One request per status reading: the job's status subresource.
    assert len(fake.recorded("GET", "/jobs/[^/]+/status$")) == job.status_reads
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
        with pytest.raises(LaunchError, match=r"ended Failed: PodFailed: trainer-1 exited with code 1$"):
            launch_on_cluster(gpu_app(nnodes=2), DEPLOYMENT, IDENTITY)


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
    verb = {"POST": "create", "DELETE": "delete", "PATCH": "patch"}.get(request.method)
    return match["group"] or "", resource, verb or ("get" if match["name"] else "list")


def launcher_role() -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) the launcher's Role grants."""
    role = next(doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc and doc["kind"] == "Role")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def step_environment(kubeconfig: Path, pod: Owner) -> dict[str, str]:
    """A step pod's environment: the kubeconfig instead of in-cluster credentials, and the pod's name and
    UID as the downward API gives them."""
    env = {key: value for key, value in os.environ.items() if key != "KUBERNETES_SERVICE_HOST"}
    return {**env, "KUBECONFIG": str(kubeconfig), STEP_POD_NAME: pod.name, STEP_POD_UID: pod.uid}


# A pipeline step's launcher, in a process of its own that the test can signal or kill.
LAUNCHER = """
import sys
from mega3d.components.train import trainer
from mega3d.pipelines.launcher import launch_on_cluster
from mega3d.pipelines.settings import Deployment
from mega3d.pipelines import launcher
from mega3d.pipelines.volcano import JobIdentity
launcher.STATUS_POLL_SECONDS["kubernetes"], launcher.LOG_RETRY_SECONDS = 0.1, 0.2  # as use_fake_cluster
deployment = Deployment.model_validate_json(sys.argv[1])
identity = JobIdentity("quickstart", "run-1", "", "pretrain", "train")
launch_on_cluster(trainer("train", name="quickstart-pretrain", nnodes=2, gpus=8), deployment, identity)
"""


def start_step(kubeconfig: Path, pod: Owner) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, DEPLOYMENT.model_dump_json()],
        cwd=ROOT,
        env=step_environment(kubeconfig, pod),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_cancelled_step_sends_one_delete_at_once(
    use_fake_cluster: Callable[[FakeKubernetes], Path],
) -> None:
    with FakeKubernetes(["Pending", "Running"]) as fake:  # running until deleted
        step = start_step(use_fake_cluster(fake), STEP_POD)
        try:
            fake.wait_until(lambda: bool(fake.jobs) and fake.created_job().phase == "Running")
            name = fake.created_job().resource["metadata"]["name"]
            before = len(fake.requests)
            step.send_signal(signal.SIGTERM)
            output, _ = step.communicate(timeout=15)
        finally:
            step.kill()
    assert step.returncode == 128 + signal.SIGTERM, output
    jobs = "/apis/batch.volcano.sh/v1alpha1/namespaces/vision/jobs"
    after = [(r.method, r.path) for r in fake.requests[before:] if r.path.startswith(jobs)]
    # Between the signal and the DELETE, at most the one status reading that was already under way.
    assert after[-1] == ("DELETE", f"{jobs}/{name}") and len(after) <= 2, after
    assert [r.path for r in fake.recorded("DELETE")] == [f"{jobs}/{name}"]
    assert not fake.jobs and f"deleting kubernetes://torchx/vision:{name}" in output
    assert authorised_as(fake.recorded("DELETE")[0]) in launcher_role()


def test_the_job_is_owned_by_the_step_pod_labelled_for_its_step_and_kept_an_hour_after_it_ends(
    quickstart_job: dict[str, Any],
) -> None:
    metadata = quickstart_job["metadata"]
    assert metadata["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": STEP_POD.name, "uid": STEP_POD.uid}
    ]
    assert metadata["labels"] == {
        "mega3d.io/experiment": "quickstart",
        "mega3d.io/run": "run-1",
        "mega3d.io/branch": "",
        "mega3d.io/stage": "pretrain",
        "mega3d.io/task": "train",
    }
    assert quickstart_job["spec"]["ttlSecondsAfterFinished"] == 3600
    # The owner reference as Kubernetes reads it: an ObjectMeta of a Pod, checked against its schema.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x", **metadata},
        "spec": {"containers": []},
    }
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_labels_of_any_branch_or_run_are_label_values_that_stay_apart() -> None:
    branches = ["lr=0.1,wd=1e-4", "lr=0.1,wd=1e-5", "x" * 80, "a/b", ""]
    values = [
        JobIdentity("e", "run", branch, "pretrain", "train").labels()["mega3d.io/branch"]
        for branch in branches
    ]
    assert len(set(values)) == len(values)
    for value in values:
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"k": value}}},
            kubernetes_validate.latest_version(),
            strict=True,
        )
        assert re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value) and len(value) <= 63


def test_memory_is_given_in_gibibytes() -> None:
    (pod, *_) = pods(volcano_job(gpu_app(nnodes=1)))
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["limits"]["memory"] == "655360Mi"  # 640 GiB, the stage's memory_gb
    assert resources["requests"]["memory"] == f"{640 * 1024 - 1024}Mi"  # less TorchX's reserve


def test_training_pods_meet_the_restricted_pod_security_level() -> None:
    """The checks of the "restricted" level that a pod's own fields decide (k8s.io/pod-security-admission
    policy: runAsNonRoot, seccompProfile RuntimeDefault|Localhost, allowPrivilegeEscalation false,
    capabilities drop ALL and add at most NET_BIND_SERVICE, volumes of the allowed types, no host
    namespaces, ports or privileged containers)."""
    allowed_volumes = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
    for pod in pods(volcano_job(gpu_app(nnodes=2))):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
        for volume in spec["volumes"]:
            assert set(volume) - {"name"} <= allowed_volumes, volume
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and not security.get("privileged")
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert not any(port.get("hostPort") for port in container.get("ports", []))


def test_pod_settings_of_the_platform_reach_the_job() -> None:
    deployment = DEPLOYMENT.model_copy(
        update={
            "priority_class": "training-low",
            "pod_annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        }
    )
    job = volcano_job(gpu_app(nnodes=1), deployment)
    assert job["spec"]["priorityClassName"] == "training-low"
    (pod,) = pods(job)
    assert pod["metadata"]["annotations"] == {
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
        "sidecar.istio.io/inject": "false",
    }
    # Volcano gives the job's priorityClassName to each task whose template names none (its docs, "How to
    # configure priorityclass for job"), and the pods' priority follows.
    assert "priorityClassName" not in pod["spec"]


def test_gpu_nodes_refuse_to_train_without_gpus_and_say_where() -> None:
    (gpu_pod, *_) = pods(volcano_job(gpu_app(nnodes=1)))
    env = {var["name"]: var for var in gpu_pod["spec"]["containers"][0]["env"]}
    assert env["MEGA3D_GPUS_REQUIRED"]["value"] == "1"
    assert env["MEGA3D_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    (cpu_pod,) = pods(volcano_job(trainer("evaluate", name="quickstart-evaluate", nnodes=1, gpus=0)))
    assert "MEGA3D_GPUS_REQUIRED" not in {var["name"] for var in cpu_pod["spec"]["containers"][0]["env"]}


def test_the_launcher_needs_exactly_what_its_role_grants(
    use_fake_cluster: Callable[[FakeKubernetes], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across a run (waiting, pending reasons, running, done) and a step started again (find, adopt), the
    launcher asks for nothing its Role lacks, and the Role grants nothing the launcher does not use."""
    monkeypatch.setenv(STEP_POD_NAME, STEP_POD.name)
    monkeypatch.setenv(STEP_POD_UID, STEP_POD.uid)
    phases = ["Pending", "Pending", "Running", "Completed"]
    with FakeKubernetes(phases, log_lines=growing_log, unschedulable="0/3 nodes are available") as fake:
        use_fake_cluster(fake)
        launch_on_cluster(gpu_app(nnodes=2), DEPLOYMENT, IDENTITY)
        monkeypatch.setenv(STEP_POD_UID, "uid-of-a-second-attempt")
        launch_on_cluster(gpu_app(nnodes=2), DEPLOYMENT, IDENTITY)  # finds the completed job: adopts it
        # What a cancelled step sends (test_a_cancelled_step_sends_one_delete_at_once sends it by SIGTERM).
        VolcanoJobs(DEPLOYMENT.namespace).delete(fake.created_job().resource["metadata"]["name"])
    needed = {authorised_as(request) for request in fake.requests}
    assert needed == launcher_role()


def test_a_step_started_again_follows_the_job_of_its_first_attempt(
    use_fake_cluster: Callable[[FakeKubernetes], Path],
) -> None:
    """The first attempt's pod is killed (OOM, a lost node) while its job runs; the retried step finds the
    job by its labels, adds itself to its owners and follows it to the end: one job, not two."""
    phases = ["Pending", *["Running"] * 40, "Completed"]
    with FakeKubernetes(phases) as fake:
        kubeconfig = use_fake_cluster(fake)
        first = start_step(kubeconfig, STEP_POD)
        try:
            fake.wait_until(lambda: bool(fake.jobs) and fake.created_job().phase == "Running")
        finally:
            first.kill()  # SIGKILL: no handler runs, as when the kernel's OOM killer ends the container
        first.wait()
        second_pod = Owner("quickstart-abcde-system-container-impl-2222222222", "uid-of-the-retried-pod")
        second = start_step(kubeconfig, second_pod)
        output, _ = second.communicate(timeout=60)
        job = fake.created_job()  # still the one job
    assert second.returncode == 0, output
    assert len(fake.recorded("POST")) == 1 and "which an earlier attempt of this step launched" in output
    assert [ref["uid"] for ref in job.resource["metadata"]["ownerReferences"]] == [
        STEP_POD.uid,
        second_pod.uid,
    ]
    assert job.phase == "Completed"


def test_a_failed_job_is_not_followed_again_a_retried_step_submits_anew(
    use_fake_cluster: Callable[[FakeKubernetes], Path],
) -> None:
    with FakeKubernetes(["Running", "Failed"]) as fake:
        use_fake_cluster(fake)
        with pytest.raises(LaunchError, match="ended Failed"):
            launch_on_cluster(gpu_app(nnodes=1), DEPLOYMENT, IDENTITY)
        fake.phases = ["Running", "Completed"]
        launch_on_cluster(gpu_app(nnodes=1), DEPLOYMENT, IDENTITY)
    assert len(fake.recorded("POST")) == 2 and len(fake.jobs) == 2


def test_status_reads_outlast_an_api_server_outage(
    use_fake_cluster: Callable[[FakeKubernetes], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A control-plane upgrade: the API server refuses connections for a while; the step waits it out and
    follows its job to the end."""
    phases = ["Pending", *["Running"] * 10, "Completed"]
    with FakeKubernetes(phases) as fake:
        use_fake_cluster(fake)
        step = threading.Thread(target=launch_on_cluster, args=(gpu_app(nnodes=1), DEPLOYMENT, IDENTITY))
        step.start()
        fake.wait_until(lambda: bool(fake.jobs) and fake.created_job().phase == "Running")
        with fake.outage():
            time.sleep(2)
        step.join(timeout=60)
        job = fake.created_job()
    assert not step.is_alive() and job.phase == "Completed"
    assert "the Kubernetes API does not answer" in capsys.readouterr().out


def test_a_longer_outage_than_allowed_fails_the_step_and_says_so(
    use_fake_cluster: Callable[[FakeKubernetes], Path],
) -> None:
    deployment = DEPLOYMENT.model_copy(update={"api_outage_minutes": 0.02})  # 1.2 s
    with FakeKubernetes(["Running"]) as fake:
        use_fake_cluster(fake)
        failure: list[BaseException] = []

        def step() -> None:
            try:
                launch_on_cluster(gpu_app(nnodes=1), deployment, IDENTITY)
            except LaunchError as error:
                failure.append(error)

        thread = threading.Thread(target=step)
        thread.start()
        fake.wait_until(lambda: bool(fake.jobs) and fake.created_job().status_reads > 0)
        with fake.outage():
            thread.join(timeout=30)
    assert not thread.is_alive()
    (error,) = failure
    assert "the Kubernetes API did not answer for" in str(error) and "api_outage_minutes: 0.02" in str(error)


def test_a_job_that_cannot_be_scheduled_says_why_and_is_deleted_after_the_pending_deadline(
    use_fake_cluster: Callable[[FakeKubernetes], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    why = "0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector."
    deployment = DEPLOYMENT.model_copy(update={"pending_minutes": 0.02})
    with FakeKubernetes(["Pending"], unschedulable=why) as fake:
        use_fake_cluster(fake)
        with pytest.raises(LaunchError, match=r"was not scheduled within 0.02 min \(pending_minutes\)"):
            launch_on_cluster(gpu_app(nnodes=2), deployment, IDENTITY)
    printed = capsys.readouterr().out
    assert f"waits to be scheduled: Unschedulable: {why}" in printed
    assert f"waits to be scheduled: FailedScheduling: {why}" in printed
    assert printed.count(why) == 2  # each reason once, however often it is read
    assert not fake.jobs and len(fake.recorded("DELETE")) == 1


def test_status_reads_back_off_while_a_job_is_pending(
    use_fake_cluster: Callable[[FakeKubernetes], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher, "PENDING_POLL_MAX_SECONDS", 0.8)
    with FakeKubernetes([*["Pending"] * 6, "Running", "Completed"]) as fake:
        use_fake_cluster(fake)
        launch_on_cluster(gpu_app(nnodes=1), DEPLOYMENT, IDENTITY)
    reads = [r.time for r in fake.recorded("GET", "/jobs/[^/]+/status$")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(reads)]
    assert gaps[0] < 0.35 and max(gaps[:6]) > 0.7  # 0.1 s doubling up to the cap


@pytest.mark.slow
def test_on_the_cluster_a_preemption_restarts_the_job_without_a_retry_and_a_failure_ends_it(
    tmp_path: Path, use_fake_cluster: Callable[[FakeKubernetes], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2-node CPU stage with `max_retries: 0` on the fake cluster's kubelet, whose job controller
    restarts the job after a pod fails as Volcano's does (every restart counted in retryCount). SIGTERM to
    both pods' torchrun mid-training: the trainers write a step checkpoint on notice and their pods fail;
    Volcano restarts the job, the launcher finds the new notice, counts a preemption, and the job trains
    on to the end. Then SIGKILL to one trainer of another job: Volcano restarts it too, but no notice came,
    so it is a failure beyond max_retries, and the launcher deletes the job and fails the step."""
    from tests.components.test_fault_tolerance import (
        STAGE,
        latest_epoch,
        stage_of_two_nodes,
        torchrun_agents,
        training_process_of_rank,
    )

    spec_file, dataset = stage_of_two_nodes(tmp_path, {**STAGE, "epochs": 4, "max_retries": 0})
    deployment = DEPLOYMENT.model_copy(update={"metrics_port": None, "credentials_secret": None})

    def stage_app(out: Path) -> AppDef:
        args = ["--spec", str(spec_file), "--stage", "pretrain", "--data-index", index_uri(dataset)]
        return trainer("train", *args, "--out", str(out), name="spot", nnodes=2, cpu=1, max_retries=0)

    def when_trained_two_epochs(out: Path, signal_them: Callable[[], list[int]]) -> list[int]:
        signalled: list[int] = []

        def wait_and_signal() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not signalled:
                if latest_epoch(out) >= 2:
                    signalled.extend(signal_them())
                time.sleep(0.05)

        threading.Thread(target=wait_and_signal, daemon=True).start()
        return signalled

    preempted = tmp_path / "preempted"

    def sigterm_both_pods() -> list[int]:
        agents = torchrun_agents(preempted)
        if len(agents) < 2:
            return []
        for pid in agents:
            os.kill(pid, signal.SIGTERM)
        return agents

    with FakeKubernetes([], kubelet=Kubelet(tmp_path)) as fake:
        use_fake_cluster(fake)
        signalled = when_trained_two_epochs(preempted, sigterm_both_pods)
        launch_on_cluster(stage_app(preempted), deployment, IDENTITY, stage_dir=str(preempted))
        job = fake.created_job()
        assert signalled and job.retry_count == 1 and job.phase == "Completed"
        assert job.resource["spec"]["maxRetry"] == 0 + launcher.MAX_PREEMPTIONS + 1
        assert all(task["policies"] == list(RESTART_POLICIES) for task in job.resource["spec"]["tasks"])
    printed = capsys.readouterr().out
    assert "was preempted (1 so far): starting it again" in printed and "retries left" not in printed
    metrics = json.loads((preempted / "metrics.json").read_text())
    assert metrics["preemptions"] == 1 and [h["epoch"] for h in metrics["history"]] == list(range(1, 5))

    failed = tmp_path / "failed"

    def sigkill_rank_1() -> list[int]:
        pid = training_process_of_rank(1, failed)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        return [pid] if pid is not None else []

    other = JobIdentity("quickstart", "run-2", "", "pretrain", "train")
    with FakeKubernetes([], kubelet=Kubelet(tmp_path)) as fake:
        use_fake_cluster(fake)
        killed = when_trained_two_epochs(failed, sigkill_rank_1)
        with pytest.raises(LaunchError, match=r"failed again \(max_retries 0 used up; restarted 0 times"):
            launch_on_cluster(stage_app(failed), deployment, other, stage_dir=str(failed))
        assert killed and not fake.jobs and fake.recorded("DELETE")
