"""`mega3d`: validate, compile and run experiment specs; make datasets.

The CLI never imports torch, and imports kfp only inside the commands that need it, so `--help` is quick.
Bad input ends with one line per problem (file and dotted field path) and exit code 2.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from mega3d.cli.cluster import runs_app, schedule_app, submit
from mega3d.cli.console import DATA_ERRORS, err, fail, out, shown
from mega3d.cli.data import data_app
from mega3d.cli.predict import predict
from mega3d.cli.report import report
from mega3d.trainer.spec import ExperimentSpec, SpecError, load_spec, summary

app = typer.Typer(
    help="Train spatiotemporal 3D CNNs for video action recognition: on Kubeflow, or on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
models_app = typer.Typer(
    help="The model zoo: list architectures, import reference checkpoints.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


class ShortcutType(StrEnum):
    A = "A"
    B = "B"


RUN_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
SpecPath = Annotated[Path, typer.Argument(help="Experiment spec (YAML).", show_default=False)]


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
    from mega3d.pipelines.pipeline import compile_pipeline

    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    try:
        compile_pipeline(experiment, str(partial))
        os.replace(partial, output)
    except OSError as error:  # a read-only file system, a full disk, no permission
        fail([f"--output {output}: cannot write it ({error.strerror or error})"])
    finally:
        partial.unlink(missing_ok=True)
    out.print(f"wrote {output} (pipeline mega3d-{experiment.name})")


def _show(line: str) -> None:
    """A line of the run as it goes: written as it is (no markup), at once."""
    print(line, flush=True)


def missing_inputs(spec: ExperimentSpec, source: str) -> list[str]:
    """Datasets that neither exist nor can be synthesized, existing datasets that are damaged or
    incomplete, and checkpoints that do not exist: found before any step runs."""
    from mega3d.trainer import storage
    from mega3d.trainer.data.format import dataset_problems, index_uri
    from mega3d.trainer.spec import is_checkpoint_uri

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
    # An existing dataset must be whole: a damaged index or a missing or short shard would fail the run
    # only once a stage reads it.
    problems += [
        f"{source}: datasets.{name}.uri: {problem}"
        for name in used
        if storage.exists(index_uri(spec.dataset_uri(name)))
        for problem in dataset_problems(spec.dataset_uri(name))
    ]
    return problems


def resolved(experiment: ExperimentSpec, source: Path) -> ExperimentSpec:
    """The spec with its catalog datasets pinned to versions (the newest, where it names none)."""
    from mega3d.trainer.catalog import CatalogError, resolve_spec

    try:
        return resolve_spec(experiment)[0]
    except CatalogError as error:
        fail([f"{source}: {error}"])


def resumed_spec(experiment: ExperimentSpec, source: Path, run_id: str, run_dir: str) -> ExperimentSpec:
    """The spec run `run_id` started with, where `experiment` is that spec (its catalog names may be
    unpinned); one line naming the fields that differ otherwise."""
    from mega3d.trainer import layout, storage
    from mega3d.trainer.spec import spec_from_json

    kept_uri = storage.join(run_dir, layout.SPEC_FILE)
    if not storage.exists(kept_uri):
        fail([f"--resume {run_id}: no run {run_id!r} at {run_dir}"])
    kept = spec_from_json(storage.read_bytes(kept_uri).decode(), kept_uri)

    def unpinned(spec: ExperimentSpec) -> dict[str, object]:
        data = spec.model_dump(mode="json")
        for name, dataset in spec.datasets.items():
            if dataset.catalog is not None:
                data["datasets"][name] = {"catalog": dataset.catalog.partition("@")[0]}
        return data

    mine, theirs = unpinned(experiment), unpinned(kept)
    differ = sorted(key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key))
    if differ:
        fail(
            [
                f"{source}: not the spec run {run_id} started with ({', '.join(differ)} differ); resume it "
                f"with that spec ({kept_uri}), or start a new run"
            ]
        )
    return kept


@app.command()
def run(
    spec: SpecPath,
    run_id: Annotated[str, typer.Option(help="Run directory name; default: the current time.")] = "",
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show the run's whole log (run.log: KFP's own output too) as it is written.",
        ),
    ] = False,
    skip_if_trained: Annotated[
        bool,
        typer.Option(
            help="Train only what is new, as scheduled runs do: nothing for a branch whose data, model, "
            "recipe and targets the model registry has a model of; a stage an earlier run finished with the "
            "same data, model and recipe is reused, one it was interrupted in resumes from its checkpoint."
        ),
    ] = False,
    metrics: Annotated[
        bool,
        typer.Option(
            "--metrics",
            help="Serve every training process's Prometheus metrics on 127.0.0.1, port --metrics-port + "
            "its rank, for a local Prometheus to scrape.",
        ),
    ] = False,
    metrics_port: Annotated[int, typer.Option(min=1024, max=65000, help="First metrics port.")] = 9400,
    pushgateway: Annotated[
        str | None, typer.Option(help="Pushgateway URL that receives each stage's final metrics.")
    ] = None,
    resume: Annotated[
        str,
        typer.Option(
            "--resume",
            metavar="RUN_ID",
            help="Continue run RUN_ID after an interruption, with the spec and catalog versions it started "
            "with: finished stages are kept, the interrupted one resumes from its last epoch checkpoint.",
        ),
    ] = "",
) -> None:
    """Run the whole pipeline on this machine: kfp.local steps, TorchX local_cwd DDP jobs (no cluster).
    Shows each step, its progress and its result; the whole log goes to run.log in the run directory.
    Catalog datasets resolve to their versions when the run starts (the run directory keeps the spec as
    resolved). Ctrl-C or SIGTERM stops every process of the run (exit code 130 or 143); `--resume RUN_ID`
    continues it."""
    experiment = read_spec(spec)
    from mega3d.pipelines.local import plain_cause, supervise
    from mega3d.pipelines.settings import Deployment
    from mega3d.trainer import layout, storage

    if resume and run_id:
        fail([f"--resume {resume} and --run-id {run_id}: give one (a resumed run keeps its id)"])
    run_id = run_id or resume
    if run_id and not RUN_ID.match(run_id):
        flag = "--resume" if resume else "--run-id"
        fail([f"{flag} {run_id!r}: use letters, digits, '.', '_' and '-' (at most 64; no leading '.')"])
    experiment = experiment.with_storage(storage.local_absolute(experiment.storage))
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    run_dir = layout.run_dir(experiment, run_id)
    try:
        no_bucket = storage.bucket_problem(experiment.storage)
        if no_bucket is not None:
            fail([f"{spec}: storage {experiment.storage}: {no_bucket}"])
        if resume:
            experiment = resumed_spec(experiment, spec, run_id, run_dir)
        elif storage.exists(run_dir):
            fail(
                [
                    f"{run_dir}: run {run_id!r} already exists; choose another --run-id, or continue it "
                    f"with --resume {run_id}"
                ]
            )
        else:
            experiment = resolved(experiment, spec)
        missing = missing_inputs(experiment, str(spec))
    except DATA_ERRORS as error:
        fail([f"{spec}: storage {experiment.storage}: {error}"])
    if missing:
        fail(missing)
    out.print(f"[bold]mega3d run[/bold] {shown(summary(experiment))}", markup=True, soft_wrap=True)
    out.print(f"run directory: {run_dir}", soft_wrap=True)
    started = time.monotonic()
    endpoints = Deployment(metrics_port=metrics_port if metrics else None, pushgateway=pushgateway)
    try:
        outcome = supervise(
            experiment.model_dump_json(exclude_none=True),
            run_id,
            run_dir,
            skip_if_trained,
            endpoints.cluster_json(),
            _show,
            verbose,
        )
    except OSError as error:  # the run directory cannot be made (a file in the way, no space, no rights)
        fail([f"{spec}: storage {experiment.storage}: {plain_cause(error)}"])
    if outcome.signal is not None:
        name = signal.Signals(outcome.signal).name
        err.print(
            f"stopped: {name} ended run {run_id} and its {outcome.stopped} processes; its files stay in "
            f"{run_dir} (log: {outcome.log}); `mega3d run {spec} --resume {run_id}` continues it",
            soft_wrap=True,
            markup=False,
        )
        raise typer.Exit(outcome.code)
    if outcome.code != 0:
        cause = outcome.cause or f"the pipeline process ended with exit code {outcome.code}"
        fail([f"run {run_id} failed: {cause} (whole log: {outcome.log})"], code=1)
    from mega3d.cli.results import results_table

    out.print(results_table(experiment, run_dir))
    out.print(f"finished in {time.monotonic() - started:.0f}s; files under {run_dir}", soft_wrap=True)


@models_app.command("list")
def list_models() -> None:
    """Every architecture: parameters (millions, 700 classes) and GFLOPs for one 3x16x112x112 clip."""
    from rich.table import Table

    from mega3d.trainer.model_catalog import FAMILIES, model_stats

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

    command = [sys.executable, "-m", "mega3d.trainer.convert", source, "--output", output]
    command += ["--arch", arch] if arch else []
    command += ["--shortcut-type", shortcut_type.value] if shortcut_type else []
    result = subprocess.run(command, capture_output=True, text=True)  # torch stays out of the CLI process
    last_line = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
    if result.returncode == 2 and "Traceback" not in result.stderr:
        fail([last_line.removeprefix("error: ")])
    if result.returncode != 0:
        fail(
            [f"internal error in `python -m mega3d.trainer.convert` (exit {result.returncode}): {last_line}"],
            1,
        )
    out.print(result.stdout.strip(), soft_wrap=True)


app.command()(predict)
app.command()(submit)
app.command()(report)
app.add_typer(runs_app, name="runs")
app.add_typer(schedule_app, name="schedule")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
