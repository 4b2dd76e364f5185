"""What the pipeline steps do. The KFP components in `steps` are thin shells that call these functions.

Artifacts are small pointers: the bytes (indexes, checkpoints, metrics) live under the spec's storage root,
where the trainer pods can reach them; the artifact's metadata records the URIs, so the Kubeflow UI shows
the lineage and where each file is.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Protocol

from mega3d.components.train import trainer
from mega3d.pipelines import registry, reports
from mega3d.pipelines.actions import FINETUNE_ONLY, PRETRAIN_THEN_FINETUNE, SKIP
from mega3d.pipelines.launcher import (
    KUBERNETES_SCHEDULER,
    LOCAL_SCHEDULER,
    cluster_app,
    free_port,
    job_name,
    launch,
    scheduler_cfg,
)
from mega3d.pipelines.settings import Deployment
from mega3d.trainer import layout, storage
from mega3d.trainer.data.format import DatasetError, DatasetIndex, index_uri, load_index, merge, save_index
from mega3d.trainer.data.ops import subset
from mega3d.trainer.spec import PRETRAIN, Branch, ExperimentSpec, is_checkpoint_uri, spec_from_json

TRAINED_METRICS = (
    "clip_accuracy",
    "video_top1",
    "video_top5",
    "mean_class_accuracy",  # single-label datasets
    "mAP",  # multi-label datasets
    "n_videos",
    "n_clips",
    "world_size",
    "seconds",
    "unreadable",  # clips that could not be decoded, skipped (training and evaluation)
)


class ArtifactLike(Protocol):
    path: str
    metadata: dict[str, Any]


class MetricsLike(Protocol):
    def log_metric(self, metric: str, value: float) -> None: ...


def _write_pointer(artifact: ArtifactLike, **metadata: Any) -> None:
    artifact.metadata.update(metadata)
    with open(artifact.path, "w") as out:
        json.dump(metadata, out, indent=1, sort_keys=True)


def ensure_dataset(spec: ExperimentSpec, name: str) -> str:
    """The dataset's index URI; a synthetic dataset is created on first use."""
    uri = spec.dataset_uri(name)
    if not storage.exists(index_uri(uri)):
        params = spec.datasets[name].synthetic
        if params is None:
            raise DatasetError(f"datasets.{name}: no dataset index at {index_uri(uri)}")
        from mega3d.trainer.data.synth import synthesize

        print(f"synthesizing dataset {name} at {uri}", flush=True)
        synthesize(uri, params)
    return index_uri(uri)


def prepare_run(spec_json: str, run_id: str, run: ArtifactLike) -> None:
    """Keep the spec in the run directory, and make sure every dataset the run uses exists: synthetic ones
    are made here, once, before branches and targets run side by side."""
    spec = spec_from_json(spec_json)
    run_dir = layout.run_dir(spec, run_id)
    storage.write_bytes(storage.join(run_dir, layout.SPEC_FILE), spec_json.encode())
    used = {name for branch in spec.branches() for name in branch.pretrain_datasets}
    used |= {stage.dataset for stage in spec.finetune}
    for name in sorted(used):
        ensure_dataset(spec, name)
    branches = [branch.name for branch in spec.branches()]
    if branches != [""]:
        print(f"sweep: {len(branches)} branches: {', '.join(branches)}", flush=True)
    _write_pointer(run, run_dir=run_dir, run_id=run_id, datasets=sorted(used))


def branch_spec(spec_json: str, name: str) -> tuple[ExperimentSpec, Branch]:
    """The spec as branch `name` trains it, and the branch."""
    spec = spec_from_json(spec_json)
    branch = next(branch for branch in spec.branches() if branch.name == name)
    return spec.for_branch(branch), branch


def _describe(stage: str, names: list[str], index: DatasetIndex, split: str) -> dict[str, Any]:
    """Check that the stage's data has what training and evaluation need; say what it is."""
    for needed in ("training", split):
        if not len(index.rows(needed)):  # found before any training, not after the last epoch
            raise DatasetError(f"{stage}: {'+'.join(names)} has no {needed} videos")
    print(
        f"{stage}: {len(index.classes)} classes, {len(index.rows('training'))} training and "
        f"{len(index.rows('validation'))} validation videos from {'+'.join(names)}",
        flush=True,
    )
    return {
        "datasets": names,
        "classes": len(index.classes),
        "videos": len(index),
        "fingerprint": index.fingerprint,
    }


