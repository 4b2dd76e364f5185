"""The table `mega3d run` ends with: one row per stage, read from the run directory."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from mega3d.trainer import layout, storage
from mega3d.trainer.spec import PRETRAIN, ExperimentSpec


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def stage_rows(spec: ExperimentSpec, run_dir: str) -> list[dict[str, Any]]:
    """Every stage of every branch that has results (a branch that trained nothing has none)."""
    rows = []
    for branch in spec.branches():
        branch_dir = layout.branch_dir(run_dir, branch.name)
        for stage in spec.stage_names():
            stage_dir = layout.stage_dir(branch_dir, stage)
            source = stage_dir if stage == PRETRAIN else layout.evaluation_dir(branch_dir, stage)
            uri = storage.join(source, layout.METRICS_FILE)
            if storage.exists(uri):
                trained = storage.read_json(storage.join(stage_dir, layout.METRICS_FILE))
                rows.append(
                    {
                        "branch": branch,
                        "stage": stage,
                        "trained": trained,
                        "metrics": storage.read_json(uri),
                    }
                )
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
        stage, trained, metrics = row["stage"], row["trained"], row["metrics"]
        data = "+".join(spec.for_branch(row["branch"]).stage_datasets(stage))
        n_classes = len(metrics["classes"])
        table.add_row(
            *([row["branch"].name] if swept else []),
            stage,
            data,
            str(n_classes),
            _percent(1 / n_classes),
            _percent(metrics["clip_accuracy"]),
            _percent(metrics["video_top1"]),
            _percent(metrics["video_top5"]),
            str(trained["world_size"]),
            f"{trained['seconds']:.0f}s",
        )
    return table
