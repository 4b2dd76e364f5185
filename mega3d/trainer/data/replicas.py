"""Ingest split over N replicas (machines, or processes of one): the dataset one machine would write.

The coordinator, `ingest_with_replicas`, holds the dataset's writer lock from start to end, writes the plan
(`writer.start`, as a single-machine ingest does) and one share file per replica under the work folder:

    <dataset>/ingest/plan.json                       the plan
    <dataset>/ingest/replica-00001-of-00004.json     replica 1's videos, with their source order
    <dataset>/ingest/shard-r00001of00004-*.npz       manifests of the shards replica 1 finished

then has the replicas run (`launch`: local processes through TorchX's local_cwd, or a Volcano job) and,
once all have ended, checks that every listed video is in a manifest and builds the one index (`finish`,
which orders the videos as the source lists them, whoever wrote them).

A replica (`python -m mega3d.trainer.data.replicas --dataset URI --replicas N --plan DIGEST --replica I`)
writes its share only, and takes no lock: it refuses to run unless the plan on storage is the one it was
started for. One that dies is started again and skips the videos its manifests already hold.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import posixpath
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mega3d.trainer import storage
from mega3d.trainer.data.format import DatasetError, DatasetIndex
from mega3d.trainer.data.ingest import (
    Options,
    Progress,
    Root,
    Source,
    SourceVideo,
    check_source,
    is_multi_label,
    plan_of,
    write_videos,
)
from mega3d.trainer.data.writer import (
    SourcePlan,
    finish,
    manifest_ids,
    manifest_uris,
    start,
    unfinished_plan,
    work_dir,
    writing,
)
from mega3d.trainer.records import Record, RecordError

ENTRY_POINT = "mega3d.trainer.data.replicas"
WATCH_SECONDS = 10.0  # how often the coordinator counts finished videos for `progress`

# Runs the replica entry point as `replicas` processes (each with its `--replica I` added, I from 0) to
# their end, starting again those that die; raises if any did not succeed. Arguments: the entry point's
# arguments but `--replica`, the number of replicas, and the processes (cores) each replica uses.
Launch = Callable[[list[str], int, int], None]


class ShareVideo(Record):
    """A video as a replica's share lists it: `SourceVideo` and its place in the source."""

    order: int
    id: str
    labels: tuple[str, ...]
    split: str
    path: str
    frames: tuple[int, int] | None = None
    seconds: tuple[float, float] | None = None
    row: str = ""


class ReplicaShare(Record):
    """`ingest/replica-<I>-of-<N>.json`: what the coordinator gives replica I of N to write."""

    plan: SourcePlan
    replica: int
    replicas: int
    videos: list[ShareVideo]


