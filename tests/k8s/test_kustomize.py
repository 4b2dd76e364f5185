"""A small kustomize renderer for the tests (no kustomize binary here), and tests of the renderer itself.

It renders what k8s/ uses, the way kustomize v5 does: `resources` (files and directories, recursively),
`namespace`, `labels` (metadata only) and `configMapGenerator` with fixed names. Anything else in a
kustomization is refused, so that a manifest the renderer does not understand fails the tests instead of
being checked half-rendered.

kustomize's namespace rules, reproduced: every object gets the namespace except the built-in kinds that are
cluster-scoped (a custom kind such as Volcano's Queue gets it too: kustomize cannot know the scope of a
custom resource); a RoleBinding subject that names a ServiceAccount of the build, by name and original
namespace, follows that account into its new namespace (kustomize's name-reference transformer); subjects
named `default` get the namespace too (its namespace transformer); other subjects are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

KUSTOMIZATION_FILE = "kustomization.yaml"
# Built-in kinds that have no namespace (kustomize's own list, the ones a deployment of this kind could hold).
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "APIService",
    }
)
KNOWN_FIELDS = frozenset(
    {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator", "generatorOptions"}
)


class KustomizeError(ValueError):
    pass


@dataclass
class Rendered:
    """One object of a build, with the namespace its file gave it (kustomize's "original" id)."""

    resource: dict[str, Any]
    original_namespace: str


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build DIRECTORY` would print (in the order the kustomization lists them)."""
    return [item.resource for item in _build(directory)]


def _build(directory: Path) -> list[Rendered]:
    kustomization = yaml.safe_load((directory / KUSTOMIZATION_FILE).read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(
            f"{directory / KUSTOMIZATION_FILE}: the test renderer does not know {sorted(unknown)}"
        )
    items: list[Rendered] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            items.extend(_build(path))
        else:
            items.extend(
                Rendered(document, document.get("metadata", {}).get("namespace", ""))
                for document in yaml.safe_load_all(path.read_text())
                if document
            )
    items.extend(_generated_config_maps(directory, kustomization))
    for pairs in kustomization.get("labels", []):
        if set(pairs) - {"pairs"}:
            raise KustomizeError(f"labels: only `pairs` (metadata labels) is supported, not {sorted(pairs)}")
        for item in items:
            item.resource.setdefault("metadata", {}).setdefault("labels", {}).update(pairs["pairs"])
    if "namespace" in kustomization:
        _set_namespace(items, kustomization["namespace"])
    return items


def _generated_config_maps(directory: Path, kustomization: dict[str, Any]) -> list[Rendered]:
    options = kustomization.get("generatorOptions", {})
    generated = []
    for generator in kustomization.get("configMapGenerator", []):
        unknown = set(generator) - {"name", "files", "options"}
        if unknown:
            raise KustomizeError(f"configMapGenerator {generator['name']}: unsupported {sorted(unknown)}")
        merged = {**options, **generator.get("options", {})}
        labels = {**options.get("labels", {}), **generator.get("options", {}).get("labels", {})}
        if not merged.get("disableNameSuffixHash"):
            raise KustomizeError(f"configMapGenerator {generator['name']}: only fixed names are supported")
        data = {}
        for entry in generator.get("files", []):
            key, _, file = entry.rpartition("=") if "=" in entry else ("", "", entry)
            data[key or Path(file).name] = (directory / file).read_text()
        metadata: dict[str, Any] = {"name": generator["name"]}
        if labels:
            metadata["labels"] = dict(labels)
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        generated.append(Rendered(config_map, ""))
    return generated


def _set_namespace(items: list[Rendered], namespace: str) -> None:
    accounts = {
        (item.resource["metadata"]["name"], item.original_namespace): item
        for item in items
        if item.resource["kind"] == "ServiceAccount"
    }
    for item in items:
        if item.resource["kind"] not in CLUSTER_SCOPED_KINDS:
            item.resource["metadata"]["namespace"] = namespace
    for item in items:
        if item.resource["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        for subject in item.resource.get("subjects", []):
            if subject.get("kind") != "ServiceAccount":
                continue
            account = accounts.get((subject["name"], subject.get("namespace", "")))
            if account is not None:
                subject["namespace"] = account.resource["metadata"]["namespace"]
            elif subject["name"] == "default":
                subject["namespace"] = namespace


# The renderer's own tests, on small kustomizations written for them.


def write(path: Path, documents: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(documents, list):
        path.write_text(yaml.safe_dump_all(documents))
    else:
        path.write_text(yaml.safe_dump(documents))
    return path


ACCOUNT = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner", "namespace": "base"}}
BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "RoleBinding",
    "metadata": {"name": "runner", "namespace": "base"},
    "subjects": [
        {"kind": "ServiceAccount", "name": "runner", "namespace": "base"},
        {"kind": "ServiceAccount", "name": "default", "namespace": "base"},
        {"kind": "ServiceAccount", "name": "elsewhere", "namespace": "kubeflow"},
    ],
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "runner"},
}
QUEUE = {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "Queue", "metadata": {"name": "q"}}
CLUSTER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "c"},
}


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    """An overlay that moves a base (namespace `base`) into namespace `team`."""
    write(tmp_path / "base" / "objects.yaml", [ACCOUNT, BINDING, QUEUE, CLUSTER_ROLE])
    (tmp_path / "base" / "board.json").write_text('{"title": "t"}')
    write(
        tmp_path / "base" / KUSTOMIZATION_FILE,
        {
            "namespace": "base",
            "labels": [{"pairs": {"app.kubernetes.io/part-of": "x"}}],
            "resources": ["objects.yaml"],
            "configMapGenerator": [
                {
                    "name": "board",
                    "files": ["board.json", "renamed.json=board.json"],
                    "options": {"disableNameSuffixHash": True, "labels": {"grafana_dashboard": "1"}},
                }
            ],
        },
    )
    write(tmp_path / "overlay" / KUSTOMIZATION_FILE, {"namespace": "team", "resources": ["../base"]})
    return tmp_path / "overlay"


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


def test_an_overlay_moves_namespaced_objects_and_the_subjects_of_its_own_accounts(overlay: Path) -> None:
    objects = by_kind(render(overlay))
    assert objects["ServiceAccount"]["metadata"]["namespace"] == "team"
    assert objects["RoleBinding"]["metadata"]["namespace"] == "team"
    assert [s["namespace"] for s in objects["RoleBinding"]["subjects"]] == ["team", "team", "kubeflow"]
    assert objects["ConfigMap"]["metadata"]["namespace"] == "team"
    assert "namespace" not in objects["ClusterRole"]["metadata"]
    # kustomize cannot tell that a custom kind is cluster-scoped, and so neither does the renderer.
    assert objects["Queue"]["metadata"]["namespace"] == "team"


def test_generated_config_maps_and_labels(overlay: Path) -> None:
    objects = by_kind(render(overlay))
    board = objects["ConfigMap"]
    assert board["metadata"]["name"] == "board"
    assert board["metadata"]["labels"] == {"grafana_dashboard": "1", "app.kubernetes.io/part-of": "x"}
    assert board["data"] == {"board.json": '{"title": "t"}', "renamed.json": '{"title": "t"}'}
    assert all(obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "x" for obj in objects.values())


def test_the_renderer_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    write(tmp_path / "objects.yaml", [ACCOUNT])
    write(tmp_path / KUSTOMIZATION_FILE, {"resources": ["objects.yaml"], "patches": [{"path": "p.yaml"}]})
    with pytest.raises(KustomizeError, match="patches"):
        render(tmp_path)
    write(
        tmp_path / KUSTOMIZATION_FILE, {"configMapGenerator": [{"name": "hashed", "files": ["objects.yaml"]}]}
    )
    with pytest.raises(KustomizeError, match="fixed names"):
        render(tmp_path)
