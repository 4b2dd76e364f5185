"""Deployment settings: where and how pipelines run on a cluster, kept apart from experiment specs.

A spec says what to train; settings say which Kubeflow, namespace, image, bucket, queue and GPU nodes, and
how pods reach object storage. They are read from a YAML file (`--settings`, else `$MEGA3D_SETTINGS`, else
`~/.config/mega3d/settings.yaml` when it exists), then environment variables `MEGA3D_<FIELD>` (upper case)
override single fields. Torch-free and kfp-free.

Credentials never enter a compiled pipeline: pods reach object storage through Workload Identity (the
Kubernetes `service_account` bound to a cloud identity) or through a Kubernetes Secret that holds a key
file (`credentials_secret`); only the Secret's name is written into the pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mega3d.trainer import environment
from mega3d.trainer.spec import K8S_NAME, Problem, SpecError, validation_problems

DEFAULT_FILE = Path("~/.config/mega3d/settings.yaml")
ENV_PREFIX = "MEGA3D_"
# Where a Secret named by credentials_secret is mounted in step and training pods.
CREDENTIALS_DIR = "/var/secrets/mega3d"
CREDENTIALS_KEY = "key.json"
# The oldest Kubeflow Pipelines backend that runs the compiled IR correctly: 2.17.0 propagates the states of
# nested sub-DAGs (If inside ParallelFor inside If) and applies a recurring run's service account (README,
# "Which Kubeflow Pipelines").
MIN_KFP_SERVER = "2.17.0"
# The step pod's own name and UID, from the downward API: the training jobs it submits are owned by it.
STEP_POD_NAME = "MEGA3D_STEP_POD_NAME"
STEP_POD_UID = "MEGA3D_STEP_POD_UID"


class Toleration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class Deployment(BaseModel):
    """Cluster-side settings of every submitted run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str | None = Field(
        default=None, description="Kubeflow Pipelines API endpoint, e.g. https://kf/pipeline"
    )
    namespace: Annotated[str, Field(pattern=K8S_NAME)] = Field(
        default="mega3d", description="Kubeflow profile namespace (k8s/base's); training jobs run there too"
    )
    experiment: str = Field(default="mega3d", description="Kubeflow experiment that runs are filed under")
    image: str | None = Field(default=None, description="mega3d training image (CUDA) of training pods")
    step_image: str | None = Field(
        default=None, description="light mega3d launcher image of pipeline steps; default: `image`"
    )
    bucket: str | None = Field(
        default=None, description="object-storage root of cluster runs (e.g. gs://team-videos/mega3d)"
    )
    service_account: Annotated[str, Field(pattern=K8S_NAME)] | None = Field(
        default=None, description="Kubernetes service account of training pods (Workload Identity)"
    )
    run_service_account: Annotated[str, Field(pattern=K8S_NAME)] | None = Field(
        default="mega3d-launcher",
        description="service account that runs and recurring runs execute their steps as (k8s/base's)",
    )
    credentials_secret: Annotated[str, Field(pattern=K8S_NAME)] | None = Field(
        default=None, description=f"Secret with a storage key file '{CREDENTIALS_KEY}', mounted in pods"
    )
    queue: Annotated[str, Field(pattern=K8S_NAME)] = Field(
        default="mega3d", description="Volcano queue (k8s/base's)"
    )
    queue_gpus: Annotated[int, Field(ge=1)] | None = Field(
        default=32,
        description="GPUs the queue may hold at once (its capability): `submit` refuses a stage that needs "
        "more; null: unknown",
    )
    priority_class: Annotated[str, Field(pattern=K8S_NAME)] | None = Field(
        default=None, description="PriorityClass of training jobs"
    )
    termination_grace_seconds: Annotated[int, Field(ge=10, le=3600)] = Field(
        default=120,
        description="what a training pod gets between SIGTERM (a preemption's notice) and SIGKILL: the time "
        "for its step checkpoint",
    )
    pod_annotations: dict[str, str] = Field(default={}, description="annotations of every training pod")
    node_selector: dict[str, str] = Field(default={}, description="labels of the GPU nodes to train on")
    tolerations: list[Toleration] = Field(default=[], description="taints of the GPU nodes to tolerate")
    metrics_port: Annotated[int, Field(ge=1024, le=65000)] | None = Field(
        default=9400, description="first port of the ranks' Prometheus metrics (+ local rank); null: none"
    )
    pushgateway: str | None = Field(
        default=None, description="Pushgateway URL for each stage's final metrics"
    )
    max_branches: Annotated[int, Field(ge=1)] = Field(
        default=32, description="most parallel branches a sweep may expand to"
    )
    sweep_parallelism: Annotated[int, Field(ge=1)] = Field(
        default=4, description="most branches of a sweep that run (and queue their jobs) at once"
    )
    api_outage_minutes: Annotated[float, Field(gt=0)] = Field(
        default=15, description="how long a step keeps reading a job's status while the API server fails"
    )
    pending_minutes: Annotated[float, Field(gt=0)] = Field(
        default=30, description="how long a training job may wait to be scheduled before the step fails"
    )
    finished_job_minutes: Annotated[int, Field(ge=1)] = Field(
        default=60, description="how long a finished training job and its pods are kept for inspection"
    )
    min_kfp_server: str = Field(
        default=MIN_KFP_SERVER,
        description="oldest Kubeflow Pipelines release `submit` and `schedule` upload to (e.g. 2.17.0)",
    )

    def trainer_environment(self, one_host: bool, run_id: str, branch: str) -> dict[str, str]:
        """What training processes are told of their metrics' endpoints and labels; `one_host` when every
        process of the job runs on this one machine (TorchX local_cwd)."""
        variables = {environment.RUN: run_id, environment.BRANCH: branch}
        if self.metrics_port:
            variables[environment.METRICS_PORT] = str(self.metrics_port)
        if one_host and self.metrics_port:
            variables[environment.METRICS_ONE_HOST] = "1"
        if self.pushgateway:
            variables[environment.PUSHGATEWAY] = self.pushgateway
        return variables

    def cluster_json(self) -> str:
        """What pipeline steps need at run time: everything but the API endpoint."""
        return self.model_dump_json(exclude={"host"})


