"""Where a run keeps its files under the spec's storage root (torch-free; the CLI reads results here).

<storage>/experiments/<name>/runs/<run_id>/spec.json             the spec as the run resolved it
                                          <branch>/spec.json       the spec as the branch trains it
                                          <branch>/data/<stage>/   pretraining merge (and subset): an index
                                          <branch>/<stage>/checkpoint.pt    one directory per stage
                                          <branch>/<stage>/checkpoints/     epochs, while it trains
                                          <branch>/<stage>/metrics.json
                                          <branch>/<stage>/evaluation/metrics.json
                                          <branch>/<stage>/evaluation/results.json   top-5 per video
<branch> is the run directory itself without a sweep, else `branches/<branch name>`.
<storage>/registry/<name>/<branch name or "main">/   the model registry (see mega3d.pipelines.registry)
<storage>/catalog/<dataset name>/<version>.json     the dataset catalog (see mega3d.trainer.catalog)
"""

from __future__ import annotations

from mega3d.trainer import storage
from mega3d.trainer.spec import PRETRAIN, ExperimentSpec

SPEC_FILE = "spec.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"  # per video, its top-5 classes: the reference's results JSON layout
CHECKPOINTS_DIR = "checkpoints"  # a stage's epoch checkpoints while it trains (mega3d.trainer.checkpoint)
LATEST_FILE = "latest.json"  # in CHECKPOINTS_DIR: records.LatestEpoch


def run_dir(spec: ExperimentSpec, run_id: str) -> str:
    return storage.join(spec.storage, "experiments", spec.name, "runs", run_id)


def branch_dir(run: str, branch: str) -> str:
    return storage.join(run, "branches", branch) if branch else run


def registry_dir(spec: ExperimentSpec, branch: str) -> str:
    return storage.join(spec.storage, "registry", spec.name, branch or "main")


def stage_dir(run: str, stage: str) -> str:
    return storage.join(run, stage)


def evaluation_dir(run: str, stage: str) -> str:
    return storage.join(run, stage, "evaluation")


def merged_dataset(run: str, stage: str) -> str:
    """The directory of a stage's merged dataset: an index that points at its datasets' shards."""
    return storage.join(run, "data", stage)


def stage_metrics(run: str, stage: str) -> str:
    """The stage's own metrics.json: its training history, and its evaluation at the end of training."""
    return storage.join(stage_dir(run, stage), METRICS_FILE)


def evaluation_metrics(run: str, stage: str) -> str:
    """The metrics.json of a fine-tuned stage's evaluation step."""
    return storage.join(evaluation_dir(run, stage), METRICS_FILE)


def reported_metrics(run: str, stage: str) -> str:
    """The metrics a run reports for a stage: pretraining's own (on its validation split), a fine-tune
    target's evaluation step's."""
    return stage_metrics(run, stage) if stage == PRETRAIN else evaluation_metrics(run, stage)
