"""The paper's tables and figures from finished runs (`mega3d report`); torch-free.

`read_run` gathers one run directory's results into plain rows, `build_report` merges the rows of several
runs, `write_report` writes them out:

  table.md, table.csv    Table 2/3: a row per (pretraining, architecture), columns per target x (clip, top-1,
                         top-5) in percent; see `table_header` for the column order
  accuracy_vs_depth.png  Fig. 1/4: video top-1 vs depth, a line per (family, pretraining, target)
  accuracy_vs_categories.png, accuracy_vs_instances.png
                         Fig. 3: video top-1 vs the share of pretraining categories / instances kept, a line
                         per fine-tune target (and pretraining data and architecture, when there are several)
  classes_<target>.png   Fig. 5: the top-20 and bottom-20 classes of each fine-tune target, for the row with
                         the best video top-1 on it (mAP for multi-label targets): one figure per target,
                         however many branches were swept
  index.html             all of them on one page, with the runs they came from

Each row's `pretrain` columns are the pretraining stage's accuracy on its own validation split, which differs
from row to row with the pretraining data; the categories and instances figures therefore leave them out (a
subset's validation split holds only the kept categories), while the depth figure keeps them (one line per
pretraining data). A metrics file that is not there yet is a gap, not an error; one that is there is read
as `mega3d.trainer.records.Scores`, and one that is not such a record is a StudyError naming it.
"""

from __future__ import annotations

import csv
import html
import io
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from mega3d.trainer import layout, storage
from mega3d.trainer.records import RecordError, Scores
from mega3d.trainer.spec import (
    PRETRAIN,
    SCRATCH,
    Branch,
    ExperimentSpec,
    SpecError,
    is_checkpoint_uri,
    spec_from_json,
)

GAP_MARKDOWN = "\u2013"  # an en dash, as tables in papers mark a gap
SHOWN_CLASSES = 20  # Fig. 5, and the Kubeflow UI's class tables (mega3d.pipelines.reports): best and worst
METRICS = ("clip", "top-1", "top-5")
MEAN_AP = "mAP"

TABLE_MARKDOWN = "table.md"
TABLE_CSV = "table.csv"
INDEX_HTML = "index.html"
DEPTH_FIGURE = "accuracy_vs_depth.png"
CATEGORIES_FIGURE = "accuracy_vs_categories.png"
INSTANCES_FIGURE = "accuracy_vs_instances.png"
CLASS_FIGURE_PREFIX = "classes_"

DPI = 100
LINE_FIGURE_SIZE = (8.0, 5.0)  # inches: 800 x 500 pixels at DPI


def class_figure_size(bars: int) -> tuple[float, float]:
    """Inches of a Fig. 5 figure with `bars` classes: a fixed margin plus a row per bar."""
    return (8.0, 1.4 + 0.22 * bars)


class StudyError(ValueError):
    """A run directory or file that cannot be read as a run's results; the message names it."""


@dataclass(frozen=True)
class Row:
    """The results of one branch of one run: a row of the table."""

    run: str  # <experiment>/<run id>
    branch: str  # empty without a sweep
    pretraining: str  # datasets joined with '+', `scratch`, or the checkpoint file the targets start from
    category_fraction: float
    instance_fraction: float
    architecture: str  # e.g. r3d-50
    evaluations: dict[str, Scores]  # target (`pretrain` or a fine-tune stage) -> its scores

    @property
    def family(self) -> str:
        return self.architecture.rpartition("-")[0]

    @property
    def depth(self) -> int:
        return int(self.architecture.rpartition("-")[2])

    @property
    def key(self) -> tuple[str, float, float, str]:
        """The same pretraining data and architecture give the same key, whichever run trained them."""
        return (self.pretraining, self.category_fraction, self.instance_fraction, self.architecture)

    @property
    def label(self) -> str:
        return pretraining_label(self.pretraining, self.category_fraction, self.instance_fraction)


@dataclass(frozen=True)
class RunResults:
    root: str
    name: str  # <experiment>/<run id>
    targets: list[str]  # `pretrain` first when the run pretrains, then the fine-tune stages in spec order
    rows: list[Row]  # branches with at least one metrics file
    branches: int
    missing: list[str]  # metrics files not written (yet)