def load_settings(path: Path | None = None, environ: dict[str, str] | None = None) -> Deployment:
    """Settings from the file (if any) and the environment; SpecError names the source and field."""
    environ = dict(os.environ) if environ is None else environ
    named = environ.get(f"{ENV_PREFIX}SETTINGS")
    explicit = path or (Path(named) if named else None)
    source = explicit or DEFAULT_FILE.expanduser()
    data: dict[str, Any] = {}
    if explicit is not None or source.exists():
        try:
            loaded = yaml.safe_load(source.read_text())
        except OSError as error:
            raise SpecError(str(source), [Problem("", f"cannot read: {error.strerror or error}")]) from None
        except yaml.YAMLError as error:
            raise SpecError(str(source), [Problem("", f"invalid YAML: {error}")]) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SpecError(str(source), [Problem("", "settings must be a mapping of field: value")])
        data = loaded or {}
    overridden = []
    for name in Deployment.model_fields:
        value = environ.get(f"{ENV_PREFIX}{name.upper()}")
        if value is not None:
            structured = name in ("node_selector", "tolerations", "pod_annotations")
            try:
                data[name] = yaml.safe_load(value) if structured else value
            except yaml.YAMLError:
                raise SpecError(f"${ENV_PREFIX}{name.upper()}", [Problem("", "invalid YAML")]) from None
            overridden.append(name)
    try:
        return Deployment.model_validate(data)
    except ValidationError as error:
        problems = validation_problems(error)
        from_env = [p for p in problems if p.path.split(".")[0].split("[")[0] in overridden]
        if from_env:  # name the variable, not the file
            name = from_env[0].path.split(".")[0].split("[")[0]
            raise SpecError(f"${ENV_PREFIX}{name.upper()}", from_env) from None
        raise SpecError(str(source), problems) from None
