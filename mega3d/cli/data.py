"""`mega3d data`: make datasets (synth, ingest), combine them (merge, subset), look at them (stats,
verify), and keep them in the catalog as numbered versions (publish, versions)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mega3d.cli.console import DATA_ERRORS, err, fail, out
from mega3d.trainer.spec import SyntheticSpec

if TYPE_CHECKING:
    from mega3d.trainer.data.format import DatasetIndex
    from mega3d.trainer.data.replicas import Launch

data_app = typer.Typer(
    help="Create, combine and inspect datasets; keep their versions in the catalog.", no_args_is_help=True
)

_SYNTH = {name: field.default for name, field in SyntheticSpec.model_fields.items()}
LOG_EVERY_S = 10.0


def message(error: Exception, uri: str) -> str:
    from mega3d.trainer.data.format import DatasetError

    return str(error) if isinstance(error, DatasetError) else f"{uri!r}: {error}"


@contextmanager
def progress_of(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal; in a log, a line every ten seconds and one at the end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if err.is_terminal:
        # The description as text: `what` names user paths, which may hold markup or format braces.
        description = TextColumn("{task.description}", markup=False)
        columns = (description, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            bar = progress.add_task(what, total=None)
            yield lambda done, total: progress.update(bar, completed=done, total=total)
        return
    started = last = time.monotonic()

    def log(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= LOG_EVERY_S or (done == total and now - started >= LOG_EVERY_S):
            last = now
            rate = done / max(now - started, 1e-9)
            err.print(f"{what}: {done}/{total} videos ({rate:.1f}/s)", soft_wrap=True)

    yield log


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

    from mega3d.trainer.data.synth import class_names, synthesize

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
    end_cleanly_on_sigterm()
    try:
        with progress_of("synthesizing") as progress:
            index = synthesize(uri, params, progress, warn)
    except DATA_ERRORS as error:
        fail([message(error, uri)])
    except MemoryError:
        fail(
            [f"{uri}: not enough memory for videos of {frames} frames of {size}x{size}; try a smaller --size"]
        )
    out.print(
        f"wrote {len(index)} videos of {params.classes} classes to {uri}: {', '.join(class_names(params))}",
        soft_wrap=True,
    )


def warn(line: str) -> None:
    err.print(f"warning: {line}", soft_wrap=True)


def end_cleanly_on_sigterm() -> None:
    """SIGTERM (a pod stopped, a pipeline step cancelled) ends a writing command as Ctrl-C does, through
    its clean-up: workers are stopped and the dataset's lock is released, so the next run need not wait
    for the lock to go stale."""
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))


def load_dataset(uri: str) -> DatasetIndex:
    from mega3d.trainer.data.format import index_uri, load_index

    try:
        return load_index(index_uri(uri))
    except DATA_ERRORS as error:
        fail([message(error, uri)])


def save_dataset(uri: str, index: DatasetIndex) -> None:
    """Write a new index; an existing dataset at `uri` is never replaced."""
    from mega3d.trainer import storage
    from mega3d.trainer.data.format import index_uri, save_index

    try:
        if storage.exists(index_uri(uri)):
            fail([f"{uri}: a dataset already exists there; choose another -o"])
        save_index(index_uri(uri), index)
    except DATA_ERRORS as error:
        fail([f"{uri!r}: {error}"])


Publish = Annotated[
    str | None,
    typer.Option(
        "--publish",
        metavar="NAME",
        help="Also add the result to the catalog (under --storage) as the next version of NAME.",
        show_default=False,
    ),
]
CatalogRoot = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="The storage root that holds the catalog: the `storage` of the specs that use it.",
        show_default=False,
    ),
]


def catalog_root(name: str | None, root: str | None, flag: str = "--publish") -> str | None:
    """The catalog root to publish `name` into, checked before anything is written; None without
    --publish."""
    from mega3d.trainer import storage
    from mega3d.trainer.catalog import check_name

    if name is None:
        return None
    if root is None:
        fail([f"{flag} {name}: give --storage ROOT, the storage root whose catalog gets the version"])
    try:
        check_name(name, flag)
        problem = storage.bucket_problem(root)
    except DATA_ERRORS as error:  # a CatalogError is a ValueError
        fail([str(error)])
    if problem is not None:
        fail([f"--storage {root}: {problem}"])
    return storage.local_absolute(root)


def publish_version(
    root: str | None, name: str | None, uri: str, made_from: str, written: bool = True
) -> None:
    """Publish a dataset (after `catalog_root` said where), and say which version it is."""
    from mega3d.trainer.catalog import publish

    if root is None or name is None:
        return
    try:
        version, new = publish(root, name, uri, made_from)
    except DATA_ERRORS as error:  # a CatalogError is a ValueError
        fail([f"{uri}: written, but not published: {error}" if written else str(error)])
    if new:
        out.print(f"published {version.reference} ({version.uri}) in the catalog at {root}", soft_wrap=True)
    else:
        out.print(
            f"{version.reference} is this dataset already (the same URI and content): nothing published",
            soft_wrap=True,
        )


def replica_launcher(output: str, replicas: int, on_cluster: bool, settings: Path | None) -> Launch | None:
    """How the replicas of an ingest run: None for one replica on this machine (the plain ingest)."""
    if replicas == 1 and not on_cluster:
        return None
    from mega3d.pipelines.ingest_jobs import cluster_launcher, local_launcher

    if not on_cluster:
        return local_launcher()
    from mega3d.pipelines.settings import load_settings
    from mega3d.pipelines.volcano import JobIdentity
    from mega3d.trainer.spec import SpecError

    try:
        deployment = load_settings(settings)
    except SpecError as error:
        fail(error.lines())
    if deployment.image is None:
        fail(["--on-cluster: the pods need an image with mega3d: set `image:` in settings or $MEGA3D_IMAGE"])
    # A coordinator started again follows the job the first one submitted for this dataset.
    identity = JobIdentity("ingest", output, "", output.rstrip("/").rsplit("/", 1)[-1], "ingest")
    return cluster_launcher(deployment, identity)


class SourceFormat(StrEnum):
    REFERENCE_JPG = "reference-jpg"
    REFERENCE_HDF5 = "reference-hdf5"
    CSV = "csv"
    UCF101 = "ucf101"
    HMDB51 = "hmdb51"
    KINETICS = "kinetics"
    HVU = "hvu"
    ACTIVITYNET = "activitynet"


REMOTE_FORMATS = (SourceFormat.CSV, SourceFormat.UCF101, SourceFormat.HMDB51)  # lists of video files


@data_app.command()
def ingest(
    source: Annotated[
        str,
        typer.Argument(
            help="Root of the source dataset: a folder, or for lists of video files (csv, ucf101, hmdb51) "
            "an object-storage URI such as gs://bucket/videos.",
            show_default=False,
        ),
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the dataset (path or URI).")],
    annotations: Annotated[
        list[Path],
        typer.Option(
            help="The reference's annotation JSON; for csv the list of videos; for ucf101 and hmdb51 the "
            "folder of split files; for kinetics and hvu their CSVs (repeat for train, val, test); for "
            "activitynet its JSON."
        ),
    ],
    source_format: Annotated[
        SourceFormat,
        typer.Option(
            "--format",
            help="reference-jpg: <label>/<id>/image_%05d.jpg; reference-hdf5: <label>/<id>.hdf5 (JPEGs); "
            "csv: video files listed as path,label[,split] (label a|b: multi-label); ucf101 / hmdb51: their "
            "split lists; kinetics: its CSVs; hvu: its CSVs (multi-label tags); activitynet: its JSON "
            "(segments become clips)",
        ),
    ] = SourceFormat.REFERENCE_JPG,
    split: Annotated[int, typer.Option(min=1, max=3, help="ucf101 / hmdb51: which of the 3 splits.")] = 1,
    short_side: Annotated[int, typer.Option(min=16, help="Scale frames down to this short side.")] = 128,
    fps: Annotated[
        float, typer.Option(min=0.1, help="Frame rate to record for frames (video files carry their own).")
    ] = 30.0,
    workers: Annotated[
        int, typer.Option(min=1, help="Processes decoding videos; default: one per CPU core.")
    ] = os.cpu_count() or 1,
    shard_mb: Annotated[float, typer.Option(min=0.01, help="Shard size in MB.")] = 256,
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            help="Split the videos over this many replicas of --workers processes each: TorchX processes "
            "of this machine, or pods with --on-cluster. The dataset is the same, whatever the number.",
        ),
    ] = 1,
    on_cluster: Annotated[
        bool,
        typer.Option(
            "--on-cluster",
            help="Run the replicas as a Volcano job of the deployment settings' cluster (namespace, queue, "
            "image), reading the source and writing the dataset in object storage.",
        ),
    ] = False,
    settings: Annotated[
        Path | None,
        typer.Option(
            help="With --on-cluster: deployment settings (YAML); default: $MEGA3D_SETTINGS, else "
            "~/.config/mega3d/settings.yaml.",
            show_default=False,
        ),
    ] = None,
    publish: Publish = None,
    storage_root: CatalogRoot = None,
) -> None:
    """Convert an existing dataset into mega3d's format; unreadable videos are listed, not dropped.

    Re-running the same command after an interruption resumes it: finished shards are kept.

    Any number of --replicas writes the same dataset, also when a resumed run has another number."""
    from mega3d.trainer.data.format import DatasetError
    from mega3d.trainer.data.ingest import (
        Options,
        Source,
        format_hint,
        read_activitynet,
        read_hmdb51,
        read_reference,
        read_ucf101,
        read_video_list,
        read_youtube_clips,
    )
    from mega3d.trainer.data.ingest import (
        ingest as ingest_source,
    )
    from mega3d.trainer.data.replicas import ingest_with_replicas

    root = catalog_root(publish, storage_root)
    several = source_format in (SourceFormat.KINETICS, SourceFormat.HVU)
    if len(annotations) > 1 and not several:
        fail([f"--annotations: {source_format.value} takes one, got {len(annotations)}"])
    remote = "://" in source
    if remote and source_format not in REMOTE_FORMATS:
        listed = ", ".join(f.value for f in REMOTE_FORMATS)
        where = f"SOURCE {source}: a {source_format.value} source is read from a local folder"
        fail([f"{where} ({listed} can be read from object storage)"])
    if on_cluster and not (remote and "://" in output):
        needed = "give SOURCE and --output as URIs (gs://...)"
        fail([f"--on-cluster: the pods read the source and write the dataset in object storage: {needed}"])
    launch = replica_launcher(output, replicas, on_cluster, settings)
    local = Path(source)
    top: Path | str = source if remote else local
    first = annotations[0]
    readers: dict[SourceFormat, Callable[[], Source]] = {
        SourceFormat.REFERENCE_JPG: lambda: read_reference("frames", local, first),
        SourceFormat.REFERENCE_HDF5: lambda: read_reference("hdf5", local, first),
        SourceFormat.CSV: lambda: read_video_list(top, first),
        SourceFormat.UCF101: lambda: read_ucf101(top, first, split),
        SourceFormat.HMDB51: lambda: read_hmdb51(top, first, split),
        SourceFormat.KINETICS: lambda: read_youtube_clips(local, annotations, multi_label=False),
        SourceFormat.HVU: lambda: read_youtube_clips(local, annotations, multi_label=True),
        SourceFormat.ACTIVITYNET: lambda: read_activitynet(local, first),
    }
    options = Options(short_side=short_side, fps=fps, shard_bytes=round(shard_mb * (1 << 20)))
    try:
        videos = readers[source_format]()
    except DatasetError as error:
        fail([f"{error}{format_hint(annotations, source_format.value)}"])
    end_cleanly_on_sigterm()
    try:
        with progress_of("ingesting") as progress:
            if launch is None:
                index = ingest_source(output, videos, options, workers, progress, warn)
            else:
                index = ingest_with_replicas(
                    output, videos, options, replicas, launch, workers, progress, warn
                )
    except DATA_ERRORS as error:
        fail([message(error, output)])
    except MemoryError:
        fail(
            [f"{output}: not enough memory to decode the videos; try fewer --workers, a smaller --short-side"]
        )
    out.print(
        f"wrote {len(index)} videos of {len(index.classes)} classes to {output} "
        f"({len(index.shards)} shards, fingerprint {index.fingerprint})"
        + (f"; skipped {videos.unlabelled} unlabelled" if videos.unlabelled else ""),
        soft_wrap=True,
    )
    if index.errors:
        shown = "; ".join(f"{e.id}: {e.error}" for e in index.errors[:3])
        out.print(f"{len(index.errors)} unreadable (listed in the index's errors): {shown}", soft_wrap=True)
    publish_version(root, publish, output, f"ingest of {source} ({source_format.value})")


@data_app.command()
def merge(
    datasets: Annotated[
        list[str], typer.Argument(help="Datasets to merge (paths or URIs).", show_default=False)
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the merged index.")],
    name: Annotated[
        list[str] | None, typer.Option(help="Name per dataset (class prefix); default: last path part.")
    ] = None,
    unify: Annotated[
        Path | None,
        typer.Option(help="YAML map of classes to fuse after merging: `new name: [<dataset>/<class>, ...]`."),
    ] = None,
    publish: Publish = None,
    storage_root: CatalogRoot = None,
) -> None:
    """Concatenate label spaces into a new index over the existing shards (no video is copied)."""
    from mega3d.trainer.data.format import DatasetError, MergedSource, UnifiedClasses
    from mega3d.trainer.data.format import merge as merge_indexes
    from mega3d.trainer.data.ops import read_unify_map, unify_classes

    root = catalog_root(publish, storage_root)
    names = name or [uri.rstrip("/").rsplit("/", 1)[-1] for uri in datasets]
    if len(names) != len(datasets):
        fail([f"--name given {len(names)} times for {len(datasets)} datasets"])
    try:
        merged = merge_indexes(
            [(n, load_dataset(uri)) for n, uri in zip(names, datasets, strict=True)], datasets
        )
        if unify is not None:
            merged = unify_classes(merged, read_unify_map(unify), str(unify))
    except DatasetError as error:
        fail([str(error)])
    save_dataset(output, merged)
    parts = " + ".join(f"{s.name} {s.classes}" for s in merged.sources if isinstance(s, MergedSource))
    fused = sum(len(c) for s in merged.sources if isinstance(s, UnifiedClasses) for c in s.unify.values())
    out.print(
        f"wrote {output}: {len(merged.classes)} classes ({parts}"
        + (f", {fused} fused" if unify else "")
        + f"), {len(merged)} videos, fingerprint {merged.fingerprint}",
        soft_wrap=True,
    )
    publish_version(root, publish, output, "merge of " + " + ".join(datasets))


@data_app.command()
def subset(
    uri: Annotated[str, typer.Argument(help="The dataset to take a subset of.", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the subset's index.")],
    categories: Annotated[float, typer.Option(help="Fraction of the categories to keep.")] = 1.0,
    instances: Annotated[float, typer.Option(help="Fraction of each kept category's training videos.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same subset.")] = 0,
    publish: Publish = None,
    storage_root: CatalogRoot = None,
) -> None:
    """The paper's data-amount study: keep a fraction of categories, then of instances per category."""
    from mega3d.trainer.data.ops import subset as take_subset

    root = catalog_root(publish, storage_root)
    try:
        part = take_subset(load_dataset(uri), categories, instances, seed, uri)
    except DATA_ERRORS as error:
        fail([str(error)])
    save_dataset(output, part)
    out.print(
        f"wrote {output}: {len(part.classes)} classes, {len(part.rows('training'))} training videos "
        f"(of {uri})",
        soft_wrap=True,
    )
    made_from = f"subset of {uri}: categories {categories:g}, instances {instances:g}, seed {seed}"
    publish_version(root, publish, output, made_from)