@dataclass(frozen=True)
class Report:
    runs: list[RunResults]
    rows: list[Row]  # one per key, the last run's; in table order
    targets: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Written:
    files: list[str]  # names in the output directory
    not_drawn: dict[str, str]  # figure -> why


def pretraining_name(datasets: Iterable[str], init_from: Iterable[str]) -> str:
    """A row's pretraining: its datasets joined with '+'; without any, the checkpoint files its fine-tune
    stages start from, else `scratch`."""
    datasets = list(datasets)
    if datasets:
        return "+".join(datasets)
    checkpoints = sorted({posixpath.basename(uri) for uri in init_from if is_checkpoint_uri(uri)})
    return "+".join(checkpoints) or SCRATCH


def pretraining_label(name: str, category_fraction: float, instance_fraction: float) -> str:
    """The pretraining as the table shows it, with the subset it kept, e.g. `kinetics700 (10% categories)`."""
    kept = [
        f"{round(fraction * 100)}% {what}"
        for fraction, what in ((category_fraction, "categories"), (instance_fraction, "instances"))
        if fraction < 1
    ]
    return f"{name} ({', '.join(kept)})" if kept else name


def run_root_problem(root: str) -> str | None:
    """Why `root` is not a run directory, or None."""
    if not storage.exists(root):
        return f"{root}: no such run directory"
    if not storage.exists(storage.join(root, layout.SPEC_FILE)):
        return f"{root}: no {layout.SPEC_FILE}; a run directory is <storage>/experiments/<name>/runs/<run id>"
    return None


def read_scores(uri: str) -> Scores:
    try:
        return Scores.read(uri)
    except RecordError as error:  # it names the file; the report's errors are StudyErrors
        raise StudyError(str(error)) from None


def _metrics_files(spec: ExperimentSpec, branch: Branch, branch_dir: str) -> dict[str, str]:
    """target -> where its metrics are: the pretraining stage's own, each fine-tune target's evaluation."""
    files = {}
    if branch.pretrain_datasets:
        files[PRETRAIN] = storage.join(layout.stage_dir(branch_dir, PRETRAIN), layout.METRICS_FILE)
    for stage in spec.finetune:
        files[stage.name] = storage.join(layout.evaluation_dir(branch_dir, stage.name), layout.METRICS_FILE)
    return files


def read_run(root: str) -> RunResults:
    """Every branch of the run at `root` (branches recomputed from its spec.json) with the metrics it has."""
    problem = run_root_problem(root)
    if problem:
        raise StudyError(problem)
    spec_uri = storage.join(root, layout.SPEC_FILE)
    try:
        spec = spec_from_json(storage.read_bytes(spec_uri).decode(), spec_uri)
    except SpecError as error:
        raise StudyError("; ".join(error.lines())) from None
    name = f"{spec.name}/{posixpath.basename(root.rstrip('/'))}"
    init_from = [stage.init_from for stage in spec.finetune]
    rows, missing = [], []
    branches = spec.branches()
    for branch in branches:
        branch_dir = layout.branch_dir(root, branch.name)
        evaluations = {}
        for target, uri in _metrics_files(spec, branch, branch_dir).items():
            if storage.exists(uri):
                evaluations[target] = read_scores(uri)
            else:
                missing.append(uri)
        if evaluations:
            rows.append(
                Row(
                    run=name,
                    branch=branch.name,
                    pretraining=pretraining_name(branch.pretrain_datasets, init_from),
                    category_fraction=branch.category_fraction,
                    instance_fraction=branch.instance_fraction,
                    architecture=branch.model.name,
                    evaluations=evaluations,
                )
            )
    targets = [*([PRETRAIN] if spec.pretrain else []), *(stage.name for stage in spec.finetune)]
    return RunResults(root, name, targets, rows, len(branches), missing)


def _row_order(row: Row) -> tuple[bool, str, float, float, str, int]:
    """Scratch first (the baseline), then pretraining data (all of it before its subsets), family, depth."""
    return (
        row.pretraining != SCRATCH,
        row.pretraining,
        -row.category_fraction,
        -row.instance_fraction,
        row.family,
        row.depth,
    )


