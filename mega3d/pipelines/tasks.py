"""What the pipeline steps do. The KFP components in `steps` are thin shells that call these functions.

Artifacts are small pointers: the bytes (indexes, checkpoints, metrics) live under the spec's storage root,
where the trainer pods can reach them; the artifact's metadata records the URIs, so the Kubeflow UI shows
the lineage and where each file is.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from mega3d.components.train import trainer
from mega3d.pipelines import keys, registry, reports
from mega3d.pipelines.actions import FINETUNE_ONLY, PRETRAIN_THEN_FINETUNE, SKIP
from mega3d.pipelines.launcher import (
    KUBERNETES_SCHEDULER,
    LOCAL_SCHEDULER,
    free_port,
    job_name,
    launch_local,
    launch_on_cluster,
    scheduler_cfg,
)
from mega3d.pipelines.local import CAUSES_DIR, plain_cause
from mega3d.pipelines.settings import Deployment
from mega3d.pipelines.volcano import JobIdentity
from mega3d.trainer import layout, storage
from mega3d.trainer.catalog import resolve_spec
from mega3d.trainer.data.format import DatasetError, DatasetIndex, index_uri, load_index, merge, save_index
from mega3d.trainer.data.ops import subset
from mega3d.trainer.records import (
    BranchPointer,
    LatestEpoch,
    ModelPointer,
    ModelRecord,
    Record,
    RunPointer,
    StageMetrics,
    StageRecord,
    TargetResult,
)
from mega3d.trainer.spec import PRETRAIN, ExperimentSpec, FinetuneSpec, is_checkpoint_uri, spec_from_json


class ArtifactLike(Protocol):
    path: str
    metadata: dict[str, Any]


class MetricsLike(Protocol):
    def log_metric(self, metric: str, value: float) -> None: ...


Pointer = TypeVar("Pointer", bound=Record)
Params = ParamSpec("Params")
Returned = TypeVar("Returned")


def reports_cause(
    what: str,
) -> Callable[[Callable[Params, Returned]], Callable[Params, Returned]]:
    """A task that fails leaves its cause, one line, where `mega3d run` looks for it (CAUSES_DIR, set by
    mega3d.pipelines.local), then fails the step as before. `what`: the task, as the line names it."""

    def decorate(task: Callable[Params, Returned]) -> Callable[Params, Returned]:
        @functools.wraps(task)
        def reporting(*args: Params.args, **kwargs: Params.kwargs) -> Returned:
            try:
                return task(*args, **kwargs)
            except Exception as error:
                folder = os.environ.get(CAUSES_DIR)
                if folder:
                    stage = inspect.signature(task).bind(*args, **kwargs).arguments.get("stage")
                    cause = {"step": what, "stage": stage, "cause": plain_cause(error)}
                    Path(folder, f"{os.getpid()}.json").write_text(json.dumps(cause))
                raise

        return reporting

    return decorate


def _write_pointer(artifact: ArtifactLike, pointer: Record) -> None:
    metadata = pointer.to_json()
    artifact.metadata.update(metadata)
    with open(artifact.path, "w") as out:
        json.dump(metadata, out, indent=1, sort_keys=True)


def _read_pointer(kind: type[Pointer], artifact: ArtifactLike) -> Pointer:
    return kind.parse(artifact.metadata, f"the metadata of artifact {artifact.path}")


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


@reports_cause("preparing the run")
def prepare_run(spec_json: str, run_id: str, run: ArtifactLike) -> None:
    """Resolve the spec's catalog datasets to versions (the newest, where the spec pins none) and keep the
    spec as resolved in the run directory, for every later step; make sure every dataset the run uses
    exists: synthetic ones are made here, once, before branches and targets run side by side."""
    submitted = spec_from_json(spec_json)
    run_dir = layout.run_dir(submitted, run_id)
    kept = storage.join(run_dir, layout.SPEC_FILE)
    resumed = storage.exists(kept)  # a resumed run trains what it started with: the versions it resolved
    spec, resolved = resolve_spec(kept_spec(run_dir) if resumed else submitted)
    for name, version in resolved.items():
        print(
            f"datasets.{name}: catalog {version.reference}, published {version.published} "
            f"({version.videos} videos, fingerprint {version.fingerprint})",
            flush=True,
        )
    if not resumed:
        storage.write_bytes(kept, spec.model_dump_json(exclude_none=True).encode())
    used = {name for branch in spec.branches() for name in branch.pretrain_datasets}
    used |= {stage.dataset for stage in spec.finetune}
    for name in sorted(used):
        ensure_dataset(spec, name)
    branches = [branch.name for branch in spec.branches()]
    if branches != [""]:
        print(f"sweep: {len(branches)} branches: {', '.join(branches)}", flush=True)
    catalog = {name: version.reference for name, version in resolved.items()}
    _write_pointer(run, RunPointer(run_dir=run_dir, run_id=run_id, datasets=sorted(used), catalog=catalog))


def kept_spec(directory: str) -> ExperimentSpec:
    """The spec kept in a run's directory (as the run resolved it) or a branch's (as the branch trains it)."""
    uri = storage.join(directory, layout.SPEC_FILE)
    return spec_from_json(storage.read_bytes(uri).decode(), uri)


def _fingerprint(spec: ExperimentSpec, dataset: str) -> str:
    return load_index(index_uri(spec.dataset_uri(dataset))).fingerprint


def branch_spec(branch: BranchPointer) -> ExperimentSpec:
    """The spec as the branch trains it, as its `prepare data` step expanded it."""
    return kept_spec(branch.branch_dir)


def _described(
    pointer: BranchPointer, stage: str, names: list[str], index: DatasetIndex, split: str
) -> BranchPointer:
    """Check that the stage's data has what training and evaluation need; the pointer, saying what it is."""
    for needed in ("training", split):
        if not len(index.rows(needed)):  # found before any training, not after the last epoch
            raise DatasetError(f"{stage}: {'+'.join(names)} has no {needed} videos")
    print(
        f"{stage}: {len(index.classes)} classes, {len(index.rows('training'))} training and "
        f"{len(index.rows('validation'))} validation videos from {'+'.join(names)}",
        flush=True,
    )
    return pointer.model_copy(
        update={
            "datasets": names,
            "classes": len(index.classes),
            "videos": len(index),
            "fingerprint": index.fingerprint,
        }
    )


