"""`mega3d submit`, `mega3d runs ...`, `mega3d schedule ...`: experiments on a Kubeflow Pipelines cluster.

Where and how is read from the deployment settings (`--settings`, `$MEGA3D_*`), with the command line's
options on top; `on_cluster` gives every command the same connection options and builds its Target of them.
Everything that can be checked here (settings, host, spec, cron, the stages' GPUs against the queue,
compilation) is checked before the cluster is contacted; the commands that upload a pipeline then refuse a
server older than the settings' `min_kfp_server`. kfp is imported inside the commands, so `mega3d --help`
stays quick.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from mega3d.cli.console import err, fail, out, shown
from mega3d.pipelines.settings import MIN_KFP_SERVER, Deployment, load_settings
from mega3d.trainer.spec import ExperimentSpec, Problem, SpecError, load_spec, validation_problems

if TYPE_CHECKING:
    from mega3d.kubeflow.client import Cluster, Run

# Exit code of `runs wait` when the run is still going at --timeout (as coreutils `timeout` exits).
WAIT_TIMEOUT_EXIT = 124
CONNECTION = "Connection"

SpecPath = Annotated[Path, typer.Argument(help="Experiment spec (YAML).", show_default=False)]
RunId = Annotated[str, typer.Argument(help="Run id (see `mega3d runs list`).", show_default=False)]
RecurringRunId = Annotated[
    str, typer.Argument(help="Recurring run id (see `mega3d schedule list`).", show_default=False)
]
Host = Annotated[
    str | None,
    typer.Option(
        help="Kubeflow Pipelines API endpoint, e.g. https://kubeflow.example.com/pipeline; "
        "default: `host` of the settings ($MEGA3D_HOST).",
        show_default=False,
        rich_help_panel=CONNECTION,
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        envvar="MEGA3D_TOKEN",
        help="Bearer token for the API; default: $MEGA3D_TOKEN, else the in-cluster service-account "
        "token ($KF_PIPELINES_SA_TOKEN_PATH, /var/run/secrets/kubeflow/pipelines/token) where it exists, "
        "else none.",
        show_default=False,
        rich_help_panel=CONNECTION,
    ),
]
Namespace = Annotated[
    str | None,
    typer.Option(
        help="Kubeflow profile namespace; default: `namespace` of the settings (mega3d).",
        show_default=False,
        rich_help_panel=CONNECTION,
    ),
]
Settings = Annotated[
    Path | None,
    typer.Option(
        help="Deployment settings (YAML); default: $MEGA3D_SETTINGS, else ~/.config/mega3d/settings.yaml.",
        show_default=False,
        rich_help_panel=CONNECTION,
    ),
]
Experiment = Annotated[
    str | None,
    typer.Option(
        help="Kubeflow experiment; default: `experiment` of the settings (mega3d).", show_default=False
    ),
]
Limit = Annotated[int, typer.Option(min=1, help="At most this many, newest first.")]
SKIP_HELP = (
    "Train only what is new: nothing for a branch whose data, model, recipe and targets the model registry "
    "has a model of; stages an earlier run finished with the same key are reused, and one it was "
    "interrupted in resumes from its checkpoint."
)


@dataclass(frozen=True)
class Target:
    """Where the commands go: the settings with the options on top, a host that is known to be given."""

    deployment: Deployment
    host: str
    token: str | None


def read_spec(path: Path) -> ExperimentSpec:
    try:
        return load_spec(path)
    except SpecError as error:
        fail(error.lines())


def target_of(
    *,
    host: str | None,
    namespace: str | None,
    token: str | None,
    settings: Path | None,
    experiment: str | None = None,
) -> Target:
    """The deployment settings (file and $MEGA3D_*), with the options given on the command line on top."""
    from pydantic import ValidationError

    try:
        deployment = load_settings(settings)
    except SpecError as error:
        fail(error.lines())
    options = {"host": host, "namespace": namespace, "experiment": experiment}
    given = {name: value for name, value in options.items() if value is not None}
    try:  # model_copy does not validate: the options must pass the same checks as the file's fields
        deployment = Deployment.model_validate(deployment.model_copy(update=given).model_dump())
    except ValidationError as error:
        fail([f"--{problem.path}: {problem.message}" for problem in validation_problems(error)])
    if not deployment.host:
        fail(["no Kubeflow Pipelines host: pass --host URL, set $MEGA3D_HOST or write `host:` in settings"])
    if not deployment.host.startswith(("http://", "https://")):
        fail([f"host {deployment.host!r}: give the scheme, e.g. https://{deployment.host}"])
    return Target(deployment, deployment.host, token)


Command = Callable[..., None]
# What `on_cluster` adds to a command's parameters, in the order of its --help.
EXPERIMENT_PARAMETER = inspect.Parameter(
    "experiment", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Experiment
)
CONNECTION_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
    for name, annotation in (
        ("host", Host),
        ("namespace", Namespace),
        ("token", Token),
        ("settings", Settings),
    )
]


def on_cluster(*, experiment: bool = False) -> Callable[[Command], Command]:
    """A command on the cluster: it gets the connection options (`--host`, `--namespace`, `--token`,
    `--settings`; with `experiment`, `--experiment` too) after its own, and is called with their Target as
    its parameter `target`. Bad settings or options end it (one line, exit 2) before it starts.

    Typer takes a command's options from its signature, and a group callback's options would have to come
    before the subcommand (`mega3d runs --host URL list`, not `mega3d runs list --host URL`): so the
    signature Typer reads (`__signature__`) has the options in place of `target`, and the wrapper turns
    them into the Target."""
    added = [*([EXPERIMENT_PARAMETER] if experiment else []), *CONNECTION_PARAMETERS]

    def decorate(command: Command) -> Command:
        parameters = inspect.signature(command, eval_str=True).parameters.values()
        own = [parameter for parameter in parameters if parameter.name != "target"]

        @functools.wraps(command)
        def with_target(**options: Any) -> None:
            where = {parameter.name: options.pop(parameter.name) for parameter in added}
            command(target=target_of(**where), **options)

        with_target.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
        return with_target

    return decorate


@contextmanager
def connected(target: Target, uploading: bool = False) -> Iterator[Cluster]:
    """The cluster, connected and healthy; what it cannot serve ends the command with one line (exit 2).
    `uploading` a pipeline, a server older than the settings' `min_kfp_server` is refused too."""
    from mega3d.kubeflow.client import Cluster, ClusterError, release_of

    minimum = target.deployment.min_kfp_server
    oldest = release_of(minimum)
    if uploading and oldest is None:
        fail(
            [
                f"min_kfp_server {minimum!r} (settings, $MEGA3D_MIN_KFP_SERVER): give a Kubeflow Pipelines "
                f"release such as {MIN_KFP_SERVER}"
            ]
        )
    # urllib3 logs a warning for each retry of a failed connection; the command ends with one line instead.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        cluster = Cluster(target.host, target.token, target.deployment.namespace)
        if uploading and oldest is not None:
            check_server(cluster, oldest, minimum)
        yield cluster
    except ClusterError as error:
        fail([str(error)])


