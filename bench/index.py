"""Index scale: loading, merging and saving the index of Kinetics-700 + Moments in Time (1.65M videos).

Two synthetic `DatasetIndex`es are built straight from numpy columns, with the sizes of the real datasets
(700 classes and about 1.0M videos; 339 classes and about 0.65M videos), Kinetics-style video ids
(`<11-character YouTube id>_<start>_<end>`, unique across both), one label per video, random digests and a
few hundred shard URIs, and saved with `save_index` into a temporary directory. Then, each in a fresh
Python process (so that its peak memory, `ru_maxrss`, is its own and nothing is cached):

    merge   load both indexes, `merge([("k700", a), ("mit", b)])`, `save_index` of the result
            targets: <= 5 s and <= 1.5 GB peak RSS (the RSS after imports is shown as the baseline)
    load    load the merged index                                            target: <= 2 s

The parent process only builds the inputs and prints; each child reports its figures as JSON on stdout.

    .venv/bin/python bench/index.py                    # about 10 s on 2 cores
    .venv/bin/python bench/index.py --k700 100000 --mit 65000     # a quick run at a tenth of the size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from mega3d.trainer.data.format import (
    COLUMNS,
    DIGEST_BYTES,
    KEY_EVERY,
    SUBSETS,
    DatasetIndex,
    load_index,
    merge,
    save_index,
)

TARGET_MERGE_S = 5.0
TARGET_MERGE_RSS_GB = 1.5
TARGET_LOAD_S = 2.0
ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8)
ID_LENGTH = 25  # e.g. abcdefghijk_000010_000020
GB = 1e9


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def digits(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers as zero-padded ASCII digits, (n, width) uint8."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (values[:, None] // powers % 10 + ord("0")).astype(np.uint8)


def kinetics_ids(rng: np.random.Generator, first: int, n: int) -> np.ndarray:
    """n distinct ids like `abcdefghijk_000010_000020`: 7 random characters, then 4 that count from
    `first` (so ids from disjoint ranges never clash), then start and end seconds."""
    chars = np.empty((n, ID_LENGTH), dtype=np.uint8)
    chars[:, :7] = ALPHABET[rng.integers(0, 64, size=(n, 7))]
    serial = np.arange(first, first + n, dtype=np.int64)
    if first + n > 64**4:
        raise ValueError(f"at most {64**4} ids")
    for k in range(4):
        chars[:, 7 + k] = ALPHABET[(serial >> (6 * (3 - k))) & 63]
    start = rng.integers(0, 300, size=n)
    chars[:, 11] = chars[:, 18] = ord("_")
    chars[:, 12:18] = digits(start, 6)
    chars[:, 19:25] = digits(start + 10, 6)
    return chars.view(f"S{ID_LENGTH}").ravel()


def synthetic_index(
    rng: np.random.Generator,
    directory: str,
    classes: int,
    videos: int,
    shards: int,
    first_id: int,
    fps: float,
) -> DatasetIndex:
    """An index of `videos` single-label videos over `classes` classes in `shards` (fake) shards."""
    shards = max(1, min(shards, videos))
    frames = rng.integers(int(fps * 3), int(fps * 10) + 1, size=videos).astype(np.int32)
    frame_bytes = rng.integers(4_000, 8_000, size=videos)  # each frame behind its 4-byte length
    length = (frames.astype(np.int64) * (frame_bytes + 4)).astype(np.int64)
    keys_per_video = -(-frames.astype(np.int64) // KEY_EVERY)  # frames 0, 16, 32, ...
    key_start = np.concatenate([[0], np.cumsum(keys_per_video)]).astype(np.int64)
    key_number = np.arange(int(key_start[-1])) - np.repeat(key_start[:-1], keys_per_video)
    key = (key_number * KEY_EVERY * np.repeat(frame_bytes + 4, keys_per_video)).astype(np.uint32)
    shard = (np.arange(videos, dtype=np.int64) * shards // videos).astype(np.int32)
    ends = np.cumsum(length)
    shard_starts = np.concatenate([[0], ends[:-1]])[np.searchsorted(shard, np.arange(shards))]
    split = rng.choice(len(SUBSETS), size=videos, p=[0.9, 0.05, 0.05]).astype(np.uint8)
    columns: dict[str, np.ndarray] = {
        "id": kinetics_ids(rng, first_id, videos),
        "label_start": np.arange(videos + 1, dtype=np.int64),
        "label": rng.integers(0, classes, size=videos).astype(np.int32),
        "key_start": key_start,
        "key": key,
        "split": split,
        "shard": shard,
        "offset": ends - length - shard_starts[shard],
        "length": length,
        "frames": frames,
        "height": np.full(videos, 128, dtype=np.int32),
        "width": rng.choice([171, 227], size=videos).astype(np.int32),
        "fps": np.full(videos, fps, dtype=np.float32),
        "digest": rng.integers(0, 256, size=(videos, DIGEST_BYTES), dtype=np.uint8),
    }
    for name, kind in COLUMNS.items():
        if kind != "S" and columns[name].dtype != np.dtype(kind):
            raise TypeError(f"{name}: {columns[name].dtype}, expected {np.dtype(kind)}")
    prefix = os.path.basename(directory)
    return DatasetIndex(
        classes=[f"{prefix}-class-{k:03d}" for k in range(classes)],
        shards=[os.path.join(directory, f"shard-{prefix}-{k:05d}.bin") for k in range(shards)],
        columns=columns,
    )


# ---- the measured children -----------------------------------------------------------------------------


def child_merge(first: str, second: str, out: str) -> dict[str, Any]:
    baseline = peak_rss()
    times: dict[str, float] = {}
    started = time.perf_counter()
    a = load_index(first)
    times["load k700"] = time.perf_counter() - started
    b = load_index(second)
    times["load mit"] = time.perf_counter() - started - sum(times.values())
    merged = merge([("k700", a), ("mit", b)])
    times["merge"] = time.perf_counter() - started - sum(times.values())
    save_index(out, merged)
    times["save"] = time.perf_counter() - started - sum(times.values())
    return {
        "seconds": time.perf_counter() - started,
        "parts": times,
        "baseline_rss": baseline,
        "peak_rss": peak_rss(),
        "videos": len(merged),
        "classes": len(merged.classes),
        "shards": len(merged.shards),
    }


def child_load(uri: str) -> dict[str, Any]:
    baseline = peak_rss()
    started = time.perf_counter()
    index = load_index(uri)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "baseline_rss": baseline, "peak_rss": peak_rss(), "videos": len(index)}


def run_child(*args: str, options: list[str] | None = None) -> dict[str, Any]:
    """This script in a fresh interpreter; its last stdout line is its JSON report."""
    command = [sys.executable, os.path.abspath(__file__), *(options or []), "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the child {args[0]} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---- the parent ----------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def child_build(directory: str, args: argparse.Namespace) -> dict[str, Any]:
    """Write the two input indexes; their URIs and sizes."""
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    uris = []
    for name, classes, videos, shards, first, fps in (
        ("k700", args.k700_classes, args.k700, args.k700_shards, 0, 25.0),
        ("mit", args.mit_classes, args.mit, args.mit_shards, args.k700, 30.0),
    ):
        index = synthetic_index(rng, os.path.join(directory, name), classes, videos, shards, first, fps)
        uris.append(os.path.join(directory, name, "index.npz"))
        save_index(uris[-1], index)
        del index
    return {
        "uris": uris,
        "bytes": [os.path.getsize(uri) for uri in uris],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k700", type=int, default=1_000_000, help="videos of the first index")
    parser.add_argument("--k700-classes", type=int, default=700)
    parser.add_argument("--k700-shards", type=int, default=400)
    parser.add_argument("--mit", type=int, default=650_000, help="videos of the second index")
    parser.add_argument("--mit-classes", type=int, default=339)
    parser.add_argument("--mit-shards", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where to write the indexes (default: a temp dir)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *paths = args.child
        children = {"build": lambda: child_build(paths[0], args), "merge": lambda: child_merge(*paths)}
        print(json.dumps(children.get(kind, lambda: child_load(*paths))()))
        return

    # Linux keeps a process's peak RSS across fork and exec, so the children are started from this process
    # while it is still small: even the inputs are built in a child.
    options = [
        f"--{name.replace('_', '-')}={value}"
        for name, value in vars(args).items()
        if name not in ("dir", "child")
    ]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        built = run_child("build", tmp, options=options)
        merged_uri = os.path.join(tmp, "merged", "index.npz")
        print(
            f"{args.k700:,} + {args.mit:,} videos, {args.k700_classes} + {args.mit_classes} classes, "
            f"{args.k700_shards} + {args.mit_shards} shards; inputs {built['bytes'][0] / 1e6:.1f} MB + "
            f"{built['bytes'][1] / 1e6:.1f} MB, built in {built['seconds']:.1f} s"
        )
        merged = run_child("merge", *built["uris"], merged_uri)
        loaded = run_child("load", merged_uri)
        size = os.path.getsize(merged_uri)

    parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in merged["parts"].items())
    print(
        f"merged index: {merged['videos']:,} videos, {merged['classes']} classes, {merged['shards']} shards; "
        f"file {size / 1e6:.1f} MB ({size / merged['videos']:.0f} bytes per video)"
    )
    print(f"\nload both + merge + save (fresh process): {merged['seconds']:.2f} s  ({parts})")
    print(
        f"  RSS after imports {merged['baseline_rss'] / 1e6:.0f} MB, peak {merged['peak_rss'] / 1e6:.0f} MB "
        f"(+{(merged['peak_rss'] - merged['baseline_rss']) / 1e6:.0f} MB)"
    )
    print(
        f"load the merged index (fresh process): {loaded['seconds']:.2f} s; RSS after imports "
        f"{loaded['baseline_rss'] / 1e6:.0f} MB, peak {loaded['peak_rss'] / 1e6:.0f} MB"
    )
    print("\ntargets:")
    rows = (
        (
            f"load + merge + save <= {TARGET_MERGE_S:g} s",
            f"{merged['seconds']:.2f} s",
            merged["seconds"] <= TARGET_MERGE_S,
        ),
        (
            f"peak RSS of that process <= {TARGET_MERGE_RSS_GB:g} GB",
            f"{merged['peak_rss'] / GB:.2f} GB",
            merged["peak_rss"] <= TARGET_MERGE_RSS_GB * GB,
        ),
        (
            f"load merged <= {TARGET_LOAD_S:g} s",
            f"{loaded['seconds']:.2f} s",
            loaded["seconds"] <= TARGET_LOAD_S,
        ),
    )
    for text, value, ok in rows:
        print(f"  {text:<36} {value:>9}  {verdict(ok)}")


if __name__ == "__main__":
    main()