def plan_digest(plan: SourcePlan) -> str:
    """What a replica is started with to name the plan it was started for."""
    return hashlib.sha256(json.dumps(plan.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def share_uri(dataset_uri: str, replica: int, replicas: int) -> str:
    return storage.join(work_dir(dataset_uri), f"replica-{replica:05d}-of-{replicas:05d}.json")


def shard_tag(replica: int, replicas: int) -> str:
    """How the names of a replica's shards begin after `shard-`: its successor finds its work by it."""
    return f"r{replica:05d}of{replicas:05d}-"


# ---- the coordinator -----------------------------------------------------------------------------------


def ingest_with_replicas(
    uri: str,
    source: Source,
    options: Options,
    replicas: int,
    launch: Launch,
    workers_per_replica: int = 1,
    progress: Progress | None = None,
    notice: Callable[[str], None] | None = None,
) -> DatasetIndex:
    """Write a source as a dataset with `replicas` replicas of `workers_per_replica` processes each, run by
    `launch` (e.g. `mega3d.pipelines.ingest_jobs.local_launcher()`); the result has the content (fingerprint,
    rows, errors) of `ingest(uri, source, options)`. Like `ingest`, an interrupted run is resumed by running
    it again, with any number of replicas: videos already written are skipped. The dataset's writer lock
    is held throughout (another live writer is refused; a dead one's lock is taken over, said through
    `notice`). `progress(done, total)` hears of finished shards every WATCH_SECONDS. A launch that fails,
    or replicas that leave videos unwritten, raise DatasetError naming the replicas whose shares are
    missing."""
    check_source(source)
    if replicas < 1 or workers_per_replica < 1:
        raise DatasetError(
            f"replicas and workers per replica must be at least 1, got {replicas}, {workers_per_replica}"
        )
    with writing(uri, notice) as lock:
        plan = plan_of(source, options)
        done = start(uri, plan)
        todo = [(order, video) for order, video in enumerate(source.videos) if video.id not in done]
        replicas = max(1, min(replicas, len(todo)))
        shares = [todo[replica::replicas] for replica in range(replicas)]
        if todo:
            for replica, share in enumerate(shares):
                _share_of(plan, replica, replicas, share).write(share_uri(uri, replica, replicas))
            arguments = [
                "--dataset", uri, "--replicas", str(replicas), "--plan", plan_digest(plan),
                "--workers", str(workers_per_replica),
            ]  # fmt: skip
            with _counting(uri, len(source.videos), len(done), progress):
                try:
                    launch(arguments, replicas, workers_per_replica)
                except Exception as error:
                    raise DatasetError(
                        f"{uri}: the replicas did not all succeed ({error}); "
                        f"{_missing(uri, shares) or 'every video is written'}; run the same command "
                        "again to resume"
                    ) from error
        problem = _missing(uri, shares)
        if problem:
            raise DatasetError(f"{uri}: {problem}; run the same command again to resume")
        lock.check()  # finish deletes shards no manifest claims: never another writer's
        return finish(uri, source.labels, is_multi_label(source))


def _share_of(
    plan: SourcePlan, replica: int, replicas: int, share: list[tuple[int, SourceVideo]]
) -> ReplicaShare:
    videos = [
        ShareVideo(
            order=order,
            id=video.id,
            labels=video.labels,
            split=video.split,
            path=video.path,
            frames=video.frames,
            seconds=video.seconds,
            row=video.row,
        )
        for order, video in share
    ]
    return ReplicaShare(plan=plan, replica=replica, replicas=replicas, videos=videos)


def _missing(uri: str, shares: list[list[tuple[int, SourceVideo]]]) -> str:
    """Which replicas left videos of their shares unwritten, or wrote some twice, in words ("" if none)."""
    holders: dict[str, list[str]] = {}
    for manifest in manifest_uris(uri):
        for video_id in manifest_ids(manifest):
            holders.setdefault(video_id, []).append(posixpath.basename(manifest))
    twice = {video_id: names for video_id, names in holders.items() if len(names) > 1}
    if twice:
        video_id, names = next(iter(twice.items()))
        return (
            f"{len(twice)} videos are in more than one shard (a replica ran twice at once?), e.g. "
            f"{video_id!r} in {' and '.join(names)}: delete all but one of those manifests under "
            f"{work_dir(uri)}"
        )
    problems = []
    for replica, share in enumerate(shares):
        unwritten = [video.id for _, video in share if video.id not in holders]
        if unwritten:
            problems.append(
                f"replica {replica} of {len(shares)} did not write {len(unwritten)} of its {len(share)} "
                f"videos (e.g. {unwritten[0]!r})"
            )
    return "; ".join(problems)


@contextmanager
def _counting(uri: str, total: int, before: int, progress: Progress | None) -> Iterator[None]:
    """While the block runs, `progress` hears every WATCH_SECONDS how many videos are done: `before`, and
    those in shards finished since the block began (each manifest is read once)."""
    if progress is None:
        yield
        return
    counted = dict.fromkeys(manifest_uris(uri), 0)  # earlier runs' work: in `before` already

    def count() -> None:
        for manifest in manifest_uris(uri):
            if manifest not in counted:
                counted[manifest] = len(manifest_ids(manifest))
        progress(before + sum(counted.values()), total)

    stop = threading.Event()

    def keep_counting() -> None:
        while not stop.wait(WATCH_SECONDS):
            with contextlib.suppress(OSError, DatasetError):  # a display must not end the ingest
                count()

    count()
    thread = threading.Thread(target=keep_counting, name="ingest-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    count()


# ---- a replica -----------------------------------------------------------------------------------------


def run_replica(
    uri: str, replica: int, replicas: int, plan: str, workers: int = 1, say: Callable[[str], None] = print
) -> None:
    """Write replica `replica`'s share of the videos (of `replicas`) with `workers` processes, skipping
    those its shards already hold. `plan` is the `plan_digest` it was started for: a plan on storage that
    is not that one (another source or other options, or none: the dataset was finished or started over)
    is refused. Takes no lock: the coordinator holds the dataset's."""
    if not 0 <= replica < replicas:
        raise DatasetError(
            f"--replica must be in 0 to {replicas - 1} (of --replicas {replicas}), got {replica}"
        )
    current = unfinished_plan(uri)
    found = plan_digest(current) if isinstance(current, SourcePlan) else None
    if found != plan:
        raise DatasetError(
            f"{uri}: the ingest plan there ({f'plan {found}' if found else 'none of a source'}) is not "
            f"the one this replica was started for (plan {plan}): its coordinator has finished, or another "
            "ingest has started there"
        )
    where = share_uri(uri, replica, replicas)
    try:
        share = ReplicaShare.read(where)
    except (RecordError, FileNotFoundError) as error:
        raise DatasetError(f"{where}: not this replica's share ({error})") from None
    if share.plan != current or (share.replica, share.replicas) != (replica, replicas):
        raise DatasetError(f"{where}: the share of another plan or replica; run the coordinator again")
    tag = shard_tag(replica, replicas)
    done = {
        video_id
        for manifest in manifest_uris(uri)
        if posixpath.basename(manifest).startswith(f"shard-{tag}")
        for video_id in manifest_ids(manifest)
    }
    todo = [(video.order, _source_video(video)) for video in share.videos if video.id not in done]
    name = f"replica {replica} of {replicas}"
    say(f"{name}: {len(todo)} of its {len(share.videos)} videos to write")
    source = Source(share.plan.kind, _root(share.plan.root), share.plan.classes, [video for _, video in todo])
    options = Options(share.plan.short_side, share.plan.fps, share.plan.shard_bytes)
    written = 0

    def advance() -> None:
        nonlocal written
        written += 1

    write_videos(uri, source, options, todo, workers, advance, tag)
    say(f"{name}: wrote {written} videos; its share is done")


def _source_video(video: ShareVideo) -> SourceVideo:
    return SourceVideo(
        video.id, video.labels, video.split, video.path, video.frames, video.seconds, video.row
    )


def _root(root: str) -> Root:
    """A plan's root as `Source` takes it: a local folder as a Path (its files are checked to be regular
    ones before they are read), anything else as the URI it is."""
    return root if "://" in root else Path(root)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {ENTRY_POINT}",
        description="Write one replica's share of a dataset ingest that `ingest_with_replicas` coordinates.",
    )
    parser.add_argument("--dataset", required=True, help="the dataset's URI")
    parser.add_argument("--replica", type=int, required=True, help="this replica's number, from 0")
    parser.add_argument("--replicas", type=int, required=True, help="how many replicas share the videos")
    parser.add_argument("--plan", required=True, help="the digest of the plan the replica is started for")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding videos")
    args = parser.parse_args(argv)
    try:
        run_replica(args.dataset, args.replica, args.replicas, args.plan, args.workers)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
