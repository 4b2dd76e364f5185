from __future__ import annotations

from torchx.specs import AppDef

from mega3d.components.train import trainer


def test_trainer_component_is_a_torchrun_ddp_app() -> None:
    app = trainer(
        "train",
        "--stage",
        "pretrain",
        name="exp-pretrain",
        image="img:1",
        nnodes=4,
        nproc_per_node=8,
        gpus=8,
        cpu=32,
        memory_gb=200,
        max_retries=3,
        rdzv_port=29511,
    )
    assert isinstance(app, AppDef)
    (role,) = app.roles
    assert role.num_replicas == 4 and role.max_retries == 3 and role.image == "img:1"
    assert role.resource.gpu == 8 and role.resource.cpu == 32 and role.resource.memMB == 200 * 1024
    command = " ".join(role.args)
    assert "--nnodes 4" in command and "--nproc_per_node 8" in command and ":29511" in command
    assert "-m mega3d.trainer train --stage pretrain" in command
    assert role.env["OMP_NUM_THREADS"] == "4"  # 32 cores shared by 8 processes


def test_local_dry_run_starts_one_torchrun_per_node() -> None:
    from torchx.runner import get_runner

    app = trainer("evaluate", name="exp-eval", nnodes=2, nproc_per_node=1, cpu=1)
    info = get_runner().dryrun(app, "local_cwd", cfg={})
    replicas = info.request.role_params[app.roles[0].name]  # type: ignore[attr-defined]
    assert len(replicas) == 2
    for params in replicas:
        command = " ".join(params.args)
        assert command.count("torchrun ") == 1 and "--nnodes 2 --nproc_per_node 1" in command
        assert command.endswith("-m mega3d.trainer evaluate")
