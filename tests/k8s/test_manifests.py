"""The Kubernetes assets under k8s/, rendered as `kubectl apply -k k8s/base` would render them.

Core kinds are checked against Kubernetes' own schemas (kubernetes-validate), custom resources against the
openAPIV3Schema of their CustomResourceDefinition, kept under tests/k8s/schemas/, with unknown fields
rejected as `kubectl apply` (strict field validation) rejects them. Then what the objects mean: the
launcher's RBAC is exactly what it uses, training pods get no API access, the PodMonitor selects the pods
TorchX makes of mega3d's trainer and the NetworkPolicy lets Prometheus reach every port it scrapes, a
namespace override moves everything. kubernetes-validate's schemas of a pinned Kubernetes release
(KUBERNETES_VERSION, generated from that release's OpenAPI spec) check the core kinds, NetworkPolicy among
them.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from torchx.schedulers.kubernetes_scheduler import pod_labels

from mega3d.components.train import trainer
from mega3d.pipelines.settings import Deployment
from tests.k8s.test_kustomize import render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
BASE = K8S / "base"
SCHEMAS = Path(__file__).parent / "schemas"
KUBERNETES_VERSION = "1.30.0"
NAMESPACE = "mega3d"
# The CustomResourceDefinition that defines each custom kind the base uses.
CRDS = {
    ("scheduling.volcano.sh/v1beta1", "Queue"): SCHEMAS / "scheduling.volcano.sh_queues.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS / "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "monitoring.coreos.com_prometheusrules.yaml",
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@functools.cache
def base_objects() -> tuple[dict[str, Any], ...]:
    return tuple(render(BASE))


def objects() -> list[dict[str, Any]]:
    """A fresh copy of the rendered base, for tests that change what they get."""
    return [yaml.safe_load(yaml.safe_dump(obj)) for obj in base_objects()]


def object_id(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [obj for obj in objects() if obj["kind"] == kind and name in (None, obj["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[object_id(o) for o in found]}"
    return found[0]


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD's version that `api_version` names, closed to unknown fields."""
    crd = yaml.safe_load(CRDS[(api_version, kind)].read_text())
    assert crd["spec"]["names"]["kind"] == kind
    assert crd["spec"]["group"] == api_version.split("/")[0]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == api_version.split("/")[1])
    return closed(version["schema"]["openAPIV3Schema"])


