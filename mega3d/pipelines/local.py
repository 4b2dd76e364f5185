"""Run a spec's pipeline on this machine: kfp.local executes the steps as subprocesses of the current
environment, and each training step runs its TorchX app with the `local_cwd` scheduler."""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import threading
import warnings
from typing import TextIO

from kfp import local

from mega3d.pipelines.launcher import LOCAL_SCHEDULER
from mega3d.pipelines.pipeline import build_pipeline
from mega3d.pipelines.settings import Deployment
from mega3d.trainer import layout, storage
from mega3d.trainer.spec import ExperimentSpec

EXECUTOR_TAG = "[KFP Executor "


class ExecutorLogFilter(io.TextIOBase):
    """Drops the KFP executor's own INFO lines (including its multi-line dump of every step's inputs) from
    what kfp.local relays, keeping the steps' output and kfp.local's task status lines.

    Steps of a ParallelFor run in threads that write here at the same time, so each thread's partial line
    and place in a dump are kept apart."""

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self.pending: dict[int, str] = {}
        self.dump_end: dict[int, str] = {}  # per thread in a dump: the line that ends it
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        thread = threading.get_ident()
        with self.lock:
            *lines, self.pending[thread] = (self.pending.get(thread, "") + text).split("\n")
            for line in lines:
                if self._keep(thread, line):
                    self.target.write(line + "\n")
            self.target.flush()
        return len(text)

    def _keep(self, thread: int, line: str) -> bool:
        closing = self.dump_end.get(thread)
        if closing is not None:
            if line == closing:
                del self.dump_end[thread]
            return False
        if EXECUTOR_TAG in line:
            if line.rstrip().endswith(":"):  # the dump's JSON follows, closed by "}" at the tag's indent
                self.dump_end[thread] = line[: len(line) - len(line.lstrip())] + "}"
            return False
        return True

    def flush(self) -> None:
        self.target.flush()


def run_local(
    spec: ExperimentSpec,
    run_id: str,
    verbose: bool = False,
    skip_if_trained: bool = False,
    metrics: Deployment | None = None,
) -> None:
    """Raises when a step fails (kfp.local stops the pipeline at the first failed task). `metrics`: where
    training processes serve and push their metrics (by default they serve none)."""
    run = layout.run_dir(spec, run_id)
    # kfp.local keeps its artifacts on the local disk: beside the run when that is local, else in /tmp.
    pipeline_root = (
        storage.join(run, "kfp") if "://" not in run else tempfile.mkdtemp(prefix=f"mega3d-kfp-{run_id}-")
    )
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True
    )
    pipeline = build_pipeline(spec)
    # kfp.local ignores display names and images; both matter only on a cluster, so say nothing of them here.
    warnings.filterwarnings("ignore", message=r"Task '.*': settings \['display_name'\] have no effect")
    warnings.filterwarnings("ignore", message=r"You may be attemping to run a task that uses custom")
    arguments = {
        "run_id": run_id,
        "scheduler": LOCAL_SCHEDULER,
        "skip_if_trained": skip_if_trained,
        "cluster_json": (metrics or Deployment(metrics_port=None)).cluster_json(),
    }
    if verbose:
        pipeline(**arguments)
        return
    with contextlib.redirect_stdout(ExecutorLogFilter(sys.stdout)):
        pipeline(**arguments)