def check_server(cluster: Cluster, oldest: tuple[int, int, int], minimum: str) -> None:
    """A server older than `minimum` would accept the pipeline and then run it wrongly (README, "Kubeflow
    Pipelines"): refuse it. A build that reports no release (self-built servers report "unknown") is most
    likely newer than any release, and no setting could let it through: say so, and go on."""
    from mega3d.kubeflow.client import release_of

    version = cluster.server_version
    release = release_of(version)
    if release is None:
        warning = (
            f"Kubeflow Pipelines at {cluster.host} reports no release (tag_name {version!r}): cannot tell "
            f"whether it is {minimum} or newer; submitting anyway"
        )
        err.print(f"[yellow]warning:[/yellow] {shown(warning)}", markup=True, soft_wrap=True)
    elif release < oldest:
        fail(
            [
                f"Kubeflow Pipelines at {cluster.host} is {version}, older than {minimum}, the oldest that "
                "runs mega3d's pipelines correctly: upgrade it, or set min_kfp_server (settings, "
                f"$MEGA3D_MIN_KFP_SERVER) to {version} to submit anyway"
            ]
        )


def fits_the_queue(spec: ExperimentSpec, deployment: Deployment, source: Path) -> None:
    """Volcano starts a job only when all of its pods fit in the queue at once (gang scheduling): a stage
    that needs more GPUs than the queue may ever hold would wait until `pending_minutes` fails it, after
    the stages before it have run. Only the stages some branch of the sweep runs count."""
    capacity = deployment.queue_gpus
    if capacity is None:
        return
    problems: dict[str, Problem] = {}
    for branch in spec.branches():
        for path, stage in spec.for_branch(branch).stages():
            nodes, gpus = stage.resources.node_range[0], stage.resources.gpus  # elastic: the fewest
            if nodes * gpus > capacity:
                message = (
                    f"{nodes} nodes x {gpus} GPUs = {nodes * gpus} GPUs at once, more than queue_gpus "
                    f"{capacity} (settings): the queue {deployment.queue!r} would never start the job"
                )
                problems[path] = Problem(f"{path}.resources", message)
    if problems:
        fail(SpecError(str(source), problems.values()).lines())


