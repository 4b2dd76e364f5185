from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"
KUBERNETES_VERSION = "1.30.0"


def documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}#{i}", doc)
        for path in sorted(K8S.glob("*.yaml"))
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc
    ]


@pytest.mark.parametrize(("where", "document"), documents(), ids=[where for where, _ in documents()])
def test_manifests_match_the_kubernetes_schemas(where: str, document: dict) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_schema_check_catches_a_mistake() -> None:
    _, role = next((w, d) for w, d in documents() if d["kind"] == "Role")
    broken = {**role, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": "get"}]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