@reports_cause("preparing the data")
def prepare_branch(name: str, skip_if_trained: bool, run: ArtifactLike, data: ArtifactLike) -> str:
    """The branch's spec, expanded from the run's spec once and kept in its directory for the steps after
    this one; its pretraining data: the merge of its datasets (and its subset), as an index that points at
    the datasets' shards (no video is copied); the keys of its stages and its run key (mega3d.pipelines.
    keys). Returns SKIP when `skip_if_trained` and the registry holds a model of this branch with the same
    run key, else what the branch trains: PRETRAIN_THEN_FINETUNE, or FINETUNE_ONLY for a branch without
    pretraining."""
    where = _read_pointer(RunPointer, run)
    experiment = kept_spec(where.run_dir)
    branch = next(branch for branch in experiment.branches() if branch.name == name)
    spec = experiment.for_branch(branch)
    branch_dir = layout.branch_dir(where.run_dir, branch.name)
    storage.write_bytes(
        storage.join(branch_dir, layout.SPEC_FILE), spec.model_dump_json(exclude_none=True).encode()
    )
    pointer = BranchPointer(
        run_dir=where.run_dir,
        run_id=where.run_id,
        branch=branch.name,
        branch_dir=branch_dir,
        reuse_stages=skip_if_trained,
    )
    action = FINETUNE_ONLY
    if spec.pretrain is not None:
        names = list(branch.pretrain_datasets)
        index = merge([(name, load_index(index_uri(spec.dataset_uri(name)))) for name in names])
        if branch.subset:
            index = subset(index, branch.category_fraction, branch.instance_fraction, spec.pretrain.seed)
        uri = index_uri(layout.merged_dataset(branch_dir, PRETRAIN))
        save_index(uri, index)
        pointer = _described(
            pointer.model_copy(update={"index": uri}), PRETRAIN, names, index, spec.evaluation.split
        )
        action = PRETRAIN_THEN_FINETUNE
    targets = {
        stage.name: load_index(index_uri(spec.dataset_uri(stage.dataset))).fingerprint
        for stage in spec.finetune
    }
    stage_keys = keys.stage_keys(spec, pointer.fingerprint, targets)
    pointer = pointer.model_copy(update={"stage_keys": stage_keys, "run_key": keys.run_key(stage_keys)})
    previous = registry.trained_with(spec, branch.name, pointer.run_key)
    if previous is not None and skip_if_trained:
        _write_pointer(data, pointer.model_copy(update={"trained_by": previous.run_id}))
        return SKIP
    _write_pointer(data, pointer)
    return action