def storage_on_cluster(spec: ExperimentSpec, deployment: Deployment, source: Path) -> ExperimentSpec:
    """Specs written for `mega3d run` keep their files on this machine: on the cluster, the settings'
    bucket takes their place. Without one, storage the cluster cannot reach is refused."""
    if deployment.bucket:
        return spec.with_storage(deployment.bucket)
    if "://" not in spec.storage or spec.storage.startswith(("file://", "memory://")):
        fail(
            [
                f"{source}: storage: {spec.storage!r} is on this machine, out of the cluster's reach; "
                "set `bucket` in the settings ($MEGA3D_BUCKET) or an object-store URI in the spec"
            ]
        )
    return spec


@contextmanager
def compiled(spec: ExperimentSpec, deployment: Deployment) -> Iterator[str]:
    """The pipeline package (IR YAML) of a spec, in a temporary directory."""
    from mega3d.pipelines.pipeline import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="mega3d-") as folder:
        package = os.path.join(folder, "pipeline.yaml")
        try:
            compile_pipeline(spec, package, deployment)
        except SpecError as error:  # e.g. a sweep that expands beyond the settings' max_branches
            fail(error.lines())
        yield package


def pipeline_parameters(skip_if_trained: bool) -> dict[str, Any]:
    """The run's parameters that differ from their compiled defaults (skip_if_trained is off there)."""
    return {"skip_if_trained": True} if skip_if_trained else {}


def when(moment: datetime | None) -> str:
    # The API reports an unset time as the Unix epoch.
    return f"{moment:%Y-%m-%d %H:%M:%S %Z}".strip() if moment and moment.year > 1970 else "-"


@on_cluster(experiment=True)
def submit(
    target: Target,
    spec: SpecPath,
    skip_if_trained: Annotated[bool, typer.Option(help=SKIP_HELP)] = False,
) -> None:
    """Compile a spec and run it on Kubeflow Pipelines; print the run id and its link in the Kubeflow UI.

    The settings' `bucket`, when set, replaces the spec's storage. Pipeline parameters keep their compiled
    defaults (run_id empty: the KFP run's id names the run directory; scheduler kubernetes), but
    skip_if_trained with --skip-if-trained."""
    experiment_spec = read_spec(spec)
    experiment_spec = storage_on_cluster(experiment_spec, target.deployment, spec)
    fits_the_queue(experiment_spec, target.deployment, spec)
    run_name = f"{experiment_spec.name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    with (
        compiled(experiment_spec, target.deployment) as package,
        connected(target, uploading=True) as cluster,
    ):
        run = cluster.submit(
            package,
            target.deployment.experiment,
            run_name,
            pipeline_parameters(skip_if_trained),
            target.deployment.run_service_account,
        )
    out.print(f"submitted {run_name!r} to experiment {target.deployment.experiment!r}", soft_wrap=True)
    out.print(f"run id: {run.run_id}", soft_wrap=True)
    out.print(f"link:   {cluster.run_link(run.run_id)}", soft_wrap=True)


