"""`mega3d`: validate, compile and run experiment specs; make datasets.

The CLI never imports torch, and imports kfp only inside the commands that need it, so `--help` is quick.
Bad input ends with one line per problem (file and dotted field path) and exit code 2.
"""

from __future__ import annotations

import os
import re
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from trainer.spec import ExperimentSpec, SpecError, SyntheticSpec, load_spec, summary

if TYPE_CHECKING:
    from trainer.data.format import DatasetIndex

app = typer.Typer(
    help="Train spatiotemporal 3D CNNs for video action recognition: on Kubeflow, or on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Create and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
models_app = typer.Typer(
    help="The model zoo: list architectures, import reference checkpoints.", no_args_is_help=True
)
app.add_typer(models_app, name="models")

out = Console(highlight=False)
if not out.is_terminal:
    out.width = 120  # logs and CI: room for the results table
err = Console(stderr=True, highlight=False)

_SYNTH = {name: field.default for name, field in SyntheticSpec.model_fields.items()}


class ShortcutType(StrEnum):
    A = "A"
    B = "B"


RUN_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
SpecPath = Annotated[Path, typer.Argument(help="Experiment spec (YAML).", show_default=False)]


# What storage and dataset code raise for bad input: DatasetError is a ValueError; ImportError means a URI
# scheme whose filesystem is not installed.
DATA_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, ImportError)


def fail(lines: list[str], code: int = 2) -> NoReturn:
    for line in lines:
        err.print(f"[red]error:[/red] {line}", soft_wrap=True)
    raise typer.Exit(code)


def read_spec(path: Path) -> ExperimentSpec:
    try:
        return load_spec(path)
    except SpecError as error:
        fail(error.lines())


@app.command()
def validate(spec: SpecPath) -> None:
    """Check a spec; print a one-line summary, or one line per problem (exit code 2)."""
    out.print(f"ok {summary(read_spec(spec))}", soft_wrap=True)


@app.command("compile")
def compile_command(
    spec: SpecPath,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the pipeline IR YAML.")
    ] = Path("pipeline.yaml"),
) -> None:
    """Compile a spec into a Kubeflow Pipelines (v2) pipeline: IR YAML to upload or submit."""
    if output.suffix not in (".yaml", ".yml", ".json"):
        fail([f"--output {output}: the pipeline file must end in .yaml, .yml or .json"])
    if not output.parent.is_dir() or output.is_dir():
        fail(
            [f"--output {output}: {'is a directory' if output.is_dir() else 'its directory does not exist'}"]
        )
    experiment = read_spec(spec)
    from pipelines.pipeline import compile_pipeline

    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    try:
        compile_pipeline(experiment, str(partial))
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    out.print(f"wrote {output} (pipeline mega3d-{experiment.name})")


def missing_inputs(spec: ExperimentSpec, source: str) -> list[str]:
    """Datasets that neither exist nor can be synthesized, and checkpoints that do not exist: found before
    any step runs."""
    from trainer import storage
    from trainer.data.format import index_uri
    from trainer.spec import is_checkpoint_uri

    used = sorted({name for stage in spec.stage_names() for name in spec.stage_datasets(stage)})
    problems = [
        f"{source}: datasets.{name}.uri: no dataset at {spec.dataset_uri(name)} "
        "(create it, e.g. with `mega3d data synth`, or give the dataset a `synthetic:` section)"
        for name in used
        if spec.datasets[name].synthetic is None and not storage.exists(index_uri(spec.dataset_uri(name)))
    ]
    problems += [
        f"{source}: finetune[{i}].init_from: no checkpoint at {spec.under_storage(stage.init_from)}"
        for i, stage in enumerate(spec.finetune)
        if is_checkpoint_uri(stage.init_from) and not storage.exists(spec.under_storage(stage.init_from))
    ]
    return problems