@reports_cause("preparing the data")
def prepare_target(stage: str, branch: ArtifactLike, data: ArtifactLike) -> None:
    """A fine-tune target's dataset (it exists: `prepare_run` made sure)."""
    prepared = _read_pointer(BranchPointer, branch)
    spec = branch_spec(prepared)
    name = spec.stage_datasets(stage)[0]
    uri = index_uri(spec.dataset_uri(name))
    pointer = BranchPointer(
        run_dir=prepared.run_dir,
        run_id=prepared.run_id,
        branch=prepared.branch,
        branch_dir=prepared.branch_dir,
        index=uri,
        run_key=prepared.run_key,
        stage_keys=prepared.stage_keys,
        reuse_stages=prepared.reuse_stages,
    )
    _write_pointer(data, _described(pointer, stage, [name], load_index(uri), spec.evaluation.split))


def _run_trainer(
    spec: ExperimentSpec,
    command: str,
    stage: str,
    scheduler: str,
    data: BranchPointer,
    out: str,
    checkpoint: str | None,
    deployment: Deployment,
) -> None:
    """Run `python -m mega3d.trainer COMMAND` for a stage as a TorchX DDP app; it writes its metrics to
    `out`."""
    assert data.index is not None  # a training stage's data: prepare_branch or prepare_target set it
    args = [
        command,
        "--spec",
        storage.join(data.branch_dir, layout.SPEC_FILE),
        "--stage",
        stage,
        "--data-index",
        data.index,
        "--out",
        out,
    ]
    if checkpoint is not None:
        args += ["--init", checkpoint]
    stage_spec = spec.stage(stage)
    resources = stage_spec.resources
    stage_dir = out if command == "train" else None  # where a training job keeps its checkpoints
    app = trainer(
        *args,
        name=job_name(spec.name, data.branch, stage, data.run_id),
        image=deployment.image or spec.image,
        nnodes=resources.nnodes,
        nproc_per_node=resources.nproc_per_node,
        gpus=resources.gpus,
        cpu=resources.cpu,
        memory_gb=resources.memory_gb,
        max_retries=stage_spec.max_retries,
        rdzv_port=free_port() if scheduler == LOCAL_SCHEDULER else 29500,
        env=deployment.trainer_environment(
            one_host=scheduler == LOCAL_SCHEDULER, run_id=data.run_id, branch=data.branch
        ),
        metrics_port=deployment.metrics_port or 0,  # container ports for the PodMonitor (a cluster only)
    )
    if scheduler == KUBERNETES_SCHEDULER:
        identity = JobIdentity(spec.name, data.run_id, data.branch, stage, command)
        launch_on_cluster(app, deployment, identity, stage_dir)
        return
    if scheduler != LOCAL_SCHEDULER:
        raise ValueError(
            f"unknown scheduler {scheduler!r}: expected {LOCAL_SCHEDULER} or {KUBERNETES_SCHEDULER}"
        )
    # Locally, keep every replica's log beside the stage's results instead of in a temporary directory.
    log_dir = storage.join(out, "logs") if "://" not in out else None
    launch_local(app, scheduler_cfg(scheduler, deployment, log_dir), stage_dir)


def _log_metrics(metrics: MetricsLike, result: StageMetrics) -> None:
    """What the Kubeflow UI lists of a stage: its scores (mean class accuracy for single-label data, mAP
    for multi-label), how much it scored, on how many processes, how long, and the clips that could not
    be decoded (skipped, in training and evaluation)."""
    logged = {
        "clip_accuracy": result.clip_accuracy,
        "video_top1": result.video_top1,
        "video_top5": result.video_top5,
        "mean_class_accuracy": result.mean_class_accuracy,
        "mAP": result.mAP,
        "n_videos": result.n_videos,
        "n_clips": result.n_clips,
        "world_size": result.world_size,
        "seconds": result.seconds,
        "unreadable": result.unreadable,
    }
    for name, value in logged.items():
        if value is not None:
            metrics.log_metric(name, float(value))


