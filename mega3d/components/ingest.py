"""TorchX component of a dataset ingest split over replicas, and the launchers the coordinator is given.

`ingester` is the app: one role of N replicas, each running
`python -m mega3d.trainer.data.replicas ARGS --replica ${replica_id}` (mega3d.trainer.data.replicas, whose
coordinator `ingest_with_replicas` writes the plan and the shares, and builds the index after). Usable from
the TorchX CLI too:
    torchx run -s local_cwd mega3d/components/ingest.py:ingester --replicas 4 -- \
        --dataset gs://b/k700 --replicas 4 --plan PLAN --workers 4

mega3d.pipelines.ingest_jobs runs it: as processes of this machine (TorchX local_cwd), or as a Volcano job
(TorchX kubernetes).
"""

from __future__ import annotations

from torchx import specs

ENTRY_POINT = "mega3d.trainer.data.replicas"
ROLE = "ingest"


def ingester(
    *replica_args: str,
    replicas: int = 1,
    name: str = "mega3d-ingest",
    image: str = "mega3d:latest",
    cpu: int = 4,
    memory_gb: int = 8,
    max_retries: int = 3,
    env: dict[str, str] | None = None,
) -> specs.AppDef:
    """`python -m mega3d.trainer.data.replicas REPLICA_ARGS --replica I` on `replicas` replicas, I from 0.

    Args:
        replica_args: arguments of the replica entry point but --replica (--dataset, --replicas, --plan,
            --workers), as `ingest_with_replicas` gives them
        replicas: number of replicas (one pod each on Kubernetes, one process locally)
        name: app name; short and DNS-safe, since pod names are capped at 63 characters
        image: container image with mega3d installed (ignored by local_cwd)
        cpu: CPU cores per replica; give as many as its --workers
        memory_gb: memory per replica in GiB
        max_retries: restarts of a replica that dies (each replica on its own: the others go on); a
            restarted replica skips the videos its finished shards hold
        env: extra environment variables
    """
    role = specs.Role(
        name=ROLE,
        image=image,
        entrypoint="python",
        args=["-m", ENTRY_POINT, *replica_args, "--replica", specs.macros.replica_id],
        num_replicas=replicas,
        resource=specs.Resource(cpu=cpu, gpu=0, memMB=memory_gb * 1024),
        # Decoding parallelism is the --workers processes': one thread each keeps them off each other's cores.
        env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
        max_retries=max_retries,
        retry_policy=specs.RetryPolicy.REPLICA,
    )
    return specs.AppDef(name=name, roles=[role])
