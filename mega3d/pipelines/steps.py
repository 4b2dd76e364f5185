"""The pipeline's lightweight KFP components, as plain functions.

KFP embeds each function's source in the compiled pipeline and runs it in a fresh interpreter, so each
body only imports and delegates to `mega3d.pipelines.tasks`. (No `from __future__ import annotations` here:
KFP reads the artifact annotations at definition time.) `mega3d.pipelines.pipeline` wraps these functions into
components with the spec's image.

Only the first step reads the spec parameter: `prepare_run` resolves its catalog datasets and keeps it in the
run directory; `prepare_branch` expands the branch from that once and keeps the spec as the branch trains it
in the branch's directory, which the steps after it read (the `data` artifact says where).
Inside the fine-tune loop, steps learn their branch from artifacts, never from an outer loop's item or an
upstream step's output parameter: kfp.local (2.17) hands such parameters the inner loop's item instead.
"""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def prepare_run(spec_json: str, run_id: str, job_id: str, run: Output[Artifact]) -> None:
    """Resolve catalog datasets to versions and keep the spec so resolved with the run; make sure every
    dataset exists (synthetic ones are made here)."""
    from mega3d.pipelines import tasks

    tasks.prepare_run(spec_json, run_id or job_id, run)


def prepare_branch(branch: str, skip_if_trained: bool, run: Input[Artifact], data: Output[Dataset]) -> str:
    """Merge (and subset) the branch's pretraining datasets, key its stages; "skip" or what it trains."""
    from mega3d.pipelines import tasks

    return tasks.prepare_branch(branch, skip_if_trained, run, data)


def pretrain(
    cluster_json: str,
    scheduler: str,
    data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
) -> None:
    """Pretrain on the merged datasets with TorchX DDP."""
    from mega3d.pipelines import tasks

    tasks.train(cluster_json, "pretrain", scheduler, data, None, model, metrics)


def prepare_target(stage: str, branch: Input[Dataset], data: Output[Dataset]) -> None:
    """Check a fine-tune target's dataset."""
    from mega3d.pipelines import tasks

    tasks.prepare_target(stage, branch, data)


def finetune(
    cluster_json: str,
    stage: str,
    scheduler: str,
    data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    init: Input[Model] = None,  # absent without pretraining (init_from is a checkpoint URI)
) -> None:
    """Fine-tune a trained model on the stage's target dataset with TorchX DDP."""
    from mega3d.pipelines import tasks

    tasks.train(cluster_json, stage, scheduler, data, init, model, metrics)


def evaluate(
    cluster_json: str,
    stage: str,
    scheduler: str,
    data: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    confusion_csv: Output[Artifact],
    classes: Output[Markdown],
    curves: Output[HTML],
) -> None:
    """Clip accuracy, video top-1/top-5 and per-class results of a fine-tuned model."""
    from mega3d.pipelines import tasks

    tasks.evaluate(
        cluster_json, stage, scheduler, data, model, metrics, confusion, confusion_csv, classes, curves
    )


def register(branch: Input[Dataset], decision: Output[Markdown]) -> None:
    """Record the model in the registry; promote it to champion if it beats the current one."""
    from mega3d.pipelines import tasks

    tasks.register(branch, decision)


def skip(branch: Input[Dataset]) -> None:
    """Say that this data has been trained on already."""
    from mega3d.pipelines import tasks

    tasks.skip(branch)
