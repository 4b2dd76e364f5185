"""Check every video of a dataset against the digest its index recorded (`mega3d data verify`).

Videos are read in runs: the videos of one shard that lie close together are fetched in one ranged read of
at most `RUN_BYTES`, and each one's bytes are hashed (BLAKE2b, as the index records it). Runs are read and
hashed by a pool of threads: reads wait on disks or object stores, and hashlib releases the GIL while it
hashes, so threads keep several cores busy without copying bytes between processes. Torch-free: the CLI
runs this in its own process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from mega3d.trainer import storage
from mega3d.trainer.data.format import DatasetIndex, video_digest

RUN_BYTES = 32 << 20  # one ranged read: large enough for object stores, small enough for `workers` in memory
GAP_BYTES = 1 << 20  # videos farther apart in a shard (a subset's) are read apart: gaps are read for nothing
DEFAULT_WORKERS = min(32, 4 * (os.cpu_count() or 1))  # reads wait more than they compute


@dataclass(frozen=True)
class BadVideo:
    """A video whose stored bytes are not those its index recorded."""

    id: str
    shard: str  # the shard's URI
    problem: str  # "digest mismatch", "missing shard", "short shard (...)", "cannot be read (...)"


@dataclass(frozen=True)
class Verification:
    videos: int
    bytes: int  # the videos' bytes, as the index records them
    shards: int
    bad: list[BadVideo]


def runs(index: DatasetIndex) -> list[np.ndarray]:
    """The index's rows in groups read together: same shard, in shard order, close together, at most
    RUN_BYTES from the first one's start to the last one's end (a longer video is a run of its own)."""
    c = index.columns
    order = np.lexsort((c["offset"], c["shard"]))
    # Plain ints: this loop visits every video, and numpy scalars are slow one at a time.
    shards, offsets = c["shard"][order].tolist(), c["offset"][order].tolist()
    ends = (c["offset"] + c["length"])[order].tolist()
    groups: list[np.ndarray] = []
    first = 0
    for position in range(1, len(order) + 1):
        if (
            position < len(order)
            and shards[position] == shards[first]
            and offsets[position] - ends[position - 1] <= GAP_BYTES
            and ends[position] - offsets[first] <= RUN_BYTES
        ):
            continue
        groups.append(order[first:position])
        first = position
    return groups


def check_run(index: DatasetIndex, rows: np.ndarray) -> list[BadVideo]:
    """Read one run of videos and compare each with its digest."""
    c = index.columns
    uri = index.shards[int(c["shard"][rows[0]])]
    start = int(c["offset"][rows[0]])
    end = int((c["offset"][rows] + c["length"][rows]).max())
    ids = [video_id.decode(errors="replace") for video_id in c["id"][rows].tolist()]
    try:
        data = storage.read_range(uri, start, end)
    except FileNotFoundError:
        return [BadVideo(video_id, uri, "missing shard") for video_id in ids]
    except Exception as error:  # an object store may answer a read past an object's end with an error
        if not storage.exists(uri):
            return [BadVideo(video_id, uri, "missing shard") for video_id in ids]
        if len(rows) > 1:  # one video at a time, to tell those that can be read from those that cannot
            return [video for row in rows for video in check_run(index, np.array([row]))]
        return [BadVideo(ids[0], uri, f"cannot be read ({error})")]
    bad = []
    view = memoryview(data)
    for row, video_id in zip(rows.tolist(), ids, strict=True):
        begin = int(c["offset"][row]) - start
        stop = begin + int(c["length"][row])
        if stop > len(data):
            size = start + len(data)
            bad.append(
                BadVideo(video_id, uri, f"short shard ({size:,} bytes; the video ends at {stop + start:,})")
            )
        elif video_digest(view[begin:stop]) != bytes(c["digest"][row]):
            bad.append(BadVideo(video_id, uri, "digest mismatch"))
    return bad


def verify_dataset(
    index: DatasetIndex,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[int, int], None] | None = None,
) -> Verification:
    """Every video of the index read and compared with its digest, `workers` runs at a time; `progress` is
    told (videos done, videos in all) as runs finish. Bad videos come in shard order."""
    groups = runs(index)
    found: list[list[BadVideo]] = [[] for _ in groups]
    done = 0
    if progress is not None:
        progress(done, len(index))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        numbers = {pool.submit(check_run, index, rows): number for number, rows in enumerate(groups)}
        for future in as_completed(numbers):
            number = numbers[future]
            found[number] = future.result()
            done += len(groups[number])
            if progress is not None:
                progress(done, len(index))
    return Verification(
        videos=len(index),
        bytes=int(index.columns["length"].sum()),
        shards=len(np.unique(index.columns["shard"])),
        bad=[video for videos in found for video in videos],
    )
