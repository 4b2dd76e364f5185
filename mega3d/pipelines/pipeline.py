"""Assemble the KFP v2 pipeline of an experiment spec, and compile it to IR YAML.

    prepare run (catalog versions resolved, spec kept, datasets made)
    for each sweep branch (a ParallelFor; one branch without a sweep):
        prepare data (merge, subset, fingerprint, stage and run keys)
        if the run key is new (or skip_if_trained is off):
            pretrain
            for each fine-tune target (a ParallelFor): prepare target -> finetune -> evaluate
            register (model registry; champion if it beats the current one)
        else: skip (says which run trained with this run key)

A training step first looks for its stage's key: a stage this run finished before it was resumed is kept;
with skip_if_trained, one an earlier run finished is reused and one it was interrupted in resumes.

Without a pretrain stage, fine-tuning starts from checkpoints named by URI.

Pipeline parameters: `spec_json` (the validated spec), `cluster_json` (deployment settings, no
credentials), `run_id` (empty: the KFP run's id), `scheduler` (`kubernetes` on a cluster, `local_cwd` for
`mega3d run`), `skip_if_trained` (set by scheduled runs). No `from __future__ import annotations`: KFP reads
the pipeline function's annotations as types.
"""

from collections.abc import Callable
from typing import Any

from kfp import compiler, dsl, kubernetes

from mega3d.pipelines import steps
from mega3d.pipelines.actions import FINETUNE_ONLY, PRETRAIN_THEN_FINETUNE
from mega3d.pipelines.launcher import KUBERNETES_SCHEDULER
from mega3d.pipelines.settings import (
    CREDENTIALS_DIR,
    CREDENTIALS_KEY,
    STEP_POD_NAME,
    STEP_POD_UID,
    Deployment,
)
from mega3d.trainer.spec import PRETRAIN, ExperimentSpec

STEP_CPU = "250m"
STEP_MEMORY = "1G"


def build_pipeline(spec: ExperimentSpec, deployment: Deployment | None = None) -> Callable[..., Any]:
    """The pipeline of a spec; SpecError when its sweep expands past the deployment's max_branches."""
    deployment = deployment or Deployment()
    spec.check_branches(deployment.max_branches, "spec")

    # Steps only prepare data and follow jobs: the light launcher image serves them, where there is one.
    step_image = deployment.step_image or deployment.image or spec.image

    def component(func: Callable[..., Any]) -> Callable[..., dsl.PipelineTask]:
        return dsl.component(func, base_image=step_image, install_kfp_package=False)

    prepare_run = component(steps.prepare_run)
    prepare_branch = component(steps.prepare_branch)
    pretrain = component(steps.pretrain)
    prepare_target = component(steps.prepare_target)
    finetune = component(steps.finetune)
    evaluate = component(steps.evaluate)
    register = component(steps.register)
    skip = component(steps.skip)
    targets = [stage.name for stage in spec.finetune]
    branches = [branch.name for branch in spec.branches()]
    # What the branches do: pretrain then fine-tune, or fine-tune only (from scratch or checkpoint files).
    pretraining = any(spec.for_branch(branch).pretrain for branch in spec.branches())
    finetuning_only = not all(spec.for_branch(branch).pretrain for branch in spec.branches())

    def step(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        # Every run writes a new run directory: a cached step would point at another run's files.
        task.set_display_name(name).set_caching_options(False)
        # Steps only prepare data and follow TorchX jobs: the GPUs go to the training pods.
        task.set_cpu_request(STEP_CPU).set_memory_request(STEP_MEMORY)
        kubernetes.set_security_context(task, run_as_non_root=True)
        if deployment.credentials_secret:  # the Secret's name, never its content
            kubernetes.use_secret_as_volume(task, deployment.credentials_secret, mount_path=CREDENTIALS_DIR)
            task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{CREDENTIALS_DIR}/{CREDENTIALS_KEY}")
        return task

    def launching(task: dsl.PipelineTask) -> dsl.PipelineTask:
        """A step that launches a TorchX job learns its own pod's name and UID (downward API): the job
        names that pod as its owner, so that deleting the run's pods deletes the job too."""
        kubernetes.use_field_path_as_env(task, env_name=STEP_POD_NAME, field_path="metadata.name")
        kubernetes.use_field_path_as_env(task, env_name=STEP_POD_UID, field_path="metadata.uid")
        return task

    @dsl.pipeline(name=f"mega3d-{spec.name}", description=f"mega3d experiment {spec.name}")
    def experiment(
        spec_json: str = spec.model_dump_json(exclude_none=True),
        cluster_json: str = deployment.cluster_json(),
        run_id: str = "",
        scheduler: str = KUBERNETES_SCHEDULER,
        skip_if_trained: bool = False,
    ) -> None:
        run = step(
            prepare_run(spec_json=spec_json, run_id=run_id, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
            "prepare run",
        )

        def finetune_targets(prepared: dsl.PipelineTask, init: dict[str, Any]) -> None:
            """Every target side by side (prepare, fine-tune, evaluate), then register the branch."""
            with dsl.ParallelFor(targets, name="targets") as stage:
                target = step(
                    prepare_target(stage=stage, branch=prepared.outputs["data"]),
                    "prepare target",
                )
                tuned = finetune(
                    cluster_json=cluster_json,
                    stage=stage,
                    scheduler=scheduler,
                    data=target.outputs["data"],
                    **init,
                )
                launching(step(tuned, "finetune"))
                evaluated = evaluate(
                    cluster_json=cluster_json,
                    stage=stage,
                    scheduler=scheduler,
                    data=target.outputs["data"],
                    model=tuned.outputs["model"],
                )
                launching(step(evaluated, "evaluate"))
            step(register(branch=prepared.outputs["data"]), "register").after(evaluated)

        def train_branch(branch: Any) -> None:
            prepared = step(
                prepare_branch(
                    branch=branch,
                    skip_if_trained=skip_if_trained,
                    run=run.outputs["run"],
                ),
                "prepare data",
            )
            action = prepared.outputs["Output"]
            if pretraining:
                with dsl.If(action == PRETRAIN_THEN_FINETUNE, name="pretrain-then-finetune"):
                    pretrained = pretrain(
                        cluster_json=cluster_json,
                        scheduler=scheduler,
                        data=prepared.outputs["data"],
                    )
                    launching(step(pretrained, PRETRAIN))
                    finetune_targets(prepared, {"init": pretrained.outputs["model"]})
            if finetuning_only:
                condition = dsl.Elif if pretraining else dsl.If
                with condition(action == FINETUNE_ONLY, name="finetune-only"):
                    finetune_targets(prepared, {})
            with dsl.Else(name="trained-before"):
                step(skip(branch=prepared.outputs["data"]), "skip: trained before")

        if branches == [""]:
            train_branch("")
        else:
            # Each branch queues its own jobs: a bounded number at once leaves the queue to other work.
            with dsl.ParallelFor(branches, parallelism=deployment.sweep_parallelism, name="sweep") as branch:
                train_branch(branch)

    return experiment


def compile_pipeline(spec: ExperimentSpec, path: str, deployment: Deployment | None = None) -> None:
    compiler.Compiler().compile(build_pipeline(spec, deployment), package_path=path)