runs_app = typer.Typer(
    help="Runs on Kubeflow Pipelines: list them, show one, wait for one to end, cancel one.",
    no_args_is_help=True,
)


@runs_app.command("list")
@on_cluster(experiment=True)
def list_runs(target: Target, limit: Limit = 20) -> None:
    """The newest runs of the experiment: id, name, state, created, finished."""
    with connected(target) as cluster:
        runs = cluster.runs(target.deployment.experiment, limit)
    if not runs:
        out.print(f"no runs in experiment {target.deployment.experiment!r}")
        return
    table = Table(title=f"runs of experiment {target.deployment.experiment}", title_justify="left")
    for column in ("run id", "name", "state", "created", "finished"):
        table.add_column(column, no_wrap=column == "run id")
    for run in runs:
        table.add_row(run.run_id, run.name, run.state, when(run.created_at), when(run.finished_at))
    out.print(table)


def print_run(run: Run, link: str) -> None:
    out.print(f"run {run.run_id} ({run.name}): {run.state}", soft_wrap=True)
    out.print(f"created {when(run.created_at)}, finished {when(run.finished_at)}")
    if run.error:
        out.print(f"error: {run.error}", soft_wrap=True)
    out.print(f"link: {link}", soft_wrap=True)


@runs_app.command()
@on_cluster()
def status(target: Target, run_id: RunId) -> None:
    """A run's state, times, error (if it failed) and link."""
    with connected(target) as cluster:
        run = cluster.run(run_id)
    print_run(run, cluster.run_link(run_id))


@runs_app.command()
@on_cluster()
def wait(
    target: Target,
    run_id: RunId,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, help="Give up after this many seconds (exit code 124); default: no limit."),
    ] = None,
    poll: Annotated[float, typer.Option(min=0.01, help="Seconds between readings of the run.")] = 10.0,
) -> None:
    """Follow a run to its end, printing each state it enters. Exit code 0 when it SUCCEEDED, 1 when it
    FAILED, was CANCELED or SKIPPED, 124 when --timeout passes first."""
    from mega3d.kubeflow.client import SUCCEEDED, TERMINAL_STATES

    def report(run: Run) -> None:
        out.print(f"{time.strftime('%H:%M:%S')} run {run.run_id}: {run.state}", soft_wrap=True)

    with connected(target) as cluster:
        run = cluster.wait(run_id, math.inf if timeout is None else timeout, poll, report)
    if run.state == SUCCEEDED:
        return
    if run.state not in TERMINAL_STATES:
        fail([f"run {run_id} is still {run.state} after {timeout:g} s"], WAIT_TIMEOUT_EXIT)
    fail([f"run {run_id} {run.state}" + (f": {run.error}" if run.error else "")], 1)


@runs_app.command()
@on_cluster()
def cancel(target: Target, run_id: RunId) -> None:
    """Cancel a run: its steps are stopped, and they cancel the training jobs they launched."""
    with connected(target) as cluster:
        cluster.cancel(run_id)
    out.print(f"cancelling run {run_id}; `mega3d runs wait {run_id}` follows it to the end", soft_wrap=True)


class ScheduleGroup(TyperGroup):
    """`mega3d schedule SPEC --cron ...` is `mega3d schedule create SPEC --cron ...`: a first word that names
    no subcommand but a file (or a YAML file name) is the spec of `create`; any other word is a mistyped
    subcommand, answered as such."""

    # Any: typer keeps its click Context type private (typer._click).
    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and args[0] not in self.commands and is_spec_path(args[0]):
            return "create", self.commands["create"], args
        return super().resolve_command(ctx, args)


def is_spec_path(word: str) -> bool:
    return Path(word).suffix in (".yaml", ".yml") or Path(word).is_file()


schedule_app = typer.Typer(
    cls=ScheduleGroup,
    help="Recurring runs (retraining on a cron schedule): create, list, pause, resume, delete. "
    "`mega3d schedule SPEC --cron ...` is short for `mega3d schedule create SPEC --cron ...`.",
    no_args_is_help=True,
)