def build_report(runs: list[RunResults]) -> Report:
    """The rows of all runs, one per (pretraining, architecture): where runs share one, the later run's."""
    newest: dict[tuple[str, float, float, str], Row] = {}
    earlier: dict[tuple[str, float, float, str], list[str]] = {}
    for run in runs:
        for row in run.rows:
            if row.key in newest:
                earlier.setdefault(row.key, []).append(newest[row.key].run)
            newest[row.key] = row
    targets = list(dict.fromkeys(target for run in runs for target in run.targets))
    targets.sort(key=lambda target: target != PRETRAIN)  # stable: fine-tune targets keep their order
    notes = [
        f"{newest[key].label} / {key[3]}: from run {newest[key].run} (also in {', '.join(runs_before)})"
        for key, runs_before in earlier.items()
    ]
    return Report(runs, sorted(newest.values(), key=_row_order), targets, notes)


# ---- the table ---------------------------------------------------------------------------------------


def _metrics_of(report: Report, target: str) -> list[str]:
    multi_label = any(row.evaluations[target].multi_label for row in report.rows if target in row.evaluations)
    return [*METRICS, *([MEAN_AP] if multi_label else [])]


def _metric_value(scores: Scores, metric: str) -> float | None:
    """A table column's value: `clip`, `top-1`, `top-5` or `mAP`."""
    return {
        "clip": scores.clip_accuracy,
        "top-1": scores.video_top1,
        "top-5": scores.video_top5,
        MEAN_AP: scores.mAP,
    }[metric]


def table_header(report: Report) -> list[str]:
    """pretraining, architecture; per target (`pretrain` first, then the fine-tune targets in the order the
    runs' specs list them) `<target> clip`, `<target> top-1`, `<target> top-5` and, for a multi-label
    target, `<target> mAP`; last the run the row's results come from."""
    columns = [f"{target} {metric}" for target in report.targets for metric in _metrics_of(report, target)]
    return ["pretraining", "architecture", *columns, "run"]


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}"


def table_rows(report: Report) -> list[list[str | None]]:
    """The table's cells, None for a gap, in the order of `table_header`."""
    rows = []
    for row in report.rows:
        cells: list[str | None] = [row.label, row.architecture]
        for target in report.targets:
            scores = row.evaluations.get(target)
            cells += [
                _percent(_metric_value(scores, metric)) if scores else None
                for metric in _metrics_of(report, target)
            ]
        rows.append([*cells, row.run])
    return rows


def table_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table_header(report))
    writer.writerows([["" if cell is None else cell for cell in row] for row in table_rows(report)])
    return buffer.getvalue()


ABOUT_TABLE = (
    "Accuracy (%) on each target's evaluation split; pretrain: on the pretraining data's own validation "
    f"split. {GAP_MARKDOWN}: not evaluated (yet)."
)
SUPERSEDED = "Rows that more than one run has show the run given last:"


def table_markdown(report: Report) -> str:
    header = table_header(report)
    lines = [
        "| " + " | ".join(header) + " |",
        "|"
        + "|".join("---" if column in ("pretraining", "architecture", "run") else "---:" for column in header)
        + "|",
    ]
    lines += [
        "| " + " | ".join(GAP_MARKDOWN if cell is None else cell for cell in row) + " |"
        for row in table_rows(report)
    ]
    notes = ["", SUPERSEDED, *(f"- {note}" for note in report.notes)] if report.notes else []
    return "\n".join([*lines, "", ABOUT_TABLE, *notes, ""])


# ---- the figures -------------------------------------------------------------------------------------

Series = dict[str, list[tuple[float, float]]]  # line label -> (x, video top-1 %) points in order of x


def _lines(points: Iterable[tuple[str, float, float]]) -> Series:
    """Lines with at least two points, from (label, x, y)."""
    grouped: Series = {}
    for label, x, y in points:
        grouped.setdefault(label, []).append((x, y))
    return {label: sorted(line) for label, line in grouped.items() if len(line) > 1}


def depth_series(report: Report) -> Series:
    """Fig. 1/4: a line per (family, pretraining, target) over depths."""
    return _lines(
        (f"{target}: {row.family}, {row.label}", row.depth, 100 * scores.video_top1)
        for row in report.rows
        for target, scores in row.evaluations.items()
        if scores.video_top1 is not None
    )


