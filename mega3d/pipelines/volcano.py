"""A pipeline step's Volcano jobs, through the Kubernetes API: find, adopt, read, delete, explain.

TorchX builds and submits a stage's Volcano Job; what a step needs beyond that, to run for days on a real
cluster, is here. Each job is labelled with who it is for (experiment, run, branch, stage, task), so that
a retried step finds the job its first attempt submitted and follows it instead of submitting another; it
is owned by the step's pod (name and UID from the downward API), so that deleting the pod deletes the job;
and Volcano removes it `ttlSecondsAfterFinished` after it ends. Status reads cost one request (TorchX's
reads the job and then every node's pod). Every request has a time limit: a step must not hang on a
connection the API server dropped.

Followed upstream: the Volcano Job CRD (tests/k8s/schemas/batch.volcano.sh_jobs.yaml: spec.
ttlSecondsAfterFinished, status.state.{phase,reason,message}); Volcano's job phases (volcano-sh/apis
pkg/apis/batch/v1alpha1/job.go: Pending, Aborting, Aborted, Running, Restarting, Completing, Completed,
Terminating, Terminated, Failed); the scheduler's explanation of a pod it cannot place, the pod condition
PodScheduled=False and FailedScheduling events (volcano docs/design/scheduling-reason.md); Kubernetes'
garbage collector, which deletes a dependent once every owner in its ownerReferences is gone.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

GROUP, VERSION, PLURAL = "batch.volcano.sh", "v1alpha1", "jobs"
# Volcano's phases of a job that will not run again (it restarts a Failed task's job itself until maxRetry).
ENDED = frozenset({"Completed", "Failed", "Aborted", "Terminated"})
# Phases after which a retried step must submit anew: this job's attempt is over and did not succeed.
UNSUCCESSFUL = ENDED - {"Completed"}
LABEL_PREFIX = "mega3d.io/"
# A request that gets no answer within this is an outage like any other, retried by the caller.
REQUEST_TIMEOUT_S = 30.0
LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def label_value(text: str) -> str:
    """The text as a Kubernetes label value (63 characters of [-A-Za-z0-9_.], alphanumeric at both ends);
    one that had to change ends in a hash of the whole, so different texts keep different values."""
    if LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    safe = re.sub(r"[^-A-Za-z0-9_.]+", "-", text)[: 63 - len(digest) - 1].strip("-_.")
    return f"{safe}-{digest}" if safe else digest


@dataclass(frozen=True)
class JobIdentity:
    """Whom a training job is for: no two steps of any run share one."""

    experiment: str
    run: str
    branch: str
    stage: str
    task: str  # train | evaluate

    def labels(self) -> dict[str, str]:
        fields = {
            "experiment": self.experiment,
            "run": self.run,
            "branch": self.branch,
            "stage": self.stage,
            "task": self.task,
        }
        return {f"{LABEL_PREFIX}{key}": label_value(value) for key, value in fields.items()}

    def selector(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.labels().items())


@dataclass(frozen=True)
class Owner:
    """The step's pod, which owns the jobs it submits."""

    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        # Not a controller and not blocking: blockOwnerDeletion would need update rights on pods/finalizers.
        return {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Owner | None:
        from mega3d.pipelines.settings import STEP_POD_NAME, STEP_POD_UID

        name, uid = environ.get(STEP_POD_NAME), environ.get(STEP_POD_UID)
        return cls(name, uid) if name and uid else None


@dataclass(frozen=True)
class JobState:
    phase: str
    reason: str
    message: str
    restarts: int = 0  # status.retryCount: how often Volcano has restarted the job

    @property
    def ended(self) -> bool:
        return self.phase in ENDED

    def why(self) -> str:
        return ": ".join(part for part in (self.reason, self.message) if part)


# A pod that fails or is evicted (a preempted node's, with notice or without) restarts the whole job, as
# DDP needs every rank. Volcano cannot tell a preemption from a failure: every RestartJob counts in
# status.retryCount, and the job fails once that reaches spec.maxRetry (volcano-sh/volcano v1.10
# pkg/controllers/job/state/running.go: RestartJobAction -> RetryCount++; state/restarting.go: RetryCount
# >= MaxRetry -> Failed, so maxRetry N allows N - 1 restarts); it has no restart that does not count, and
# an exitCode policy sees only the pod's first container, torchrun, which exits 1 whatever its workers
# did (job_controller_handler.go updatePod: ContainerStatuses[0]). So a job may restart as often as its
# launcher allows in all, and the launcher, which can tell the two apart, deletes it once its failures
# have used up max_retries (mega3d.pipelines.launcher.Restarts).
RESTART_POLICIES = (
    {"event": "PodEvicted", "action": "RestartJob"},
    {"event": "PodFailed", "action": "RestartJob"},
)


def restart_on_any_pod_loss(resource: dict[str, Any], restarts: int) -> None:
    """Let Volcano restart the job after any pod's failure or eviction, up to `restarts` times."""
    resource["spec"]["maxRetry"] = restarts + 1
    for task in resource["spec"]["tasks"]:
        task["policies"] = [dict(policy) for policy in RESTART_POLICIES]


def api_client() -> ApiClient:
    """A client configured as TorchX's kubernetes scheduler configures its own: the pod's in-cluster
    service account first, else a kubeconfig."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(client_configuration=configuration)
        except config.ConfigException as error:
            warnings.warn(f"failed to load a kubeconfig: {error}", stacklevel=2)
    return client.ApiClient(configuration)


def finish_resource(resource: dict[str, Any], identity: JobIdentity, owner: Owner | None, ttl_s: int) -> None:
    """Complete the Volcano Job TorchX made: labels, owner, time to live; memory in binary units; each
    container told its node's name, and held to the "restricted" Pod Security level.

    TorchX writes a role's memMB as decimal megabytes ("M"); mega3d's memory_gb is GiB, so 1024 MiB each.
    TorchX has no way to give containers a security context or a downward-API variable; the pod's own
    security context (non-root, seccomp) comes from the launcher's pod overlay.
    """
    from kubernetes.client import (
        V1Capabilities,
        V1EnvVar,
        V1EnvVarSource,
        V1ObjectFieldSelector,
        V1SecurityContext,
    )

    from mega3d.trainer import environment

    metadata = resource["metadata"]
    metadata["labels"] = {**metadata.get("labels", {}), **identity.labels()}
    if owner is not None:
        metadata["ownerReferences"] = [owner.reference()]
    resource["spec"]["ttlSecondsAfterFinished"] = ttl_s
    for task in resource["spec"]["tasks"]:
        for container in task["template"].spec.containers:
            container.security_context = V1SecurityContext(
                allow_privilege_escalation=False, capabilities=V1Capabilities(drop=["ALL"])
            )
            node = V1EnvVarSource(field_ref=V1ObjectFieldSelector(field_path="spec.nodeName"))
            container.env = [*(container.env or []), V1EnvVar(name=environment.NODE_NAME, value_from=node)]
            for amounts in (container.resources.limits, container.resources.requests):
                if amounts and str(amounts.get("memory", "")).endswith("M"):
                    amounts["memory"] = f"{amounts['memory']}i"


class VolcanoJobs:
    """The Volcano jobs of one namespace."""

    def __init__(self, namespace: str, client: ApiClient | None = None) -> None:
        from kubernetes.client import CoreV1Api, CustomObjectsApi

        self.namespace = namespace
        self.client = client or api_client()
        self.custom = CustomObjectsApi(self.client)
        self.core = CoreV1Api(self.client)

    def find_resumable(self, identity: JobIdentity) -> str | None:
        """The newest job of this identity that is running, waiting or has succeeded: a step started again
        follows it rather than training twice."""
        listed = self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            label_selector=identity.selector(),
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        candidates = [
            job
            for job in listed.get("items", [])
            if not job.get("metadata", {}).get("deletionTimestamp") and _state(job).phase not in UNSUCCESSFUL
        ]
        if not candidates:
            return None
        newest = max(candidates, key=lambda job: job["metadata"].get("creationTimestamp", ""))
        return str(newest["metadata"]["name"])

    def adopt(self, name: str, owner: Owner) -> None:
        """Add the step's pod to the job's owners; the job's earlier owners (a step's earlier attempts)
        stay, and the job goes when the last of them does."""
        job = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT_S
        )
        owners = [ref for ref in job["metadata"].get("ownerReferences", []) if ref.get("uid") != owner.uid]
        patch = {
            "metadata": {
                "ownerReferences": [*owners, owner.reference()],
                # Optimistic concurrency: the patch fails if another writer changed the job meanwhile.
                "resourceVersion": job["metadata"].get("resourceVersion"),
            }
        }
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, patch, _request_timeout=REQUEST_TIMEOUT_S
        )

    def state(self, name: str) -> JobState | None:
        """The job's phase and why it is in it; None once the job no longer exists. Fails (ApiException,
        urllib3 errors) on any other answer or none."""
        from kubernetes.client.rest import ApiException

        try:
            job = self.custom.get_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return _state(job)

    def delete(self, name: str) -> None:
        """One request: the job and, in the background, its pods."""
        self.custom.delete_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            propagation_policy="Background",
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def scheduling_problems(self, name: str) -> list[str]:
        """Why the job's pods wait: the scheduler's reason on each unplaced pod, and the warnings recorded
        on its pods (unschedulable, image pulls, quota), each once. Pods carry TorchX's label
        `app.kubernetes.io/instance` = the job's name."""
        pods = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=f"app.kubernetes.io/instance={name}",
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        problems: list[str] = []
        for pod in pods.items:
            for condition in pod.status.conditions or []:
                if condition.type == "PodScheduled" and condition.status == "False":
                    problems.append(
                        f"{condition.reason or 'not scheduled'}: {condition.message or ''}".strip()
                    )
        names = {pod.metadata.name for pod in pods.items}
        events = self.core.list_namespaced_event(
            self.namespace, field_selector="type=Warning", _request_timeout=REQUEST_TIMEOUT_S
        )
        for event in events.items:
            involved = event.involved_object
            if involved.name in names or (involved.name or "").startswith(f"{name}-"):
                problems.append(f"{event.reason}: {event.message}")
        return list(dict.fromkeys(problems))


def _state(job: Mapping[str, Any]) -> JobState:
    status = job.get("status", {})
    state = status.get("state", {})
    return JobState(
        state.get("phase") or "Pending",
        state.get("reason") or "",
        state.get("message") or "",
        int(status.get("retryCount") or 0),
    )
