"""The table `mega3d run` ends with: one row per stage, read from the run directory."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from mega3d.trainer import layout, storage
from mega3d.trainer.records import StageMetrics
from mega3d.trainer.spec import Branch, ExperimentSpec


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


@dataclass(frozen=True)
class StageRow:
    branch: Branch
    stage: str
    trained: StageMetrics  # the stage's own metrics: how it trained
    reported: StageMetrics  # what the run reports of it (layout.reported_metrics)


def stage_rows(spec: ExperimentSpec, run_dir: str) -> list[StageRow]:
    """Every stage of every branch that has results (a branch that trained nothing has none)."""
    rows = []
    for branch in spec.branches():
        branch_dir = layout.branch_dir(run_dir, branch.name)
        for stage in spec.stage_names():
            reported = layout.reported_metrics(branch_dir, stage)
            if storage.exists(reported):
                trained = StageMetrics.read(layout.stage_metrics(branch_dir, stage))
                rows.append(StageRow(branch, stage, trained, StageMetrics.read(reported)))
    return rows


def results_table(spec: ExperimentSpec, run_dir: str) -> Table:
    table = Table(title=f"{spec.name}: {spec.evaluation.split} accuracy (%)", title_justify="left")
    swept = spec.sweep is not None
    for column in (
        *(["branch"] if swept else []),
        "stage",
        "data",
        "classes",
        "chance",
        "clip",
        "video top-1",
        "video top-5",
        "ranks",
        "time",
    ):
        table.add_column(column, justify="left" if column in ("branch", "stage", "data") else "right")
    for row in stage_rows(spec, run_dir):
        metrics = row.reported
        n_classes = len(metrics.classes)
        table.add_row(
            *([row.branch.name] if swept else []),
            row.stage,
            "+".join(spec.for_branch(row.branch).stage_datasets(row.stage)),
            str(n_classes),
            _percent(1 / n_classes),
            _percent(metrics.clip_accuracy),
            _percent(metrics.video_top1),
            _percent(metrics.video_top5),
            str(row.trained.world_size),
            f"{row.trained.seconds:.0f}s",
        )
    return table