# What a finished stage leaves that the steps after it read, besides its metrics: its per-video results, and
# those of its evaluation step. (Its checkpoint stays where it is: the metrics name it.)
FINISHED_STAGE_FILES = (
    layout.RESULTS_FILE,
    f"evaluation/{layout.METRICS_FILE}",
    f"evaluation/{layout.RESULTS_FILE}",
)


def _finished_stage(prepared: BranchPointer, stage: str, record: StageRecord | None) -> StageMetrics | None:
    """The stage's result where a run finished it already: this run before it was interrupted, or the
    earlier run of `record` (a stage with the same key; None where the branch reuses no stages), whose
    files are copied into this run's stage directory."""
    own = layout.stage_metrics(prepared.branch_dir, stage)
    if storage.exists(own):  # the trainer writes its metrics last
        print(f"[{stage}] finished before this run was resumed: its results are kept", flush=True)
        return StageMetrics.read(own)
    if record is None or not record.finished:
        return None
    if not storage.exists(storage.join(record.stage_dir, layout.METRICS_FILE)):
        return None  # removed since
    out = layout.stage_dir(prepared.branch_dir, stage)
    for name in FINISHED_STAGE_FILES:
        earlier = storage.join(record.stage_dir, name)
        if storage.exists(earlier):
            storage.copy(earlier, storage.join(out, name))
    storage.copy(storage.join(record.stage_dir, layout.METRICS_FILE), own)  # last: it says "finished"
    result = StageMetrics.read(own)
    print(
        f"[{stage}] run {record.run_id} trained this stage with the same data, model and recipe: reusing "
        f"{result.checkpoint}",
        flush=True,
    )
    return result


def _resume_earlier_stage(prepared: BranchPointer, stage: str, record: StageRecord | None) -> None:
    """Where the earlier run of `record` was interrupted in a stage with the same key, copy its newest
    checkpoint into this run's stage directory: the trainer resumes from it."""
    out = layout.stage_dir(prepared.branch_dir, stage)
    if record is None or record.finished or record.stage_dir == out:
        return
    earlier = storage.join(record.stage_dir, layout.CHECKPOINTS_DIR)
    mine = storage.join(out, layout.CHECKPOINTS_DIR)
    if not storage.exists(storage.join(earlier, layout.LATEST_FILE)) or storage.exists(
        storage.join(mine, layout.LATEST_FILE)
    ):
        return
    latest = LatestEpoch.read(storage.join(earlier, layout.LATEST_FILE))
    storage.copy(storage.join(earlier, latest.file), storage.join(mine, latest.file))
    latest.write(storage.join(mine, layout.LATEST_FILE))  # last: the trainer trusts the pointer
    print(
        f"[{stage}] run {record.run_id} was interrupted in this stage (same data, model and recipe): "
        f"resuming from its epoch {latest.epoch}",
        flush=True,
    )


@reports_cause("training")
def train(
    cluster_json: str,
    stage: str,
    scheduler: str,
    data: ArtifactLike,
    init: ArtifactLike | None,
    model: ArtifactLike,
    metrics: MetricsLike,
) -> None:
    """Launch the stage's DDP training job and wait for it; record its checkpoint and metrics."""
    prepared = _read_pointer(BranchPointer, data)
    spec = branch_spec(prepared)
    stage_spec = spec.stage(stage)
    if isinstance(stage_spec, FinetuneSpec) and is_checkpoint_uri(stage_spec.init_from):
        checkpoint: str | None = spec.under_storage(stage_spec.init_from)
    else:
        checkpoint = _read_pointer(ModelPointer, init).checkpoint if init is not None else None
    deployment = Deployment.model_validate_json(cluster_json)
    out = layout.stage_dir(prepared.branch_dir, stage)
    key = prepared.stage_keys[stage]
    earlier = registry.stage_with(spec, prepared.branch, key) if prepared.reuse_stages else None
    result = _finished_stage(prepared, stage, earlier)
    if result is None:
        _resume_earlier_stage(prepared, stage, earlier)
        started = StageRecord(key=key, stage=stage, run_id=prepared.run_id, stage_dir=out)
        started.write(registry.stage_uri(spec, prepared.branch, key))
        _run_trainer(spec, "train", stage, scheduler, prepared, out, checkpoint, deployment)
        started.model_copy(update={"finished": True}).write(registry.stage_uri(spec, prepared.branch, key))
        result = StageMetrics.read(layout.stage_metrics(prepared.branch_dir, stage))
    pointer = ModelPointer(
        run_dir=prepared.run_dir,
        branch=prepared.branch,
        stage=stage,
        checkpoint=result.checkpoint,
        arch=spec.model.name,
        classes=len(result.classes),
    )
    _write_pointer(model, pointer)
    _log_metrics(metrics, result)