def prepare_branch(
    spec_json: str, name: str, skip_if_trained: bool, run: ArtifactLike, data: ArtifactLike
) -> str:
    """A branch's pretraining data: the merge of its datasets (and its subset), as an index that points at
    the datasets' shards (no video is copied). Returns SKIP when `skip_if_trained` and the registry holds
    a model of this branch trained on data with the same fingerprint, else what the branch trains:
    PRETRAIN_THEN_FINETUNE, or FINETUNE_ONLY for a branch without pretraining."""
    spec, branch = branch_spec(spec_json, name)
    run_dir = run.metadata["run_dir"]
    branch_dir = layout.branch_dir(run_dir, branch.name)
    storage.write_bytes(
        storage.join(branch_dir, layout.SPEC_FILE), spec.model_dump_json(exclude_none=True).encode()
    )
    metadata: dict[str, Any] = {
        "run_dir": run_dir,
        "run_id": run.metadata["run_id"],
        "branch": branch.name,
        "branch_dir": branch_dir,
    }
    if spec.pretrain is None:
        _write_pointer(data, **metadata)
        return FINETUNE_ONLY
    names = list(branch.pretrain_datasets)
    index = merge([(name, load_index(index_uri(spec.dataset_uri(name)))) for name in names])
    if branch.subset:
        index = subset(index, branch.category_fraction, branch.instance_fraction, spec.pretrain.seed)
    uri = layout.merged_index(branch_dir, PRETRAIN)
    save_index(uri, index)
    metadata.update(index=uri, **_describe(PRETRAIN, names, index, spec.evaluation.split))
    previous = registry.trained_on(spec, branch.name, index.fingerprint)
    if previous is not None and skip_if_trained:
        metadata["trained_by"] = previous["run_id"]
        _write_pointer(data, **metadata)
        return SKIP
    _write_pointer(data, **metadata)
    return PRETRAIN_THEN_FINETUNE


def prepare_target(spec_json: str, stage: str, branch: ArtifactLike, data: ArtifactLike) -> None:
    """A fine-tune target's dataset (it exists: `prepare_run` made sure)."""
    spec, _ = branch_spec(spec_json, branch.metadata["branch"])
    name = spec.stage_datasets(stage)[0]
    uri = index_uri(spec.dataset_uri(name))
    description = _describe(stage, [name], load_index(uri), spec.evaluation.split)
    location = {key: branch.metadata[key] for key in ("run_dir", "run_id", "branch", "branch_dir")}
    _write_pointer(data, **location, index=uri, **description)


def _run_trainer(
    spec: ExperimentSpec,
    command: str,
    stage: str,
    scheduler: str,
    data: ArtifactLike,
    out: str,
    checkpoint: str | None,
    deployment: Deployment,
) -> dict[str, Any]:
    """Run `python -m mega3d.trainer COMMAND` for a stage as a TorchX DDP app; return the metrics it wrote."""
    args = [
        command,
        "--spec",
        storage.join(data.metadata["branch_dir"], layout.SPEC_FILE),
        "--stage",
        stage,
        "--data-index",
        data.metadata["index"],
        "--out",
        out,
    ]
    if checkpoint is not None:
        args += ["--init", checkpoint]
    stage_spec = spec.stage(stage)
    resources = stage_spec.resources
    app = trainer(
        *args,
        name=job_name(spec.name, stage),
        image=deployment.image or spec.image,
        nnodes=resources.nnodes,
        nproc_per_node=resources.nproc_per_node,
        gpus=resources.gpus,
        cpu=resources.cpu,
        memory_gb=resources.memory_gb,
        max_retries=stage_spec.max_retries,
        rdzv_port=free_port() if scheduler == LOCAL_SCHEDULER else 29500,
        env=deployment.trainer_environment(one_host=scheduler == LOCAL_SCHEDULER),
        metrics_port=deployment.metrics_port or 0,  # container ports for the PodMonitor (a cluster only)
    )
    if scheduler == KUBERNETES_SCHEDULER:
        app = cluster_app(app, deployment)
    # Locally, keep every replica's log beside the stage's results instead of in a temporary directory.
    local_logs = scheduler == LOCAL_SCHEDULER and "://" not in out
    log_dir = storage.join(out, "logs") if local_logs else None
    launch(app, scheduler, scheduler_cfg(scheduler, deployment, log_dir))
    return _metrics_in(out)


def _metrics_in(directory: str) -> dict[str, Any]:
    metrics: dict[str, Any] = storage.read_json(storage.join(directory, layout.METRICS_FILE))
    return metrics


def _digest(values: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(values)).encode()).hexdigest()[:32]


def _log_metrics(metrics: MetricsLike, result: dict[str, Any]) -> None:
    for key in TRAINED_METRICS:
        if key in result:
            metrics.log_metric(key, float(result[key]))


