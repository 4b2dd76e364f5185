"""Prometheus metrics of one training rank.

Every rank serves its own registry over HTTP (prometheus_client) on `MEGA3D_METRICS_PORT` + its local
rank: on a cluster each pod has its own address, so the ranks of a node differ by port. With
`MEGA3D_METRICS_ONE_HOST` (local runs, where every "node" shares this machine) it is + the global rank
instead, and a port that another job holds moves up by the world size (see mega3d.trainer.environment).
Every series carries the labels experiment, branch (the sweep branch, empty without a sweep), run (the run
id), stage, node (torchrun's group rank) and rank: the launcher sets `MEGA3D_BRANCH` and `MEGA3D_RUN`, so
that the branches of a sweep and the successive runs of one experiment are series of their own. At the end
of a stage the final values go to the Pushgateway at `MEGA3D_PUSHGATEWAY`, when set, grouped by those labels
and the phase (train, evaluate) under the job `mega3d-final`: one group per branch, run, stage, rank and
phase, so that no branch's or run's push replaces another's. An empty branch is a valid grouping-key value
(prometheus_client sends it as `branch@base64/=`).

    mega3d_steps_total, mega3d_clips_total, mega3d_unreadable_videos_total          counters
    mega3d_loss, mega3d_learning_rate, mega3d_epoch, mega3d_start_time_seconds      gauges
    mega3d_preemptions, mega3d_preempted_seconds                                    gauges
    mega3d_evaluation_accuracy{kind="clip|video_top1|video_top5"}                  gauge
    mega3d_gpu_memory_allocated_bytes, mega3d_gpu_memory_peak_bytes                 gauges (GPUs)
    mega3d_step_seconds (a whole loop iteration), mega3d_data_wait_seconds          histograms
    mega3d_run_info{model, dataset_fingerprint, version}                            info
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from importlib import metadata

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, push_to_gateway
from prometheus_client.exposition import start_http_server

from mega3d.trainer import environment

LABELS = ("experiment", "branch", "run", "stage", "node", "rank")
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
PORT_ATTEMPTS = 16
# The Pushgateway's job label: final values of finished stages, apart from the live series of running ranks
# (alerts on training progress must not see them).
PUSH_JOB = "mega3d-final"
EVALUATION_KINDS = ("clip_accuracy", "video_top1", "video_top5")


@dataclass(frozen=True)
class Endpoints:
    """Where a rank's metrics go, from the environment the launcher sets."""

    port: int | None
    one_host: bool
    pushgateway: str | None

    @classmethod
    def from_environment(cls) -> Endpoints:
        port = os.environ.get(environment.METRICS_PORT)
        return cls(
            port=int(port) if port else None,
            one_host=bool(os.environ.get(environment.METRICS_ONE_HOST)),
            pushgateway=os.environ.get(environment.PUSHGATEWAY) or None,
        )


def mega3d_version() -> str:
    try:
        return metadata.version("mega3d")
    except metadata.PackageNotFoundError:
        return "unknown"


