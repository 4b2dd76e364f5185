"""The pipeline's lightweight KFP components, as plain functions.

KFP embeds each function's source in the compiled pipeline and runs it in a fresh interpreter, so each
body only imports and delegates to `pipelines.tasks`. (No `from __future__ import annotations` here:
KFP reads the artifact annotations at definition time.) `pipelines.pipeline` wraps these functions into
components with the spec's image.
"""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def prepare_data(spec_json: str, stage: str, run_id: str, job_id: str, data: Output[Dataset]) -> None:
    """Check or synthesize the stage's datasets; merge the pretraining datasets into one index."""
    from pipelines import tasks

    tasks.prepare_data(spec_json, stage, run_id or job_id, data)


def pretrain(
    spec_json: str,
    cluster_json: str,
    scheduler: str,
    data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
) -> None:
    """Pretrain on the merged datasets with TorchX DDP."""
    from pipelines import tasks

    tasks.train(spec_json, cluster_json, "pretrain", scheduler, data, None, model, metrics)


def finetune(
    spec_json: str,
    cluster_json: str,
    stage: str,
    scheduler: str,
    data: Input[Dataset],
    init: Input[Model],
    model: Output[Model],
    metrics: Output[Metrics],
) -> None:
    """Fine-tune a trained model on the stage's target dataset with TorchX DDP."""
    from pipelines import tasks

    tasks.train(spec_json, cluster_json, stage, scheduler, data, init, model, metrics)


def evaluate(
    spec_json: str,
    cluster_json: str,
    stage: str,
    scheduler: str,
    data: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
) -> None:
    """Clip accuracy and video top-1/top-5 of a fine-tuned model on the evaluation split."""
    from pipelines import tasks

    tasks.evaluate(spec_json, cluster_json, stage, scheduler, data, model, metrics)
