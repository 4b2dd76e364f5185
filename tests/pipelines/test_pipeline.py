from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from typer.testing import CliRunner

from mega3d.cli.main import app
from mega3d.pipelines.pipeline import compile_pipeline
from mega3d.pipelines.settings import STEP_POD_NAME, STEP_POD_UID, Deployment
from mega3d.trainer.spec import load_spec
from tests.conftest import QUICKSTART, ROOT, mega3d

GOLDEN = Path(__file__).parent / "golden" / "quickstart.yaml"


def compiled(tmp_path: Path, deployment: Deployment | None = None) -> str:
    path = tmp_path / "pipeline.yaml"
    compile_pipeline(load_spec(QUICKSTART), str(path), deployment)
    return path.read_text()


def pipeline_spec(text: str) -> pipeline_spec_pb2.PipelineSpec:
    """The IR's first document (the second holds the Kubernetes settings of the steps)."""
    return json_format.ParseDict(next(yaml.safe_load_all(text)), pipeline_spec_pb2.PipelineSpec())


def test_ir_parses_into_a_pipeline_spec(tmp_path: Path) -> None:
    spec = pipeline_spec(compiled(tmp_path))
    assert spec.pipeline_info.name == "mega3d-quickstart"
    tasks = spec.root.dag.tasks
    assert sorted(tasks) == ["condition-branches-1", "prepare-branch", "prepare-run"]
    assert list(tasks["prepare-branch"].dependent_tasks) == ["prepare-run"]
    dags = {
        name: component.dag.tasks for name, component in spec.components.items() if component.HasField("dag")
    }
    new_data, trained_before = dags["comp-condition-4"], dags["comp-condition-5"]
    assert sorted(new_data) == ["for-loop-3", "pretrain", "register"]
    assert list(new_data["register"].dependent_tasks) == ["for-loop-3"]  # after every target
    assert new_data["for-loop-3"].parameter_iterator.items.raw == '["motion-c"]'
    targets = dags["comp-for-loop-3"]
    assert sorted(targets["evaluate"].dependent_tasks) == ["finetune", "prepare-target"]
    assert targets["finetune"].task_info.name == "finetune"
    assert list(trained_before) == ["skip"]
    assert all(not task.caching_options.enable_cache for task in [*tasks.values(), *targets.values()])
    parameters = spec.root.input_definitions.parameters
    assert sorted(parameters) == ["cluster_json", "run_id", "scheduler", "skip_if_trained", "spec_json"]
    assert parameters["scheduler"].default_value.string_value == "kubernetes"
    outputs = spec.components["comp-pretrain"].output_definitions.artifacts
    assert outputs["model"].artifact_type.schema_title == "system.Model"
    assert outputs["metrics"].artifact_type.schema_title == "system.Metrics"
    shown = spec.components["comp-evaluate"].output_definitions.artifacts  # what the Kubeflow UI renders
    assert {name: artifact.artifact_type.schema_title for name, artifact in shown.items()} == {
        "metrics": "system.Metrics",
        "confusion": "system.ClassificationMetrics",
        "confusion_csv": "system.Artifact",
        "classes": "system.Markdown",
        "curves": "system.HTML",
    }


def test_steps_are_light_non_root_and_reach_storage_through_a_secret_reference(tmp_path: Path) -> None:
    deployment = Deployment(credentials_secret="gcs-key", image="registry.example/mega3d:1.0")
    _, platform = yaml.safe_load_all(compiled(tmp_path, deployment))
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == 8  # every step
    for executor in executors.values():
        assert executor["secretAsVolume"] == [
            {"secretName": "gcs-key", "secretNameParameter": {"runtimeValue": {"constant": "gcs-key"}},
             "mountPath": "/var/secrets/mega3d", "optional": False}
        ]  # fmt: skip
        assert executor["securityContext"] == {"runAsNonRoot": True}
    spec = pipeline_spec(compiled(tmp_path, deployment))
    for executor in spec.deployment_spec.fields["executors"].struct_value.fields.values():
        container = executor.struct_value.fields["container"].struct_value.fields
        assert container["image"].string_value == "registry.example/mega3d:1.0"
        resources = container["resources"].struct_value.fields
        assert resources["cpuRequest"].number_value == 0.25 and "accelerator" not in resources
        env = {e.struct_value.fields["name"].string_value: e.struct_value.fields["value"].string_value
               for e in container["env"].list_value.values}  # fmt: skip
        assert env == {"GOOGLE_APPLICATION_CREDENTIALS": "/var/secrets/mega3d/key.json"}