class ConfusionLike(Protocol):
    def log_confusion_matrix(self, categories: list[str], matrix: list[list[int]]) -> None: ...


def log_confusion(
    classes: list[str], matrix: list[list[int]], videos: str, confusion: ConfusionLike, table: ArtifactLike
) -> None:
    """The confusion matrix of `videos` in the UI's viewer (up to reports.CONFUSION_MAX_CLASSES classes)
    and, whatever the number of classes, as a CSV table."""
    shown = len(classes) <= reports.CONFUSION_MAX_CLASSES
    if shown:
        confusion.log_confusion_matrix(classes, matrix)
    with open(table.path, "w", newline="") as file:  # the csv module ends rows itself
        file.write(reports.confusion_csv(classes, matrix))
    table.metadata.update(
        format="csv",
        rows="true class",
        columns=f"predicted class (video top-1) of {videos}",
        classes=len(classes),
        in_confusion_matrix_artifact=shown,
    )


def _evaluated_in_training(
    trained: StageMetrics,
    spec: ExperimentSpec,
    data: BranchPointer,
    checkpoint: str,
    deployment: Deployment,
) -> bool:
    """Whether the training job's own evaluation is the one an evaluation job would make: the same
    checkpoint (the final one), data, split and settings, on CPUs, nothing unreadable (the training job
    counts its training clips too), and no metrics endpoint that would see an evaluation job. (The
    trainer scores with rank 0's BatchNorm statistics, the checkpoint's. On GPUs, kernels chosen per
    process need not score alike.)"""
    stage = spec.stage(trained.stage)
    return (
        trained.checkpoint == checkpoint
        and trained.split == spec.evaluation.split
        and trained.job.data_index == data.index
        and trained.job.evaluation == spec.evaluation
        and trained.job.spec == stage
        and trained.job.model == spec.model
        and trained.world_size == stage.resources.node_range[1] * stage.resources.nproc_per_node
        and stage.resources.gpus == 0
        and trained.unreadable == 0
        and deployment.pushgateway is None
        and deployment.metrics_port is None
    )


def _keep_training_evaluation(
    trained: StageMetrics, branch_dir: str, out: str, checkpoint: str
) -> StageMetrics:
    """The training job's evaluation as the evaluation step's results: the scores and per-video results
    as they are; the job as an evaluation job of the checkpoint would have been; no history; no time."""
    job = trained.job.model_copy(update={"out_dir": out, "init_checkpoint": checkpoint, "new_head": False})
    result = trained.model_copy(update={"job": job, "history": [], "seconds": 0.0})
    per_video = storage.join(layout.stage_dir(branch_dir, trained.stage), layout.RESULTS_FILE)
    storage.copy(per_video, storage.join(out, layout.RESULTS_FILE))
    result.write(layout.evaluation_metrics(branch_dir, trained.stage))
    print(
        f"[{trained.stage}] the training job evaluated {checkpoint} on the {trained.split} split already: "
        "its scores are the evaluation's",
        flush=True,
    )
    return result