@schedule_app.command("create")
@on_cluster(experiment=True)
def create_schedule(
    target: Target,
    spec: SpecPath,
    cron: Annotated[
        str,
        typer.Option(
            help="When to run, as KFP cron: 6 fields, seconds first; '0 0 3 * * *' is 03:00 every day "
            "(in the time zone of the Kubeflow server, usually UTC).",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(help="Name of the recurring run; default: the spec's name.", show_default=False),
    ] = None,
    skip_if_trained: Annotated[
        bool,
        typer.Option(
            "--skip-if-trained/--always-train",
            help=f"{SKIP_HELP} On by default: scheduled retraining is for new data.",
        ),
    ] = True,
) -> None:
    """Run a spec on a cron schedule: one run at a time, and after a pause only the latest missed run (no
    catch-up). Storage and parameters as for `mega3d submit`, but skipping data already trained on."""
    from mega3d.kubeflow.client import cron_problem

    problem = cron_problem(cron)
    if problem:
        fail([f"--cron {cron!r}: {problem}"])
    experiment_spec = read_spec(spec)
    experiment_spec = storage_on_cluster(experiment_spec, target.deployment, spec)
    fits_the_queue(experiment_spec, target.deployment, spec)
    with (
        compiled(experiment_spec, target.deployment) as package,
        connected(target, uploading=True) as cluster,
    ):
        created = cluster.schedule(
            package,
            target.deployment.experiment,
            name or experiment_spec.name,
            cron,
            pipeline_parameters(skip_if_trained),
            target.deployment.run_service_account,
        )
    out.print(
        f"scheduled {created.name!r} at {created.cron!r} in experiment {target.deployment.experiment!r}",
        soft_wrap=True,
    )
    out.print(f"recurring run id: {created.recurring_run_id}", soft_wrap=True)


@schedule_app.command("list")
@on_cluster(experiment=True)
def list_schedules(target: Target, limit: Limit = 20) -> None:
    """The recurring runs of the experiment: id, name, cron, ENABLED or DISABLED, created."""
    with connected(target) as cluster:
        recurring_runs = cluster.recurring_runs(target.deployment.experiment, limit)
    if not recurring_runs:
        out.print(f"no recurring runs in experiment {target.deployment.experiment!r}")
        return
    table = Table(title=f"recurring runs of experiment {target.deployment.experiment}", title_justify="left")
    for column in ("recurring run id", "name", "cron", "status", "created"):
        table.add_column(column, no_wrap=column == "recurring run id")
    for item in recurring_runs:
        table.add_row(item.recurring_run_id, item.name, item.cron, item.status, when(item.created_at))
    out.print(table)


def change_recurring_run(
    target: Target, recurring_run_id: str, change: Callable[[Cluster, str], None], done: str
) -> None:
    """Pause, resume or delete a recurring run, and say so."""
    with connected(target) as cluster:
        change(cluster, recurring_run_id)
    out.print(f"{done} recurring run {recurring_run_id}", soft_wrap=True)


@schedule_app.command()
@on_cluster()
def pause(target: Target, recurring_run_id: RecurringRunId) -> None:
    """Stop starting runs (a run in progress goes on); `mega3d schedule resume` starts again."""
    change_recurring_run(target, recurring_run_id, lambda cluster, run: cluster.pause(run), "paused")


@schedule_app.command()
@on_cluster()
def resume(target: Target, recurring_run_id: RecurringRunId) -> None:
    """Start runs again on the schedule; runs missed while paused are not made up (no catch-up)."""
    change_recurring_run(target, recurring_run_id, lambda cluster, run: cluster.resume(run), "resumed")


@schedule_app.command()
@on_cluster()
def delete(target: Target, recurring_run_id: RecurringRunId) -> None:
    """Delete a recurring run; the runs it started are kept."""
    change_recurring_run(target, recurring_run_id, lambda cluster, run: cluster.delete(run), "deleted")