def train(
    spec_json: str,
    cluster_json: str,
    stage: str,
    scheduler: str,
    data: ArtifactLike,
    init: ArtifactLike | None,
    model: ArtifactLike,
    metrics: MetricsLike,
) -> None:
    """Launch the stage's DDP training job and wait for it; record its checkpoint and metrics."""
    spec, _ = branch_spec(spec_json, data.metadata["branch"])
    out = layout.stage_dir(data.metadata["branch_dir"], stage)
    init_from = spec.stage(stage).init_from if stage != PRETRAIN else None  # type: ignore[union-attr]
    if init_from is not None and is_checkpoint_uri(init_from):
        checkpoint: str | None = spec.under_storage(init_from)  # as the spec says now, if edited at run time
    else:
        checkpoint = init.metadata["checkpoint"] if init is not None else None
    deployment = Deployment.model_validate_json(cluster_json)
    result = _run_trainer(spec, "train", stage, scheduler, data, out, checkpoint, deployment)
    _write_pointer(
        model,
        run_dir=data.metadata["run_dir"],
        branch=data.metadata["branch"],
        checkpoint=result["checkpoint"],
        arch=spec.model.name,
        classes=len(result["classes"]),
        stage=stage,
    )
    _log_metrics(metrics, result)


class ConfusionLike(Protocol):
    def log_confusion_matrix(self, categories: list[str], matrix: list[list[int]]) -> None: ...


def evaluate(
    spec_json: str,
    cluster_json: str,
    stage: str,
    scheduler: str,
    data: ArtifactLike,
    model: ArtifactLike,
    metrics: MetricsLike,
    confusion: ConfusionLike,
    classes: ArtifactLike,
    curves: ArtifactLike,
) -> None:
    """Evaluate a trained stage on the evaluation split; what the Kubeflow UI shows of it: the metrics, a
    confusion matrix (when there are few enough classes), the best and worst classes, the training curves."""
    spec, _ = branch_spec(spec_json, data.metadata["branch"])
    out = layout.evaluation_dir(data.metadata["branch_dir"], stage)
    deployment = Deployment.model_validate_json(cluster_json)
    checkpoint = model.metadata["checkpoint"]
    result = _run_trainer(spec, "evaluate", stage, scheduler, data, out, checkpoint, deployment)
    _log_metrics(metrics, result)
    if "confusion" in result:
        confusion.log_confusion_matrix(result["classes"], result["confusion"])
    per_class, what = (
        (result["per_class_ap"], "average precision")
        if "per_class_ap" in result
        else (result["per_class_accuracy"], "video top-1 accuracy")
    )
    with open(classes.path, "w") as table:
        table.write(f"## {stage}: classes by {what}\n\n{reports.class_table(per_class, what)}")
    trained = _metrics_in(layout.stage_dir(data.metadata["branch_dir"], stage))
    with open(curves.path, "w") as page:
        page.write(reports.curves_html(trained["history"], f"{spec.name} {stage}: training"))


def register(spec_json: str, branch: ArtifactLike, report: ArtifactLike) -> None:
    """Record the branch's trained model in the registry and promote it to champion if it beats the
    current one on the same evaluation sets."""
    spec, _ = branch_spec(spec_json, branch.metadata["branch"])
    branch_dir = branch.metadata["branch_dir"]
    targets = {}
    for stage in spec.finetune:
        evaluation = _metrics_in(layout.evaluation_dir(branch_dir, stage.name))
        evaluated_on = load_index(index_uri(spec.dataset_uri(stage.dataset))).fingerprint
        targets[stage.name] = {
            "evaluation_set": f"{evaluated_on}:{spec.evaluation.split}",
            "score": evaluation["mAP"] if "mAP" in evaluation else evaluation["video_top1"],
            "checkpoint": evaluation["checkpoint"],
            **{key: evaluation[key] for key in ("clip_accuracy", "video_top1", "video_top5")},
        }
    # Without pretraining, the model is what the targets' data made of the starting checkpoints.
    targets_digest = _digest([target["evaluation_set"] for target in targets.values()])
    fingerprint = branch.metadata.get("fingerprint") or targets_digest
    pretrained = layout.stage_dir(branch_dir, PRETRAIN) if spec.pretrain else None
    challenger = {
        "run_id": branch.metadata["run_id"],
        "branch": branch.metadata["branch"],
        "fingerprint": fingerprint,
        "model": spec.model.name,
        "pretrain_checkpoint": pretrained and storage.join(pretrained, layout.CHECKPOINT_FILE),
        "targets": targets,
    }
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    decision = registry.register(spec, branch.metadata["branch"], challenger, now)
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    print(f"registered {spec.model.name} trained on {fingerprint}: {verdict} ({decision.reason})", flush=True)
    with open(report.path, "w") as page:
        page.write(registry.decision_markdown(challenger, decision))


def skip(branch: ArtifactLike) -> None:
    """Says why a branch trains nothing."""
    name = branch.metadata["branch"] or "the experiment"
    print(
        f"{name}: the registry already holds a model trained on data {branch.metadata['fingerprint']} "
        f"(run {branch.metadata['trained_by']}): nothing to train",
        flush=True,
    )