class Exporter:
    def __init__(
        self,
        experiment: str,
        stage: str,
        rank: int,
        world_size: int,
        endpoints: Endpoints,
        *,
        branch: str,
        run: str,
    ) -> None:
        self.labels = {
            "experiment": experiment,
            "branch": branch,
            "run": run,
            "stage": stage,
            "node": os.environ.get("GROUP_RANK", "0"),
            "rank": str(rank),
        }
        self.endpoints = endpoints
        self.registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, help: str) -> Counter:
            return Counter(name, help, LABELS, registry=self.registry).labels(**self.labels)

        def gauge(name: str, help: str) -> Gauge:
            return Gauge(name, help, LABELS, registry=self.registry).labels(**self.labels)

        self.steps = counter("mega3d_steps", "Training steps (loop iterations) done")
        self.clips = counter("mega3d_clips", "Training clips processed")
        self.unreadable_videos = counter(
            "mega3d_unreadable_videos", "Videos that could not be decoded, skipped"
        )
        self.loss = gauge("mega3d_loss", "Training loss of the last step")
        self.learning_rate = gauge("mega3d_learning_rate", "Learning rate")
        self.epoch = gauge("mega3d_epoch", "Current epoch (from 1)")
        self.started = gauge(
            "mega3d_start_time_seconds", "When this process started (a new value per restart)"
        )
        self.started.set(time.time())
        self.preemptions = gauge(
            "mega3d_preemptions", "Restarts of this stage after a checkpoint on notice (SIGTERM), so far"
        )
        self.preempted_seconds = gauge(
            "mega3d_preempted_seconds", "Seconds from those checkpoints to the restarts, added up"
        )
        self.gpu_allocated = gauge("mega3d_gpu_memory_allocated_bytes", "GPU memory allocated by tensors")
        self.gpu_peak = gauge("mega3d_gpu_memory_peak_bytes", "Peak GPU memory allocated by tensors")
        self.accuracy = Gauge(
            "mega3d_evaluation_accuracy",
            "Accuracy on the evaluation split: clip, video top-1, video top-5",
            (*LABELS, "kind"),
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "mega3d_step_seconds",
            "Seconds per training-loop iteration (waiting for data + compute)",
            LABELS,
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        ).labels(**self.labels)
        self.data_wait_seconds = Histogram(
            "mega3d_data_wait_seconds",
            "Seconds per training-loop iteration spent waiting for the next batch",
            LABELS,
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        ).labels(**self.labels)
        self.info = Info("mega3d_run", "What this stage trains", LABELS, registry=self.registry)
        self.port = self._serve(rank, world_size)

    def _serve(self, rank: int, world_size: int) -> int | None:
        if self.endpoints.port is None:
            return None
        if not self.endpoints.one_host:
            port = self.endpoints.port + int(os.environ.get("LOCAL_RANK", "0"))
            start_http_server(port, registry=self.registry)
            return port
        for attempt in range(PORT_ATTEMPTS):  # another job on this machine may hold the first choice
            port = self.endpoints.port + rank + attempt * world_size
            try:
                start_http_server(port, addr="127.0.0.1", registry=self.registry)
                return port
            except OSError:
                continue
        raise OSError(f"no free metrics port from {self.endpoints.port + rank} in {PORT_ATTEMPTS} tries")

    def describe(self, model: str, dataset_fingerprint: str) -> None:
        self.info.labels(**self.labels).info(
            {"model": model, "dataset_fingerprint": dataset_fingerprint, "version": mega3d_version()}
        )

    def record_step(self, seconds: float, waited: float, clips: int, loss: float) -> None:
        self.steps.inc()
        self.clips.inc(clips)
        self.loss.set(loss)
        self.step_seconds.observe(seconds)
        self.data_wait_seconds.observe(waited)

    def record_preemptions(self, count: int, seconds: float) -> None:
        self.preemptions.set(count)
        self.preempted_seconds.set(seconds)

    def record_epoch(self, epoch: int, learning_rate: float, device: torch.device) -> None:
        self.epoch.set(epoch)
        self.learning_rate.set(learning_rate)
        if device.type == "cuda":
            self.gpu_allocated.set(torch.cuda.memory_allocated(device))
            self.gpu_peak.set(torch.cuda.max_memory_allocated(device))

    def record_evaluation(self, metrics: dict[str, float]) -> None:
        for kind in EVALUATION_KINDS:
            self.accuracy.labels(**self.labels, kind=kind.removesuffix("_accuracy")).set(metrics[kind])

    def push(self, phase: str) -> None:
        """The final values, to the Pushgateway (when one is configured). `phase` (train, evaluate) keeps
        apart the groups of a stage's training job and of its own evaluation step."""
        if self.endpoints.pushgateway:
            grouping = {**self.labels, "phase": phase}
            push_to_gateway(
                self.endpoints.pushgateway, job=PUSH_JOB, grouping_key=grouping, registry=self.registry
            )
