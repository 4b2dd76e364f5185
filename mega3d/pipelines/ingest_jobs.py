"""Where the replicas of a dataset ingest run: the `launch` that mega3d.trainer.data.replicas'
coordinator is given, running the TorchX app of mega3d.components.ingest to its end."""

from __future__ import annotations

from mega3d.components.ingest import ingester
from mega3d.pipelines.launcher import launch_local, launch_on_cluster
from mega3d.pipelines.settings import Deployment
from mega3d.pipelines.volcano import JobIdentity
from mega3d.trainer.data.replicas import Launch


def local_launcher(max_retries: int = 2, log_dir: str | None = None, memory_gb: int = 8) -> Launch:
    """Run the replicas as processes of this machine (TorchX local_cwd) and wait for them; the whole app
    is started again, up to `max_retries` times, when a replica failed (finished replicas then end at
    once). `log_dir`: where TorchX keeps the replicas' logs."""

    def launch(replica_args: list[str], replicas: int, cpu: int) -> None:
        app = ingester(
            *replica_args, replicas=replicas, cpu=cpu, memory_gb=memory_gb, max_retries=max_retries
        )
        launch_local(app, {"log_dir": log_dir} if log_dir is not None else None)

    return launch


def cluster_launcher(
    deployment: Deployment,
    identity: JobIdentity,
    image: str | None = None,
    max_retries: int = 3,
    memory_gb: int = 8,
    name: str = "mega3d-ingest",
) -> Launch:
    """Run the replicas as a Volcano job on the deployment's cluster (TorchX kubernetes) in `image`, by
    default the deployment's, and wait for it; a coordinator started again follows the job `identity`
    names instead of submitting a second one. The dataset and the source's root must be object-storage
    URIs the pods can read."""
    image = image or deployment.image
    if image is None:
        raise ValueError("an ingest on a cluster needs an image with mega3d: set the deployment's image")

    def launch(replica_args: list[str], replicas: int, cpu: int) -> None:
        app = ingester(
            *replica_args,
            replicas=replicas,
            name=name,
            image=image,
            cpu=cpu,
            memory_gb=memory_gb,
            max_retries=max_retries,
        )
        launch_on_cluster(app, deployment, identity)

    return launch
