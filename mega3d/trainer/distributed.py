"""The process group a stage runs in: ranks from the torchrun environment, gloo on CPU, nccl on GPU.

Without torchrun (a test, a benchmark) the process is a world of one on a free loopback port. On a cluster
node that was given GPUs, a process that finds fewer GPUs than its node has processes must stop at once
(`require_gpus`), saying what torch and the node report: it would otherwise train on CPU while the node's
GPUs sit reserved and idle.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mega3d.trainer import environment

NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Rank:
    if "RANK" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    # On GPUs the counters (epoch totals, unreadable clips) are CPU tensors too: nccl reduces CUDA tensors
    # only, so CPU tensors go over gloo in the same process group.
    dist.init_process_group("cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), device)


class MissingGPUs(RuntimeError):
    """A node that was given GPUs, where torch sees fewer than the node's processes."""


def require_gpus() -> None:
    """Where the node was given GPUs (`MEGA3D_GPUS_REQUIRED`), MissingGPUs unless torch sees one for each
    of the node's processes."""
    if not os.environ.get(environment.GPUS_REQUIRED):
        return
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found >= processes:
        return
    node = os.environ.get(environment.NODE_NAME) or socket.gethostname()
    cuda = torch.version.cuda or "none (a CPU build of torch)"
    raise MissingGPUs(
        f"node {node}: this stage was given GPUs, but torch sees {found} CUDA device(s) for {processes} "
        f"process(es) (torch {torch.__version__}, built for CUDA {cuda}; NVIDIA driver {nvidia_driver()}): "
        "stopping rather than training on CPU"
    )


def nvidia_driver() -> str:
    """The loaded NVIDIA kernel module's version, as the driver reports it in /proc."""
    try:
        first = NVIDIA_DRIVER.read_text().splitlines()[0]
    except (OSError, IndexError):
        return "not loaded"
    words = first.split()
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024"
    return next((word for word in words if word[:1].isdigit() and "." in word), first.strip())


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (a collective: all ranks call it)."""
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
