"""What the pipeline steps do. The KFP components in `steps` are thin shells that call these functions.

Artifacts are small pointers: the bytes (indexes, checkpoints, metrics) live under the spec's storage root,
where the trainer pods can reach them; the artifact's metadata records the URIs, so the Kubeflow UI shows
the lineage and where each file is.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from components.train import trainer
from pipelines.launcher import LOCAL_SCHEDULER, free_port, launch
from pipelines.settings import Deployment
from trainer import layout, storage
from trainer.data.format import DatasetError, index_uri, load_index, merge, save_index
from trainer.spec import PRETRAIN, ExperimentSpec, is_checkpoint_uri, spec_from_json

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
        from trainer.data.synth import synthesize

        print(f"synthesizing dataset {name} at {uri}", flush=True)
        synthesize(uri, params)
    return index_uri(uri)


def prepare_data(spec_json: str, stage: str, run_id: str, data: ArtifactLike) -> None:
    """Make sure the stage's datasets exist; for pretraining, write the merged index (no data copied)."""
    spec = spec_from_json(spec_json)
    run = layout.run_dir(spec, run_id)
    storage.write_bytes(storage.join(run, layout.SPEC_FILE), spec_json.encode())
    names = spec.stage_datasets(stage)
    if stage == PRETRAIN:
        parts = [(name, load_index(ensure_dataset(spec, name))) for name in names]
        index = merge(parts)
        uri = layout.merged_index(run, stage)
        save_index(uri, index)
    else:
        uri = ensure_dataset(spec, names[0])
        index = load_index(uri)
    for split in ("training", spec.evaluation.split):
        if not len(index.rows(split)):  # found before any training, not after the last epoch
            raise DatasetError(f"{stage}: {'+'.join(names)} has no {split} videos")
    print(
        f"{stage}: {len(index.classes)} classes, {len(index.rows('training'))} training and "
        f"{len(index.rows('validation'))} validation videos from {'+'.join(names)}",
        flush=True,
    )
    _write_pointer(
        data,
        run_dir=run,
        index=uri,
        datasets=names,
        classes=len(index.classes),
        videos=len(index),
        fingerprint=index.fingerprint,
    )


def _app_name(spec: ExperimentSpec, stage: str) -> str:
    return f"{spec.name[:12].rstrip('-')}-{stage[:12].rstrip('-')}"


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
    """Run `python -m trainer COMMAND` for a stage as a TorchX DDP app; return the metrics it wrote."""
    run = data.metadata["run_dir"]
    args = [
        command,
        "--spec",
        storage.join(run, layout.SPEC_FILE),
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
        name=_app_name(spec, stage),
        image=deployment.image or spec.image,
        nnodes=resources.nnodes,
        nproc_per_node=resources.nproc_per_node,
        gpus=resources.gpus,
        cpu=resources.cpu,
        memory_gb=resources.memory_gb,
        max_retries=stage_spec.max_retries,
        rdzv_port=free_port() if scheduler == LOCAL_SCHEDULER else 29500,
    )
    # Locally, keep every replica's log beside the stage's results instead of in a temporary directory.
    local_logs = scheduler == LOCAL_SCHEDULER and "://" not in out
    launch(app, scheduler, {"log_dir": storage.join(out, "logs")} if local_logs else None)
    result: dict[str, Any] = storage.read_json(storage.join(out, layout.METRICS_FILE))
    return result


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
    spec = spec_from_json(spec_json)
    out = layout.stage_dir(data.metadata["run_dir"], stage)
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
        checkpoint=result["checkpoint"],
        arch=spec.model.name,
        classes=len(result["classes"]),
        stage=stage,
    )
    _log_metrics(metrics, result)


def evaluate(
    spec_json: str,
    cluster_json: str,
    stage: str,
    scheduler: str,
    data: ArtifactLike,
    model: ArtifactLike,
    metrics: MetricsLike,
) -> None:
    """Evaluate a trained stage on the evaluation split: clip accuracy, video top-1 and top-5."""
    spec = spec_from_json(spec_json)
    out = layout.evaluation_dir(data.metadata["run_dir"], stage)
    deployment = Deployment.model_validate_json(cluster_json)
    checkpoint = model.metadata["checkpoint"]
    result = _run_trainer(spec, "evaluate", stage, scheduler, data, out, checkpoint, deployment)
    _log_metrics(metrics, result)
