"""Assemble the KFP v2 pipeline of an experiment spec, and compile it to IR YAML.

    prepare-data(pretrain) -> pretrain -> for each fine-tune stage:
        prepare-data(stage) -> finetune(stage) -> evaluate(stage)

Without a pretrain stage, fine-tuning starts from checkpoints named by URI (imported into the run).

Pipeline parameters: `spec_json` (the validated spec), `run_id` (empty: the KFP run's id), `scheduler`
(`kubernetes` on a cluster, `local_cwd` for `mega3d run`). No `from __future__ import annotations`:
KFP reads the pipeline function's annotations as types.
"""

from collections.abc import Callable
from typing import Any

from kfp import compiler, dsl

from pipelines import steps
from pipelines.settings import Deployment
from trainer.spec import PRETRAIN, ExperimentSpec

CLUSTER_SCHEDULER = "kubernetes"


def build_pipeline(spec: ExperimentSpec, deployment: Deployment | None = None) -> Callable[..., Any]:
    deployment = deployment or Deployment()

    def component(func: Callable[..., None]) -> Callable[..., dsl.PipelineTask]:
        return dsl.component(func, base_image=spec.image, install_kfp_package=False)

    prepare_data = component(steps.prepare_data)
    pretrain = component(steps.pretrain)
    finetune = component(steps.finetune)
    evaluate = component(steps.evaluate)

    def step(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        # Every run writes a new run directory: a cached step would point at another run's files.
        return task.set_display_name(name).set_caching_options(False)

    @dsl.pipeline(name=f"mega3d-{spec.name}", description=f"mega3d experiment {spec.name}")
    def experiment(
        spec_json: str = spec.model_dump_json(exclude_none=True),
        cluster_json: str = deployment.cluster_json(),
        run_id: str = "",
        scheduler: str = CLUSTER_SCHEDULER,
    ) -> None:
        def prepare(stage: str) -> dsl.PipelineTask:
            task = prepare_data(
                spec_json=spec_json, stage=stage, run_id=run_id, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
            )
            return step(task, f"prepare-data {stage}")

        trained: dict[str, dsl.PipelineTask] = {}
        # Data steps run one after another, so that a synthetic dataset two stages share is made once.
        last_data: dsl.PipelineTask | None = None
        if spec.pretrain is not None:
            last_data = prepare(PRETRAIN)
            pretrained = pretrain(
                spec_json=spec_json,
                cluster_json=cluster_json,
                scheduler=scheduler,
                data=last_data.outputs["data"],
            )
            trained[PRETRAIN] = step(pretrained, PRETRAIN)
        for stage in spec.finetune:
            data = prepare(stage.name)
            if last_data is not None:
                data.after(last_data)
            last_data = data
            if stage.init_from in trained:
                init = trained[stage.init_from].outputs["model"]
            else:  # an existing checkpoint, e.g. an imported reference model
                uri = spec.under_storage(stage.init_from)
                init = dsl.importer(
                    artifact_uri=uri, artifact_class=dsl.Model, metadata={"checkpoint": uri}
                ).output
            tuned = step(
                finetune(
                    spec_json=spec_json,
                    cluster_json=cluster_json,
                    stage=stage.name,
                    scheduler=scheduler,
                    data=data.outputs["data"],
                    init=init,
                ),
                f"finetune {stage.name}",
            )
            trained[stage.name] = tuned
            step(
                evaluate(
                    spec_json=spec_json,
                    cluster_json=cluster_json,
                    stage=stage.name,
                    scheduler=scheduler,
                    data=data.outputs["data"],
                    model=tuned.outputs["model"],
                ),
                f"evaluate {stage.name}",
            )

    return experiment


def compile_pipeline(spec: ExperimentSpec, path: str, deployment: Deployment | None = None) -> None:
    compiler.Compiler().compile(build_pipeline(spec, deployment), package_path=path)