@app.command()
def run(
    spec: SpecPath,
    run_id: Annotated[str, typer.Option(help="Run directory name; default: the current time.")] = "",
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show the KFP executor's logs.")
    ] = False,
) -> None:
    """Run the whole pipeline on this machine: kfp.local steps, TorchX local_cwd DDP jobs (no cluster)."""
    experiment = read_spec(spec)
    from pipelines.local import run_local
    from trainer import layout, storage

    if run_id and not RUN_ID.match(run_id):
        fail([f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' (at most 64; no leading '.')"])
    experiment = experiment.with_storage(storage.local_absolute(experiment.storage))
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    run_dir = layout.run_dir(experiment, run_id)
    try:
        if storage.exists(run_dir):
            fail([f"{run_dir}: run {run_id!r} already exists; choose another --run-id"])
        missing = missing_inputs(experiment, str(spec))
    except DATA_ERRORS as error:
        fail([f"{spec}: storage {experiment.storage}: {error}"])
    if missing:
        fail(missing)
    out.print(f"[bold]mega3d run[/bold] {summary(experiment)}", soft_wrap=True)
    out.print(f"run directory: {run_dir}", soft_wrap=True)
    started = time.monotonic()
    try:
        run_local(experiment, run_id, verbose)
    except Exception as error:
        fail([f"run {run_id} failed: {error}"], code=1)
    from cli.results import results_table

    out.print(results_table(experiment, run_dir))
    out.print(f"finished in {time.monotonic() - started:.0f}s; files under {run_dir}", soft_wrap=True)


@data_app.command()
def synth(
    uri: Annotated[
        str, typer.Argument(help="Where to write the dataset (path or fsspec URI).", show_default=False)
    ],
    classes: Annotated[int, typer.Option(help="Number of classes (motion directions).")] = _SYNTH["classes"],
    videos_per_class: Annotated[
        int, typer.Option(help="Videos per class (a quarter are validation).")
    ] = _SYNTH["videos_per_class"],
    frames: Annotated[int, typer.Option(help="Frames per video.")] = _SYNTH["frames"],
    size: Annotated[int, typer.Option(help="Frame height and width in pixels.")] = _SYNTH["size"],
    speed: Annotated[float, typer.Option(help="Pixels per frame.")] = _SYNTH["speed"],
    rotation: Annotated[float, typer.Option(help="Direction of class 0 in degrees.")] = _SYNTH["rotation"],
    seed: Annotated[int, typer.Option(help="Random seed.")] = _SYNTH["seed"],
) -> None:
    """Write a synthetic video dataset whose classes differ only in motion."""
    from pydantic import ValidationError
    from rich.progress import Progress

    from trainer.data.format import DatasetError
    from trainer.data.synth import class_names, synthesize

    try:
        params = SyntheticSpec(
            classes=classes,
            videos_per_class=videos_per_class,
            frames=frames,
            size=size,
            speed=speed,
            rotation=rotation,
            seed=seed,
        )
    except ValidationError as error:
        fail([f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in error.errors(include_url=False)])
    try:
        with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
            bar = progress.add_task("synthesizing", total=params.classes * params.videos_per_class)
            index = synthesize(uri, params, lambda done, total: progress.update(bar, completed=done))
    except DATA_ERRORS as error:
        fail([str(error) if isinstance(error, DatasetError) else f"{uri!r}: {error}"])
    out.print(
        f"wrote {len(index.videos)} videos of {params.classes} classes to {uri}: "
        f"{', '.join(class_names(params))}",
        soft_wrap=True,
    )


def load_dataset(uri: str) -> DatasetIndex:
    from trainer.data.format import DatasetError, index_uri, load_index

    try:
        return load_index(index_uri(uri))
    except DATA_ERRORS as error:
        fail([str(error) if isinstance(error, DatasetError) else f"{uri!r}: {error}"])


def save_dataset(uri: str, index: DatasetIndex) -> None:
    """Write a new index; an existing dataset at `uri` is never replaced."""
    from trainer import storage
    from trainer.data.format import index_uri, save_index

    try:
        if storage.exists(index_uri(uri)):
            fail([f"{uri}: a dataset already exists there; choose another -o"])
        save_index(index_uri(uri), index)
    except DATA_ERRORS as error:
        fail([f"{uri!r}: {error}"])


class SourceFormat(StrEnum):
    REFERENCE_JPG = "reference-jpg"
    REFERENCE_HDF5 = "reference-hdf5"
    CSV = "csv"
    UCF101 = "ucf101"
    HMDB51 = "hmdb51"
    KINETICS = "kinetics"
    ACTIVITYNET = "activitynet"


@data_app.command()
def ingest(
    source: Annotated[Path, typer.Argument(help="Root of the source dataset.", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the dataset (path or URI).")],
    annotations: Annotated[
        Path,
        typer.Option(
            help="The reference's annotation JSON; for csv the list of videos; for ucf101 and hmdb51 the "
            "folder of split files; for kinetics its CSV; for activitynet its JSON."
        ),
    ],
    split: Annotated[int, typer.Option(min=1, max=3, help="ucf101 / hmdb51: which of the 3 splits.")] = 1,
    source_format: Annotated[
        SourceFormat,
        typer.Option(
            "--format",
            help="reference-jpg: <label>/<id>/image_%05d.jpg; reference-hdf5: <label>/<id>.hdf5 (JPEGs); "
            "csv: video files listed as path,label[,split]; ucf101 / hmdb51: their split lists; "
            "kinetics: its CSV; activitynet: its JSON (segments become clips)",
        ),
    ] = SourceFormat.REFERENCE_JPG,
    short_side: Annotated[int, typer.Option(min=16, help="Scale frames down to this short side.")] = 128,
    fps: Annotated[
        float, typer.Option(min=0.1, help="Frame rate to record for frames (video files carry their own).")
    ] = 30.0,
) -> None:
    """Convert an existing dataset into mega3d's format; unreadable videos are listed, not dropped."""
    from rich.progress import Progress

    from trainer.data.format import DatasetError
    from trainer.data.ingest import (
        ingest_reference,
        ingest_video_files,
        read_activitynet,
        read_hmdb51,
        read_kinetics,
        read_ucf101,
        read_video_list,
    )

    video_lists = {
        SourceFormat.CSV: lambda: read_video_list(annotations),
        SourceFormat.UCF101: lambda: read_ucf101(annotations, split),
        SourceFormat.HMDB51: lambda: read_hmdb51(annotations, split),
        SourceFormat.KINETICS: lambda: read_kinetics(source, annotations),
        SourceFormat.ACTIVITYNET: lambda: read_activitynet(source, annotations),
    }

    try:
        with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
            bar = progress.add_task("ingesting", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            if source_format in video_lists:
                labels, entries = video_lists[source_format]()
                index, unlabelled = (
                    ingest_video_files(source, labels, entries, output, short_side, advance),
                    0,
                )
            else:
                index, unlabelled = ingest_reference(
                    source_format.value, source, annotations, output, short_side, fps, advance
                )
    except DATA_ERRORS as error:
        fail([str(error) if isinstance(error, DatasetError) else f"{output!r}: {error}"])
    out.print(
        f"wrote {len(index.videos)} videos of {len(index.classes)} classes to {output}"
        + (f"; skipped {unlabelled} unlabelled" if unlabelled else ""),
        soft_wrap=True,
    )
    if index.errors:
        shown = "; ".join(f"{e['id']}: {e['error']}" for e in index.errors[:3])
        out.print(f"{len(index.errors)} unreadable (listed in the index's errors): {shown}", soft_wrap=True)


@data_app.command()
def merge(
    datasets: Annotated[
        list[str], typer.Argument(help="Datasets to merge (paths or URIs).", show_default=False)
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the merged index.")],
    name: Annotated[
        list[str] | None, typer.Option(help="Name per dataset (class prefix); default: last path part.")
    ] = None,
) -> None:
    """Concatenate label spaces into a new index over the existing shards (no video is copied)."""
    from trainer.data.format import DatasetError
    from trainer.data.format import merge as merge_indexes

    names = name or [uri.rstrip("/").rsplit("/", 1)[-1] for uri in datasets]
    if len(names) != len(datasets):
        fail([f"--name given {len(names)} times for {len(datasets)} datasets"])
    try:
        merged = merge_indexes([(n, load_dataset(uri)) for n, uri in zip(names, datasets, strict=True)])
    except DatasetError as error:
        fail([f"{error}: pass --name for each dataset"])
    for source, uri in zip(merged.sources, datasets, strict=True):
        source["uri"] = uri
    save_dataset(output, merged)
    parts = " + ".join(f"{s['name']} {s['classes']}" for s in merged.sources)
    out.print(
        f"wrote {output}: {len(merged.classes)} classes ({parts}), {len(merged.videos)} videos",
        soft_wrap=True,
    )


@data_app.command()
def subset(
    uri: Annotated[str, typer.Argument(help="The dataset to take a subset of.", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the subset's index.")],
    categories: Annotated[float, typer.Option(help="Fraction of the categories to keep.")] = 1.0,
    instances: Annotated[float, typer.Option(help="Fraction of each kept category's training videos.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same subset.")] = 0,
) -> None:
    """The paper's data-amount study: keep a fraction of categories, then of instances per category."""
    from trainer.data.ops import subset as take_subset

    try:
        part = take_subset(load_dataset(uri), categories, instances, seed)
    except DATA_ERRORS as error:
        fail([str(error)])
    part.sources[-1]["uri"] = uri
    save_dataset(output, part)
    out.print(
        f"wrote {output}: {len(part.classes)} classes, {len(part.subset('training'))} training videos "
        f"(of {uri})",
        soft_wrap=True,
    )


@data_app.command()
def stats(
    uri: Annotated[str, typer.Argument(help="The dataset.", show_default=False)],
    plot: Annotated[
        Path | None, typer.Option(help="Also draw training videos per class into this PNG.")
    ] = None,
) -> None:
    """Classes, videos, frames, hours, bytes, per-split counts, smallest and largest classes."""
    from trainer.data.ops import plot_class_histogram
    from trainer.data.ops import stats as dataset_stats

    index = load_dataset(uri)
    numbers = dataset_stats(index)
    splits = ", ".join(f"{count} {split}" for split, count in numbers["splits"].items())
    out.print(f"{uri}: {numbers['classes']} classes, {numbers['videos']} videos ({splits})", soft_wrap=True)
    hours = numbers["hours"]
    duration = f"{hours:,.1f} hours" if hours >= 1 else f"{hours * 60:.1f} minutes"
    size = f"{numbers['bytes'] / 1e6:,.1f} MB in {numbers['shards']} shards"
    out.print(f"  {numbers['frames']:,} frames, {duration}, {size}")
    for label in ("smallest", "largest"):
        listed = ", ".join(f"{name} ({count})" for count, name in numbers[label])
        out.print(f"  {label} classes (training videos): {listed}", soft_wrap=True)
    if plot is not None:
        plot_class_histogram(index, str(plot))
        out.print(f"  wrote {plot}")


@models_app.command("list")
def list_models() -> None:
    """Every architecture: parameters (millions, 700 classes) and GFLOPs for one 3x16x112x112 clip."""
    from rich.table import Table

    from trainer.model_catalog import FAMILIES, model_stats

    stats = model_stats()
    table = Table(title="mega3d models (GFLOPs = 2 x multiply-adds)", title_justify="left")
    for column in ("name", "reference alias", "params (M)", "GFLOPs"):
        table.add_column(column, justify="right" if column in ("params (M)", "GFLOPs") else "left")
    for family_name, family in FAMILIES.items():
        for depth in family.depths:
            row = stats[f"{family_name}-{depth}"]
            table.add_row(
                f"{family_name}-{depth}",
                f"{family.reference_name}-{depth}",
                f"{row['parameters'] / 1e6:.1f}",
                f"{row['gflops']:.1f}",
            )
    out.print(table)
    out.print("fine-tuning may start at (finetune[].train_from):")
    for family_name, family in FAMILIES.items():
        out.print(f"  {family_name}: {', '.join(family.stages)}", soft_wrap=True)


@models_app.command("import")
def import_model(
    source: Annotated[
        str, typer.Argument(help="Reference checkpoint (.pth), path or URI.", show_default=False)
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the mega3d checkpoint.")],
    arch: Annotated[
        str | None, typer.Option(help="Architecture, e.g. r3d-50; default: the file's own.")
    ] = None,
    shortcut_type: Annotated[
        ShortcutType | None, typer.Option(help="A when the file was trained with type-A shortcuts.")
    ] = None,
) -> None:
    """Convert a 3D-ResNets-PyTorch checkpoint (e.g. r3d50_KM_200ep.pth) into mega3d's format, checking that
    every tensor fits the architecture; fine-tune it with `init_from: URI` in a spec."""
    import subprocess

    command = [sys.executable, "-m", "trainer.models", "import", source, "--output", output]
    command += ["--arch", arch] if arch else []
    command += ["--shortcut-type", shortcut_type.value] if shortcut_type else []
    result = subprocess.run(command, capture_output=True, text=True)  # torch stays out of the CLI process
    last_line = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
    if result.returncode == 2 and "Traceback" not in result.stderr:
        fail([last_line.removeprefix("error: ")])
    if result.returncode != 0:
        fail(
            [f"internal error in `python -m trainer.models import` (exit {result.returncode}): {last_line}"],
            1,
        )
    out.print(result.stdout.strip(), soft_wrap=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