def closed(schema: Any) -> Any:
    """`additionalProperties: false` wherever a schema lists an object's properties and keeps no unknown
    fields: the API server's strict field validation, which plain JSON Schema does not do."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in schema and "additionalProperties" not in schema and not keeps_unknown:
        result["additionalProperties"] = False
    return result


def validate(obj: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError or kubernetes_validate.ValidationError where the API server would
    refuse the object."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key in CRDS:
        jsonschema.Draft4Validator(crd_schema(*key)).validate(obj)
        # A CRD's schema leaves metadata to the API server: check it as the metadata of a core object.
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
            KUBERNETES_VERSION,
            strict=True,
        )
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    metadata = obj["metadata"]
    if not (DNS_SUBDOMAIN.match(metadata["name"]) and len(metadata["name"]) <= 253):
        raise jsonschema.ValidationError(f"metadata.name {metadata['name']!r} is not a DNS subdomain")
    for name, value in metadata.get("labels", {}).items():
        if not (LABEL_NAME.match(name) and LABEL_VALUE.match(value)):
            raise jsonschema.ValidationError(f"label {name}: {value!r} is not a valid label")


@pytest.mark.parametrize("obj", base_objects(), ids=object_id)
def test_every_object_matches_its_schema(obj: dict[str, Any]) -> None:
    validate(obj)


def test_every_manifest_under_k8s_is_part_of_the_build() -> None:
    """A manifest no kustomization lists would be neither deployed nor checked."""
    listed = {
        (kustomization.parent / entry).resolve()
        for kustomization in K8S.rglob("kustomization.yaml")
        for entry in yaml.safe_load(kustomization.read_text()).get("resources", [])
    }
    manifests = {path.resolve() for path in K8S.rglob("*.yaml") if path.name != "kustomization.yaml"}
    assert manifests - listed == set()
    assert {obj["kind"] for obj in base_objects()} == {
        "Queue",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PodMonitor",
        "NetworkPolicy",
        "PrometheusRule",
        "ConfigMap",
    }


BROKEN = [
    ("Queue", ["spec", "weight"], "heavy"),  # an integer
    ("Queue", ["spec", "capabilty"], {"nvidia.com/gpu": 8}),  # misspelled: strict validation refuses it
    ("Queue", ["spec", "capability", "nvidia.com/gpu"], "eight"),  # not a quantity
    ("PodMonitor", ["spec", "podMetricsEndpoints", 0, "port"], 9400),  # a port name, not a number
    ("PodMonitor", ["spec", "podMetricsEndpoints", 0, "interval"], "30 seconds"),
    ("PrometheusRule", ["spec", "groups", 0, "rules", 0, "for"], "5 minutes"),
    ("PrometheusRule", ["spec", "groups", 0, "rules", 0, "severity"], "critical"),  # belongs under labels
    ("Role", ["rules", 0, "verbs"], "get"),
    ("RoleBinding", ["roleRef", "kind"], None),
    ("ServiceAccount", ["automountServiceAccountToken"], "no"),
    ("ConfigMap", ["data", "mega3d-dashboard.json"], {"title": "a mapping, not a string"}),
    ("NetworkPolicy", ["spec", "ingress", 0, "form"], []),  # misspelled `from`
    ("NetworkPolicy", ["spec", "policyTypes"], "Ingress"),  # a list
    ("NetworkPolicy", ["spec", "ingress", 0, "ports", 0, "port"], {"name": "metrics-0"}),  # int or string
    ("NetworkPolicy", ["spec", "ingress", 0, "from", 0, "namespaceSelector", "matchLabels"], ["monitoring"]),
]


@pytest.mark.parametrize(("kind", "path", "value"), BROKEN, ids=lambda x: x if isinstance(x, str) else None)
def test_schema_checks_catch_mistakes(kind: str, path: list[str | int], value: Any) -> None:
    obj = next(o for o in objects() if o["kind"] == kind)
    validate(obj)
    parent: Any = obj
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(obj)


def test_metadata_checks_catch_mistakes() -> None:
    for metadata in (
        {"name": "Mega3D"},
        {"name": "q", "labels": {"team": "video team"}},
        {"name": "q", "nme": "x"},
    ):
        queue = {**the("Queue"), "metadata": metadata}
        with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
            validate(queue)


# Least privilege.

LAUNCHER_GRANTS = {
    # TorchX's kubernetes scheduler and mega3d.pipelines.volcano, as pipelines/launcher.py uses them
    # (tests/pipelines/test_kubernetes.py records every request of a run against this list).
    ("batch.volcano.sh", "jobs", "create"),
    ("batch.volcano.sh", "jobs", "get"),
    ("batch.volcano.sh", "jobs", "list"),
    ("batch.volcano.sh", "jobs", "patch"),
    ("batch.volcano.sh", "jobs", "delete"),
    ("batch.volcano.sh", "jobs/status", "get"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods/log", "get"),
    ("", "events", "list"),
}


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    granted = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"resourceNames or URLs in {rule}"
        granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return granted


def test_the_launcher_role_grants_exactly_what_the_launcher_uses() -> None:
    assert grants(the("Role", "mega3d-launcher")) == LAUNCHER_GRANTS


def test_nothing_is_granted_cluster_wide_or_by_wildcard() -> None:
    kinds = {obj["kind"] for obj in objects()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    assert [obj for obj in objects() if obj["kind"] == "Role"] == [the("Role", "mega3d-launcher")]
    assert not any("*" in part for grant in grants(the("Role")) for part in grant)


def test_the_launcher_role_is_bound_to_the_launcher_account_only() -> None:
    binding = the("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "mega3d-launcher",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mega3d-launcher", "namespace": NAMESPACE}
    ]
    assert the("ServiceAccount", "mega3d-launcher")["metadata"]["namespace"] == NAMESPACE


def test_training_pods_get_no_kubernetes_api_access() -> None:
    account = the("ServiceAccount", "mega3d-trainer")
    assert account["automountServiceAccountToken"] is False
    bound = [s["name"] for obj in objects() if obj["kind"] == "RoleBinding" for s in obj["subjects"]]
    assert "mega3d-trainer" not in bound


def test_least_privilege_checks_catch_an_extra_grant() -> None:
    role = the("Role", "mega3d-launcher")
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    assert grants(role) != LAUNCHER_GRANTS


# Namespaces.


def test_everything_is_labelled_and_in_the_namespace_of_the_kustomization() -> None:
    # The Queue too: kustomize cannot tell that a custom kind is cluster-scoped (the API server drops it).
    assert yaml.safe_load((BASE / "kustomization.yaml").read_text())["namespace"] == NAMESPACE
    for obj in objects():
        assert obj["metadata"]["namespace"] == NAMESPACE, object_id(obj)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mega3d", object_id(obj)


def test_the_default_settings_are_what_the_base_creates() -> None:
    """Settings left at their defaults find the base's namespace, queue, its GPUs and the launcher account."""
    defaults = Deployment()
    queue = the("Queue", defaults.queue)
    assert defaults.namespace == yaml.safe_load((BASE / "kustomization.yaml").read_text())["namespace"]
    assert defaults.queue_gpus == int(queue["spec"]["capability"]["nvidia.com/gpu"])
    assert the("ServiceAccount", defaults.run_service_account)["metadata"]["namespace"] == defaults.namespace