@data_app.command("publish")
def publish_command(
    name: Annotated[str, typer.Argument(help="The catalog name, e.g. kinetics-mit.", show_default=False)],
    uri: Annotated[str, typer.Argument(help="The dataset to publish (path or URI).", show_default=False)],
    storage_root: Annotated[
        str,
        typer.Option(
            "--storage",
            help="The storage root that holds the catalog: the `storage` of the specs that use it.",
            show_default=False,
        ),
    ],
    made_from: Annotated[str, typer.Option(help="What the dataset was made from, in words.")] = "",
) -> None:
    """Add a dataset to the catalog as the next version of NAME.

    Specs name it `catalog: NAME` (the newest version when a run starts) or `catalog: NAME@N`.

    Published versions are never changed."""
    publish_version(catalog_root(name, storage_root, "NAME"), name, uri, made_from, written=False)


@data_app.command("versions")
def versions_command(
    name: Annotated[str, typer.Argument(help="The catalog name.", show_default=False)],
    storage_root: Annotated[
        str, typer.Option("--storage", help="The storage root that holds the catalog.", show_default=False)
    ],
) -> None:
    """Every version of a catalog dataset, oldest first: when, what, and what it was made from."""
    from mega3d.trainer import storage
    from mega3d.trainer.catalog import resolve, versions

    root = storage.local_absolute(storage_root)
    try:
        found = versions(root, name.partition("@")[0])
        if not found:
            resolve(root, name, "NAME")  # says so in one line, with a suggestion
    except DATA_ERRORS as error:  # a CatalogError is a ValueError
        fail([str(error)])
    out.print(f"{name} in the catalog at {root}: {len(found)} versions, oldest first", soft_wrap=True)
    for version in found:  # one line each, whole URIs: for reading, and for grep
        out.print(
            f"  {version.reference}  {version.published}  {version.videos:,} videos  {version.classes} "
            f"classes  fingerprint {version.fingerprint[:12]}  {version.uri}"
            + (f"  ({version.made_from})" if version.made_from else ""),
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
    from mega3d.trainer.data.format import shard_problems
    from mega3d.trainer.data.ops import plot_class_histogram
    from mega3d.trainer.data.ops import stats as dataset_stats

    index = load_dataset(uri)
    try:
        incomplete = shard_problems(index)
    except DATA_ERRORS as error:
        fail([message(error, uri)])
    if incomplete:  # figures of videos that cannot be read would mislead
        fail([f"{uri}: {problem}" for problem in incomplete])
    numbers = dataset_stats(index)
    splits = ", ".join(f"{count} {split}" for split, count in numbers["splits"].items())
    kind = "multi-label " if numbers["multi_label"] else ""
    out.print(
        f"{uri}: {numbers['classes']} classes, {numbers['videos']} {kind}videos ({splits})", soft_wrap=True
    )
    hours = numbers["hours"]
    duration = f"{hours:,.1f} hours" if hours >= 1 else f"{hours * 60:.1f} minutes"
    size = f"{numbers['bytes'] / 1e6:,.1f} MB in {numbers['shards']} shards"
    out.print(f"  {numbers['frames']:,} frames, {duration}, {size}")
    for label in ("smallest", "largest"):
        listed = ", ".join(f"{name} ({count})" for count, name in numbers[label])
        out.print(f"  {label} classes (training videos): {listed}", soft_wrap=True)
    if numbers["unreadable"]:
        out.print(f"  {numbers['unreadable']} videos could not be read when it was made (index errors)")
    out.print(f"  fingerprint {numbers['fingerprint']}")
    if plot is not None:
        try:
            plot_class_histogram(index, str(plot))
        except DATA_ERRORS as error:
            fail([f"--plot {plot}: {error}"])
        out.print(f"  wrote {plot}")


@data_app.command()
def verify(
    uri: Annotated[str, typer.Argument(help="The dataset.", show_default=False)],
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Threads reading and hashing; default: 4 per CPU core, at most 32."),
    ] = None,
) -> None:
    """Check every video's stored bytes against the digest its index recorded.

    Exit code 0 and a summary line when every video matches.

    Else exit code 2, one line per bad video: id, shard, and digest mismatch, missing or short shard."""
    from mega3d.trainer.data.verify import DEFAULT_WORKERS, verify_dataset

    index = load_dataset(uri)
    started = time.monotonic()
    try:
        with progress_of("verifying") as progress:
            result = verify_dataset(index, workers or DEFAULT_WORKERS, progress)
    except DATA_ERRORS as error:
        fail([message(error, uri)])
    if result.bad:
        fail(
            [f"{uri}: video {video.id!r} in {video.shard}: {video.problem}" for video in result.bad]
            + [f"{uri}: {len(result.bad)} of {result.videos} videos do not match the index"]
        )
    out.print(
        f"{uri}: all {result.videos:,} videos match their digests ({result.bytes / 1e6:,.1f} MB in "
        f"{result.shards} shards, {time.monotonic() - started:.1f} s)",
        soft_wrap=True,
    )
