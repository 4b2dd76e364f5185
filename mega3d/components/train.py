"""TorchX components: typed functions of primitive arguments that return an AppDef.

Usable from the pipeline launcher and from the TorchX CLI alike, e.g.
    torchx run -s local_cwd mega3d/components/train.py:trainer -- --nnodes 2 -- \
        train --spec ... --stage pretrain ...
"""

from __future__ import annotations

from torchx import specs
from torchx.components import dist


def trainer(
    *trainer_args: str,
    name: str = "mega3d",
    image: str = "mega3d:latest",
    nnodes: int | str = 1,
    nproc_per_node: int = 1,
    gpus: int = 0,
    cpu: int = 4,
    memory_gb: int = 16,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    env: dict[str, str] | None = None,
    metrics_port: int = 0,
) -> specs.AppDef:
    """`python -m mega3d.trainer TRAINER_ARGS` under torchrun on nnodes x nproc_per_node processes (DDP).

    Args:
        trainer_args: arguments of `python -m mega3d.trainer` (train|evaluate --spec ... --stage ...)
        name: app name; short and DNS-safe, since pod names are capped at 63 characters
        image: container image with mega3d installed (ignored by local_cwd)
        nnodes: number of nodes (one Volcano task each on Kubernetes, one torchrun each locally), or
            "min:max": an elastic job that starts on min nodes and takes up to max
        nproc_per_node: processes per node (one per GPU on GPU nodes)
        gpus: GPUs per node; 0 trains on CPU with gloo
        cpu: CPU cores per node; also the number of intra-op threads per process
        memory_gb: memory per node in GiB
        max_retries: whole-job restarts; training resumes from its last checkpoint
        rdzv_port: torchrun rendezvous port; jobs sharing a machine need different ports
        env: extra environment variables
        metrics_port: first port of the processes' Prometheus metrics (one per local rank, named
            metrics-0, metrics-1, ... for the PodMonitor); 0: none
    """
    threads = max(1, cpu // nproc_per_node)
    app = dist.torchrun(
        *trainer_args,
        m="mega3d.trainer",
        name=name,
        image=image,
        cpu=cpu,
        gpu=gpus,
        memMB=memory_gb * 1024,
        j=f"{nnodes}x{nproc_per_node}",
        env={"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", **(env or {})},
        max_retries=max_retries,
        rdzv_port=rdzv_port,
    )
    if metrics_port:
        for role in app.roles:
            role.port_map.update({f"metrics-{i}": metrics_port + i for i in range(nproc_per_node)})
    return app