def test_an_overlay_moves_everything_into_its_namespace(tmp_path: Path) -> None:
    overlay = tmp_path / "team-video"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"namespace": "team-video", "resources": [os.path.relpath(BASE, overlay)]})
    )
    moved = render(overlay)
    assert {obj["metadata"]["namespace"] for obj in moved} == {"team-video"}
    binding = next(obj for obj in moved if obj["kind"] == "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mega3d-launcher", "namespace": "team-video"}
    ]


# Monitoring.


def test_the_pod_monitor_selects_the_pods_torchx_makes_of_mega3d_training() -> None:
    selector = the("PodMonitor")["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    for experiment, nodes in (("quickstart-pretrain", 2), ("k700-mit-ucf101", 4)):
        app = trainer("train", "--spec", "spec.json", name=experiment, nnodes=nodes, gpus=8, nproc_per_node=8)
        for role_index, role in enumerate(app.roles):
            for replica in range(role.num_replicas):
                labels = pod_labels(app, role_index, role, replica, f"{experiment}-x7k2q9")
                assert selector["matchLabels"].items() <= labels.items(), labels


def test_the_pod_monitor_scrapes_one_port_per_local_rank() -> None:
    endpoints = the("PodMonitor")["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == [f"metrics-{rank}" for rank in range(8)]
    assert {e["path"] for e in endpoints} == {"/metrics"}
    # Container port names are IANA service names: at most 15 characters.
    assert all(len(e["port"]) <= 15 for e in endpoints)


def unadmitted_scrapes(policy: dict[str, Any], monitor: dict[str, Any]) -> list[str]:
    """What keeps the NetworkPolicy from admitting the PodMonitor's scrapes, from Prometheus only: it must
    select exactly the pods the PodMonitor selects, and admit every port it scrapes from one peer that is
    both the monitoring namespace and Prometheus' pods (two peers would each admit alone)."""
    problems = []
    spec = policy["spec"]
    if spec["podSelector"] != monitor["spec"]["selector"]:
        problems.append(f"selects {spec['podSelector']}, the PodMonitor {monitor['spec']['selector']}")
    if spec.get("policyTypes") != ["Ingress"] or "egress" in spec:
        problems.append(f"policyTypes {spec.get('policyTypes')}: only ingress is to change")
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    scraped = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    for rule in spec.get("ingress", []):
        if rule.get("from") != [prometheus]:
            problems.append(f"admits {rule.get('from')}, not only Prometheus' pods")
        admitted = {port["port"] for port in rule.get("ports", []) if port.get("protocol", "TCP") == "TCP"}
        if admitted != scraped:
            problems.append(f"admits TCP ports {sorted(admitted)}, the PodMonitor scrapes {sorted(scraped)}")
    if not spec.get("ingress"):
        problems.append("no ingress rule")
    return problems


def test_the_network_policy_admits_prometheus_to_every_port_the_pod_monitor_scrapes() -> None:
    assert unadmitted_scrapes(the("NetworkPolicy"), the("PodMonitor")) == []
    # The ports the trainer component declares, on a node with the most ranks the PodMonitor scrapes.
    app = trainer(
        "train", "--spec", "spec.json", name="k700", nnodes=2, gpus=8, nproc_per_node=8, metrics_port=9400
    )
    admitted = {port["port"] for port in the("NetworkPolicy")["spec"]["ingress"][0]["ports"]}
    assert {name for name in app.roles[0].port_map if name.startswith("metrics-")} == admitted


def test_the_network_policy_check_catches_drift() -> None:
    monitor, policy = the("PodMonitor"), the("NetworkPolicy")
    monitor["spec"]["podMetricsEndpoints"].append({"port": "metrics-8", "path": "/metrics"})
    assert unadmitted_scrapes(policy, monitor)
    policy = the("NetworkPolicy")
    policy["spec"]["podSelector"]["matchLabels"]["torchx.pytorch.org/role-name"] = "worker"
    assert unadmitted_scrapes(policy, the("PodMonitor"))
    policy = the("NetworkPolicy")
    peer = policy["spec"]["ingress"][0]["from"][0]
    policy["spec"]["ingress"][0]["from"] = [
        {"namespaceSelector": peer["namespaceSelector"]},
        {"podSelector": peer["podSelector"]},
    ]
    assert unadmitted_scrapes(policy, the("PodMonitor"))
    policy = the("NetworkPolicy")
    policy["spec"]["ingress"][0]["ports"][0]["protocol"] = "UDP"
    assert unadmitted_scrapes(policy, the("PodMonitor"))


def test_the_dashboard_is_generated_for_grafanas_sidecar() -> None:
    config_map = the("ConfigMap", "mega3d-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = BASE / "grafana" / "mega3d-dashboard.json"
    assert config_map["data"] == {"mega3d-dashboard.json": dashboard.read_text()}
    # ConfigMaps hold at most 1 MiB, and kubectl apply keeps a second copy in an annotation (256 KiB).
    assert len(dashboard.read_bytes()) < 200 * 1024


# Pods: none in the base today; any added later must run as non-root with a read-only root filesystem.


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    candidates = [spec] if obj["kind"] == "Pod" else []
    candidates += [
        spec.get("template", {}).get("spec"),
        spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec"),
    ]
    return [c for c in candidates if c and "containers" in c]


def insecure_containers(obj: dict[str, Any]) -> list[str]:
    found = []
    for pod in pod_specs(obj):
        pod_context = pod.get("securityContext", {})
        for container in pod["containers"] + pod.get("initContainers", []):
            context = {**pod_context, **container.get("securityContext", {})}
            if not (context.get("runAsNonRoot") and context.get("readOnlyRootFilesystem")):
                found.append(container["name"])
    return found


def test_every_container_runs_as_non_root_on_a_read_only_root_filesystem() -> None:
    assert [(object_id(obj), insecure_containers(obj)) for obj in objects() if insecure_containers(obj)] == []


def test_the_container_check_catches_a_root_container() -> None:
    deployment: dict[str, Any] = {
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "template": {"spec": {"securityContext": {"runAsNonRoot": True}, "containers": [{"name": "app"}]}}
        },
    }
    assert insecure_containers(deployment) == ["app"]
    secured = {"securityContext": {"readOnlyRootFilesystem": True}}
    deployment["spec"]["template"]["spec"]["containers"][0].update(secured)
    assert insecure_containers(deployment) == []