def test_steps_run_in_the_step_image_and_training_pods_get_the_training_image(tmp_path: Path) -> None:
    deployment = Deployment(
        image="registry.example/mega3d-trainer:1.0", step_image="registry.example/launcher:1.0"
    )
    text = compiled(tmp_path, deployment)
    spec = pipeline_spec(text)
    images = {
        name: executor.struct_value.fields["container"].struct_value.fields["image"].string_value
        for name, executor in spec.deployment_spec.fields["executors"].struct_value.fields.items()
    }
    assert len(images) == 8 and set(images.values()) == {"registry.example/launcher:1.0"}
    cluster_json = spec.root.input_definitions.parameters["cluster_json"].default_value.string_value
    assert Deployment.model_validate_json(cluster_json).image == "registry.example/mega3d-trainer:1.0"


def test_the_steps_that_launch_jobs_and_only_they_know_their_own_pod(tmp_path: Path) -> None:
    """The downward API hands the step's pod name and UID to the steps that submit TorchX jobs."""
    for text in (compiled(tmp_path), GOLDEN.read_text()):
        _, platform = yaml.safe_load_all(text)
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        own_pod = {
            name: executor["fieldPathAsEnv"]
            for name, executor in executors.items()
            if "fieldPathAsEnv" in executor
        }
        assert own_pod == {
            name: [
                {"name": STEP_POD_NAME, "fieldPath": "metadata.name"},
                {"name": STEP_POD_UID, "fieldPath": "metadata.uid"},
            ]
            for name in ("exec-pretrain", "exec-finetune", "exec-evaluate")
        }


EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def golden_of(example: Path) -> Path:
    """examples/quickstart.yaml: golden/quickstart.yaml; examples/paper/4.3-x.yaml: golden/paper-4.3-x.yaml"""
    return GOLDEN.parent / "-".join(example.relative_to(ROOT / "examples").parts)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: str(path.relative_to(ROOT / "examples")))
def test_every_example_compiles_deterministically_to_its_golden_file(example: Path, tmp_path: Path) -> None:
    """After an intended change: UPDATE_GOLDEN=1 pytest tests/pipelines."""
    texts = []
    for attempt in ("first", "again"):
        path = tmp_path / f"{attempt}.yaml"
        compile_pipeline(load_spec(example), str(path))
        texts.append(path.read_text())
    assert texts[0] == texts[1]
    pipeline_spec(texts[0])  # the IR parses into a PipelineSpec
    if os.environ.get("UPDATE_GOLDEN"):
        golden_of(example).write_text(texts[0])
    assert texts[0] == golden_of(example).read_text()


def test_compile_command_writes_the_file_or_nothing(tmp_path: Path) -> None:
    output = tmp_path / "out.yaml"
    result = mega3d("compile", str(QUICKSTART), "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and output.read_text() == GOLDEN.read_text()

    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text().replace("epochs: 30", "epochs: -1"))
    failed = mega3d("compile", str(bad), "-o", str(tmp_path / "never.yaml"))
    assert failed.returncode == 2 and "pretrain.epochs" in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "out.yaml"]


def test_compile_refuses_outputs_it_cannot_write(tmp_path: Path) -> None:
    for output, message in (
        (tmp_path / "pipeline.txt", "must end in .yaml"),
        (tmp_path / "missing" / "pipeline.yaml", "its directory does not exist"),
        # A file system that takes no new files (as a read-only one, whoever runs the tests: root too).
        (Path("/proc/pipeline.yaml"), "--output /proc/pipeline.yaml: cannot write it ("),
    ):
        result = mega3d("compile", str(QUICKSTART), "-o", str(output))
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failed_compilation_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mega3d.pipelines.pipeline

    output = tmp_path / "pipeline.yaml"
    output.write_text("the previous pipeline")

    def half_write_then_fail(spec: object, path: str) -> None:
        Path(path).write_text("half a pipe")
        raise RuntimeError("compiler failed")

    monkeypatch.setattr(mega3d.pipelines.pipeline, "compile_pipeline", half_write_then_fail)
    with pytest.raises(RuntimeError, match="compiler failed"):
        CliRunner().invoke(app, ["compile", str(QUICKSTART), "-o", str(output)], catch_exceptions=False)
    assert output.read_text() == "the previous pipeline"
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline.yaml"]