def fraction_series(report: Report, axis: Literal["categories", "instances"]) -> Series:
    """Fig. 3: a line per fine-tune target over the share (%) of pretraining `categories` or `instances`
    kept, for each pretraining data and architecture (and share of the other axis) the runs have."""

    def context(row: Row) -> str:
        other = row.instance_fraction if axis == "categories" else row.category_fraction
        kept = (
            f", {round(other * 100)}% {'instances' if axis == 'categories' else 'categories'}"
            if other < 1
            else ""
        )
        return f"{row.pretraining} {row.architecture}{kept}"

    points = [
        (
            target,
            context(row),
            100 * (row.category_fraction if axis == "categories" else row.instance_fraction),
            100 * scores.video_top1,
        )
        for row in report.rows
        for target, scores in row.evaluations.items()
        if target != PRETRAIN and scores.video_top1 is not None
    ]
    several = len({point[1] for point in points}) > 1
    return _lines((f"{target}: {where}" if several else target, x, y) for target, where, x, y in points)


def best_rows(report: Report) -> dict[str, Row]:
    """Fig. 5: per fine-tune target, the row with the best headline figure among those with per-class
    results (the first in table order on a tie)."""
    best: dict[str, Row] = {}
    for target in report.targets:
        if target == PRETRAIN:
            continue
        candidates = [
            row
            for row in report.rows
            if target in row.evaluations
            and row.evaluations[target].per_class
            and row.evaluations[target].headline is not None
        ]
        if candidates:
            best[target] = max(candidates, key=lambda row: row.evaluations[target].headline or 0.0)
    return best


def _line_figure(series: Series, xlabel: str, title: str, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=LINE_FIGURE_SIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    for label, line in series.items():
        axes.plot([x for x, _ in line], [y for _, y in line], marker="o", label=label)
    axes.set_xticks(sorted({x for line in series.values() for x, _ in line}))
    axes.set(xlabel=xlabel, ylabel="video top-1 (%)", title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=DPI)


def shown_classes(per_class: dict[str, float], shown: int = SHOWN_CLASSES) -> list[tuple[str, float]]:
    """The `shown` best and `shown` worst classes, best first (all of them when there are no more)."""
    ranked = sorted(per_class.items(), key=lambda item: (-item[1], item[0]))
    return ranked if len(ranked) <= 2 * shown else ranked[:shown] + ranked[-shown:]


def _class_figure(row: Row, target: str, path: Path) -> None:
    from matplotlib.figure import Figure

    scores = row.evaluations[target]
    classes = shown_classes(scores.per_class)
    figure = Figure(figsize=class_figure_size(len(classes)), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    truncated = len(classes) < len(scores.per_class)
    colours = ["tab:blue" if i < SHOWN_CLASSES or not truncated else "tab:red" for i in range(len(classes))]
    axes.barh(range(len(classes)), [100 * value for _, value in classes], color=colours)
    axes.set_yticks(range(len(classes)), [name for name, _ in classes], fontsize="small")
    axes.invert_yaxis()  # best at the top
    if truncated:
        hidden = len(scores.per_class) - len(classes)
        axes.axhline(SHOWN_CLASSES - 0.5, color="grey", linestyle="--")
        axes.text(
            100,
            SHOWN_CLASSES - 0.5,
            f"{hidden} classes not shown ",
            ha="right",
            va="bottom",
            fontsize="small",
        )
    axes.set(xlim=(0, 100), xlabel=f"{scores.per_class_measure} (%)")
    which = f"top and bottom {SHOWN_CLASSES}" if truncated else f"all {len(classes)}"
    axes.set_title(f"{target}: {which} classes\n{row.label} / {row.architecture} (run {row.run})")
    figure.savefig(path, dpi=DPI)


def _figures(report: Report) -> tuple[dict[str, Callable[[Path], None]], dict[str, str]]:
    """The figures there is data for (file name -> how to draw it) and why each other one is not drawn."""
    drawers: dict[str, Callable[[Path], None]] = {}
    not_drawn = {}
    for name, series, xlabel, title, absent in (
        (
            DEPTH_FIGURE,
            depth_series(report),
            "depth (layers)",
            "Video top-1 vs depth",
            "no family, pretraining and target has results at two or more depths (no depth sweep)",
        ),
        (
            CATEGORIES_FIGURE,
            fraction_series(report, "categories"),
            "pretraining categories kept (%)",
            "Video top-1 vs pretraining categories",
            "no run swept the fraction of pretraining categories (results at two or more fractions)",
        ),
        (
            INSTANCES_FIGURE,
            fraction_series(report, "instances"),
            "pretraining instances per category kept (%)",
            "Video top-1 vs pretraining instances",
            "no run swept the fraction of instances per category (results at two or more fractions)",
        ),
    ):
        if series:
            drawers[name] = partial(_line_figure, series, xlabel, title)
        else:
            not_drawn[name] = absent
    best = best_rows(report)
    for target in report.targets:
        if target == PRETRAIN:
            continue
        name = f"{CLASS_FIGURE_PREFIX}{target}.png"
        if target in best:
            drawers[name] = partial(_class_figure, best[target], target)
        else:
            not_drawn[name] = "no evaluation of this target has per-class results yet"
    return drawers, not_drawn


# ---- the page and the output directory ---------------------------------------------------------------


def index_html(report: Report, figures: list[str], not_drawn: dict[str, str]) -> str:
    """A self-contained page: the runs, the table, the figures (relative links to the PNGs beside it)."""
    esc = html.escape
    header = "".join(f"<th>{esc(column)}</th>" for column in table_header(report))
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(GAP_MARKDOWN if cell is None else cell)}</td>" for cell in row) + "</tr>"
        for row in table_rows(report)
    )
    runs = "".join(
        f"<li><b>{esc(run.name)}</b> <code>{esc(run.root)}</code>: {run.branches} branches, "
        f"{len(run.rows)} with results, {len(run.missing)} metrics files missing</li>"
        for run in report.runs
    )
    notes = "".join(f"<li>{esc(note)}</li>" for note in report.notes)
    about = f"<p>{esc(ABOUT_TABLE)}</p>" + (f"<p>{esc(SUPERSEDED)}</p><ul>{notes}</ul>" if notes else "")
    images = "".join(
        f"<figure><img src='{esc(name)}' alt='{esc(name)}'><figcaption>{esc(name)}</figcaption></figure>"
        for name in figures
    )
    absent = "".join(f"<li>{esc(name)}: not drawn: {esc(why)}</li>" for name, why in not_drawn.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mega3d report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}td{text-align:right}td:nth-child(-n+2),td:last-child"
        "{text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>mega3d report</h1><h2>Runs</h2><ul>{runs}</ul>"
        f"<h2>Table</h2><table><tr>{header}</tr>{body}</table>{about}"
        f"<p><a href='{TABLE_CSV}'>{TABLE_CSV}</a> <a href='{TABLE_MARKDOWN}'>{TABLE_MARKDOWN}</a></p>"
        f"<h2>Figures</h2>{images}<ul>{absent}</ul></body></html>\n"
    )