@reports_cause("evaluation")
def evaluate(
    cluster_json: str,
    stage: str,
    scheduler: str,
    data: ArtifactLike,
    model: ArtifactLike,
    metrics: MetricsLike,
    confusion: ConfusionLike,
    confusion_csv: ArtifactLike,
    classes: ArtifactLike,
    curves: ArtifactLike,
) -> None:
    """Evaluate a trained stage on the evaluation split; what the Kubeflow UI shows of it: the metrics, a
    confusion matrix (up to reports.CONFUSION_MAX_CLASSES classes), the same matrix as a CSV table (always),
    the best and worst classes, the training curves."""
    prepared = _read_pointer(BranchPointer, data)
    spec = branch_spec(prepared)
    deployment = Deployment.model_validate_json(cluster_json)
    checkpoint = _read_pointer(ModelPointer, model).checkpoint
    out = layout.evaluation_dir(prepared.branch_dir, stage)
    trained = StageMetrics.read(layout.stage_metrics(prepared.branch_dir, stage))
    local = scheduler == LOCAL_SCHEDULER
    earlier = layout.evaluation_metrics(prepared.branch_dir, stage)
    if storage.exists(earlier) and StageMetrics.read(earlier).checkpoint == checkpoint:
        # A resumed run, or a stage reused from an earlier run: this checkpoint has been evaluated.
        result = StageMetrics.read(earlier)
        print(f"[{stage}] {checkpoint} was evaluated before: its scores are kept", flush=True)
    elif local and _evaluated_in_training(trained, spec, prepared, checkpoint, deployment):
        result = _keep_training_evaluation(trained, prepared.branch_dir, out, checkpoint)
    else:
        _run_trainer(spec, "evaluate", stage, scheduler, prepared, out, checkpoint, deployment)
        result = StageMetrics.read(layout.evaluation_metrics(prepared.branch_dir, stage))
    _log_metrics(metrics, result)
    assert result.confusion is not None  # the trainer keeps it for every evaluation
    videos = f"{result.n_videos} {spec.evaluation.split} videos"
    log_confusion(result.classes, result.confusion, videos, confusion, confusion_csv)
    what = result.per_class_measure
    with open(classes.path, "w") as table:
        table.write(f"## {stage}: classes by {what}\n\n{reports.class_table(result.per_class, what)}")
    with open(curves.path, "w") as page:
        page.write(reports.curves_html(trained.history, f"{spec.name} {stage}: training"))


@reports_cause("registering the model")
def register(branch: ArtifactLike, report: ArtifactLike) -> None:
    """Record the branch's trained model in the registry and promote it to champion if it beats the
    current one on the same evaluation sets."""
    prepared = _read_pointer(BranchPointer, branch)
    spec = branch_spec(prepared)
    targets = {}
    for stage in spec.finetune:
        evaluation = StageMetrics.read(layout.evaluation_metrics(prepared.branch_dir, stage.name))
        evaluated_on = _fingerprint(spec, stage.dataset)
        targets[stage.name] = TargetResult(
            evaluation_set=f"{evaluated_on}:{spec.evaluation.split}",
            score=evaluation.headline,
            checkpoint=evaluation.checkpoint,
            clip_accuracy=evaluation.clip_accuracy,
            video_top1=evaluation.video_top1,
            video_top5=evaluation.video_top5,
        )
    # Without pretraining, the model is what the targets' data made of the starting checkpoints.
    fingerprint = prepared.fingerprint or keys.digest(
        sorted(target.evaluation_set for target in targets.values())
    )
    pretrained = layout.stage_dir(prepared.branch_dir, PRETRAIN) if spec.pretrain else None
    earlier = registry.trained_with(spec, prepared.branch, prepared.run_key)
    if earlier is not None and earlier.run_id == prepared.run_id:  # a resumed run registers once
        print(f"registered {spec.model.name} before this run was resumed", flush=True)
        with open(report.path, "w") as page:
            page.write(
                f"## Registered before run {prepared.run_id} was resumed\n\nrun key {prepared.run_key}\n"
            )
        return
    challenger = ModelRecord(
        run_id=prepared.run_id,
        branch=prepared.branch,
        fingerprint=fingerprint,
        run_key=prepared.run_key,
        model=spec.model.name,
        pretrain_checkpoint=pretrained and storage.join(pretrained, layout.CHECKPOINT_FILE),
        targets=targets,
    )
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    decision = registry.register(spec, prepared.branch, challenger, now)
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    print(f"registered {spec.model.name} trained on {fingerprint}: {verdict} ({decision.reason})", flush=True)
    with open(report.path, "w") as page:
        page.write(registry.decision_markdown(challenger, decision))


def skip(branch: ArtifactLike) -> None:
    """Says why a branch trains nothing."""
    prepared = _read_pointer(BranchPointer, branch)
    print(
        f"{prepared.branch or 'the experiment'}: the registry already holds a model trained with the same "
        f"data, model, recipe and targets (run {prepared.trained_by}, run key {prepared.run_key}): "
        "nothing to train",
        flush=True,
    )
