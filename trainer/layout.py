"""Where a run keeps its files under the spec's storage root (torch-free; the CLI reads results here).

<storage>/experiments/<name>/runs/<run_id>/spec.json
                                          data/<stage>/index.npz       merged pretraining index
                                          <stage>/checkpoint.pt        one directory per stage
                                          <stage>/metrics.json
                                          <stage>/evaluation/metrics.json
                                          <stage>/evaluation/results.json   top-5 classes per video
"""

from __future__ import annotations

from trainer import storage
from trainer.data.format import INDEX_FILE
from trainer.spec import ExperimentSpec

SPEC_FILE = "spec.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"  # per video, its top-5 classes: the reference's results JSON layout


def run_dir(spec: ExperimentSpec, run_id: str) -> str:
    return storage.join(spec.storage, "experiments", spec.name, "runs", run_id)


def stage_dir(run: str, stage: str) -> str:
    return storage.join(run, stage)


def evaluation_dir(run: str, stage: str) -> str:
    return storage.join(run, stage, "evaluation")


def merged_index(run: str, stage: str) -> str:
    return storage.join(run, "data", stage, INDEX_FILE)