def _is_report_file(name: str) -> bool:
    return name in (
        TABLE_MARKDOWN,
        TABLE_CSV,
        INDEX_HTML,
        DEPTH_FIGURE,
        CATEGORIES_FIGURE,
        INSTANCES_FIGURE,
    ) or (name.startswith(CLASS_FIGURE_PREFIX) and name.endswith(".png"))


def write_report(report: Report, directory: Path) -> Written:
    """Build the whole report in a temporary sibling of `directory`, then move it in: a new directory is
    renamed into place; into an existing one, the files are moved one by one, index.html last, and an earlier
    report's files that this one does not have are removed (other files are left alone)."""
    directory = directory.resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    building = directory.parent / f".{directory.name}.partial-{uuid.uuid4().hex[:8]}"
    building.mkdir()
    try:
        drawers, not_drawn = _figures(report)
        for name, draw in drawers.items():
            draw(building / name)
        (building / TABLE_MARKDOWN).write_text(table_markdown(report))
        (building / TABLE_CSV).write_text(table_csv(report))
        (building / INDEX_HTML).write_text(index_html(report, list(drawers), not_drawn))
        files = [TABLE_MARKDOWN, TABLE_CSV, *drawers, INDEX_HTML]
        if not directory.exists():
            os.replace(building, directory)
        else:
            for name in files:  # index.html last: the page never links to a figure not there yet
                os.replace(building / name, directory / name)
            for stale in directory.iterdir():
                if _is_report_file(stale.name) and stale.name not in files and stale.is_file():
                    stale.unlink()
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return Written(files, not_drawn)
