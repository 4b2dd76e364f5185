"""mega3d's dataset format, version 2: large shard objects of JPEG frames plus one columnar index.

    <dataset>/index.npz          the index: a JSON header (classes, shards, sources, errors, fingerprint)
                                 and one numpy column per video field (see `COLUMNS`)
    <dataset>/shard-*.bin        videos back to back, about `shard_bytes` (256 MB) per shard

One video in a shard is its frames one after the other, each a JPEG image behind its length:

    uint32 little-endian length of frame 0, JPEG of frame 0, length of frame 1, JPEG of frame 1, ...

The index keeps, per video, where every `KEY_EVERY`-th frame starts (its "key" offsets). A clip is then one
ranged read, from the key at or before its first frame to the key after its last, and the frames in it are
found by walking the lengths: object stores are read in one piece per clip, never one request per frame,
and nothing else needs fetching first. A merge or a subset is a new index that points at the existing
shards: nothing is copied. The index is written last, and in one piece, so a dataset without an index is
incomplete and is never read.

The index keeps each video's BLAKE2b digest. An index is checked when it is loaded (a damaged file, or
columns that do not describe readable videos, is one DatasetError naming the file); `shard_problems` finds
missing or short shards before training; readers check the digests of a sample of the videos they read
(`VERIFY_SHARE`), and `mega3d data verify` (`data.verify`) checks every video.

A columnar index keeps the 1.65M videos of Kinetics-700 + Moments in Time at about 150 bytes each: it loads
in a second and merges without building one Python object per video.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import simplejpeg

from mega3d.trainer import storage
from mega3d.trainer.records import Record, RecordError

FORMAT = "mega3d-video/2"
INDEX_FILE = "index.npz"
SUBSETS = ("training", "validation", "testing")
DEFAULT_SHARD_BYTES = 256 << 20
JPEG_QUALITY = 90
DIGEST_BYTES = 16
KEY_EVERY = 16  # frames between key offsets: a 16-frame clip reads the bytes of 16 to 32 frames
# Readers check a sample of what they read against the digests: a read of a clip is, now and then, a read
# of its whole video, whose digest is checked, with a chance that keeps the bytes so checked at about
# VERIFY_SHARE of the bytes read for clips, whatever the videos' lengths (a long video is checked less
# often, at the same cost per byte). A video found damaged is never read again by that reader. Measured with
# bench/loader.py (local disk, short side 128, clips per CPU-second against no check, median of per-round
# ratios): checking every clip's whole video cost 11.2 % of loader throughput with 48-frame videos and
# 38.5 % with 240-frame ones, more than the 5 % allowed; a share of 0.5 cost 5.4 % and 8.0 %, and 0.25 costs
# 1.7 % and 2.5 %. Each video is read many times over a run's epochs, so a damaged one is still found and
# skipped as unreadable; `mega3d data verify` checks every video.
VERIFY_SHARE = 0.25

# Per-video columns of the index file and their types. Two are ragged, each with a `*_start` column one
# entry longer than there are videos: video i has the labels label[label_start[i]:label_start[i + 1]] (one,
# unless multi-label) and the key offsets key[key_start[i]:key_start[i + 1]] (frames 0, 16, 32, ...).
COLUMNS: dict[str, Any] = {
    "id": "S",  # UTF-8 bytes
    "label_start": np.int64,
    "label": np.int32,
    "key_start": np.int64,
    "key": np.uint32,  # byte offsets within the video
    "split": np.uint8,  # position in SUBSETS
    "shard": np.int32,
    "offset": np.int64,  # of the video in its shard
    "length": np.int64,  # its bytes
    "frames": np.int32,
    "height": np.int32,
    "width": np.int32,
    "fps": np.float32,
    "digest": np.uint8,  # (videos, 16): BLAKE2b of the video's bytes
}
RAGGED = {"label": "label_start", "key": "key_start"}


class DatasetError(ValueError):
    """A dataset that is missing, malformed, or would be overwritten."""


class CorruptVideo(DatasetError):
    """A video whose stored bytes cannot be decoded, or differ from those the index recorded."""


# ---- the index's header --------------------------------------------------------------------------------


class MergedSource(Record):
    """One dataset of a merge: its classes became `<name>/<class>`, numbered from `label_offset`."""

    name: str
    classes: int  # how many
    label_offset: int
    fingerprint: str
    uri: str | None = None  # where it was loaded from, when the merge was told


class SubsetOptions(Record):
    categories: float  # fraction of the classes kept
    instances: float  # fraction of each kept class's training videos
    seed: int


class SubsetSource(Record):
    """A subset of the index before it: the paper's data-amount study."""

    subset: SubsetOptions
    labels: list[int]  # each kept class's label in the index it was taken from
    uri: str | None = None  # where that index was loaded from, when the subset was told


class UnifiedClasses(Record):
    """Classes of a merge fused into one: `new name: [<dataset>/<class>, ...]`."""

    unify: dict[str, list[str]]


# No field says which kind a source is: each kind has required fields the others lack.
IndexSource = MergedSource | SubsetSource | UnifiedClasses


class UnreadableVideo(Record):
    """A video that could not be read when the dataset was made: reported, never dropped silently."""

    id: str
    error: str


class IndexHeader(Record):
    """The JSON header of an index file, beside its columns."""

    format: str = FORMAT
    classes: list[str]
    shards: list[str]  # a shard beside the index by file name, any other by URI
    multi_label: bool
    sources: list[IndexSource]  # where a merged or subset index came from, oldest first
    errors: list[UnreadableVideo]
    fingerprint: str


@dataclass(frozen=True)
class Video:
    """One video of an index, as plain values (for listing and tests; hot paths use the columns)."""

    id: str
    labels: tuple[int, ...]
    split: str
    frames: int
    height: int
    width: int
    fps: float
    shard: int
    offset: int
    length: int
    digest: str

    @property
    def label(self) -> int:
        return self.labels[0]


@dataclass(frozen=True, eq=False)
class DatasetIndex:
    """Label names, shard URIs and one numpy array per video field (`COLUMNS`)."""

    classes: list[str]
    shards: list[str]
    columns: dict[str, np.ndarray]
    multi_label: bool = False
    # Where a merged or subset index came from, with its label mapping.
    sources: list[IndexSource] = field(default_factory=list)
    errors: list[UnreadableVideo] = field(default_factory=list)
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", content_fingerprint(self))

    def __len__(self) -> int:
        return len(self.columns["id"])

    def rows(self, split: str) -> np.ndarray:
        """Row numbers of the videos in a split."""
        return np.flatnonzero(self.columns["split"] == SUBSETS.index(split))

    def labels_of(self, row: int) -> np.ndarray:
        start = self.columns["label_start"]
        return self.columns["label"][start[row] : start[row + 1]]

    def single_labels(self) -> np.ndarray:
        """Every video's label; only for a single-label dataset."""
        if self.multi_label:
            raise DatasetError("the dataset is multi-label: videos have several labels")
        return self.columns["label"]

    def multi_hot(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), classes) booleans: which labels each of the videos has."""
        start = self.columns["label_start"]
        counts = start[1:][rows] - start[:-1][rows]
        hot = np.zeros((len(rows), len(self.classes)), dtype=bool)
        positions = (
            np.repeat(start[:-1][rows], counts)
            + np.arange(int(counts.sum()))
            - np.repeat(np.cumsum(counts) - counts, counts)
        )
        hot[np.repeat(np.arange(len(rows)), counts), self.columns["label"][positions]] = True
        return hot

    def video(self, row: int) -> Video:
        c = self.columns
        return Video(
            id=c["id"][row].decode(),
            labels=tuple(int(label) for label in self.labels_of(row)),
            split=SUBSETS[c["split"][row]],
            frames=int(c["frames"][row]),
            height=int(c["height"][row]),
            width=int(c["width"][row]),
            fps=float(c["fps"][row]),
            shard=int(c["shard"][row]),
            offset=int(c["offset"][row]),
            length=int(c["length"][row]),
            digest=bytes(c["digest"][row]).hex(),
        )

    def videos(self, split: str | None = None) -> list[Video]:
        rows = range(len(self)) if split is None else self.rows(split)
        return [self.video(int(row)) for row in rows]

    def select(self, rows: np.ndarray, classes: list[str], relabel: np.ndarray) -> DatasetIndex:
        """The given rows, with labels mapped through `relabel` (old label -> new, -1 drops the label) onto
        `classes`; a video left with no label is dropped."""
        columns = take_rows(self.columns, rows)
        labels = relabel[columns["label"]]
        owner = np.repeat(np.arange(len(rows)), np.diff(columns["label_start"]))
        labelled = np.flatnonzero(np.bincount(owner[labels >= 0], minlength=len(rows)))
        columns = take_rows({**columns, "label": labels}, labelled, keep_label=labels >= 0)
        return replace(self, classes=classes, columns=columns, errors=[], fingerprint="")


def _ragged_take(values: np.ndarray, start: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of the given rows of a ragged column, and where each row's entries begin in them."""
    counts = start[1:][rows] - start[:-1][rows]
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    positions = np.repeat(start[:-1][rows] - (ends - counts), counts) + np.arange(total)
    return positions, np.concatenate([[0], ends]).astype(np.int64)


def take_rows(
    columns: dict[str, np.ndarray], rows: np.ndarray, keep_label: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The columns of the given rows, in that order; with `keep_label`, only the labels it marks."""
    taken = {
        name: values[rows] for name, values in columns.items() if name not in (*RAGGED, *RAGGED.values())
    }
    for name, start_name in RAGGED.items():
        positions, starts = _ragged_take(columns[name], columns[start_name], rows)
        if name == "label" and keep_label is not None:
            kept = keep_label[positions]
            counts = np.bincount(np.repeat(np.arange(len(rows)), np.diff(starts))[kept], minlength=len(rows))
            positions, starts = positions[kept], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        taken[name] = columns[name][positions].astype(COLUMNS[name])
        taken[start_name] = starts
    return taken


def concat_columns(
    parts: list[dict[str, np.ndarray]], label_offsets: list[int], shard_offsets: list[int]
) -> dict[str, np.ndarray]:
    """Columns of several indexes one after the other, their labels and shard numbers shifted."""
    pieces: dict[str, list[np.ndarray]] = {name: [] for name in parts[0]}
    bases = dict.fromkeys(RAGGED, 0)
    for columns, label_offset, shard_offset in zip(parts, label_offsets, shard_offsets, strict=True):
        for name, values in columns.items():
            if name == "label":
                values = values + label_offset
            elif name == "shard":
                values = values + shard_offset
            elif name in RAGGED.values():
                values = values[1:] + bases[name.removesuffix("_start")]
            pieces[name].append(values)
        for name in RAGGED:
            bases[name] += len(columns[name])
    joined = {name: np.concatenate(values) for name, values in pieces.items()}
    for name, start_name in RAGGED.items():
        joined[name] = joined[name].astype(COLUMNS[name])
        joined[start_name] = np.concatenate([[0], joined[start_name]]).astype(np.int64)
    joined["shard"] = joined["shard"].astype(np.int32)
    return joined


def content_fingerprint(index: DatasetIndex) -> str:
    """A hash of what training sees (classes, videos' ids, labels, splits and bytes), not of where the
    shards are: the same data copied elsewhere has the same fingerprint."""
    digest = hashlib.sha256(json.dumps([index.classes, index.multi_label]).encode())
    for name in ("id", "label_start", "label", "split", "digest"):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(index.columns[name]).tobytes())
    return digest.hexdigest()[:32]


def index_uri(dataset_uri: str) -> str:
    return storage.join(dataset_uri, INDEX_FILE)


def load_index(uri: str) -> DatasetIndex:
    """Load an index file, checked: DatasetError (one line naming the file and what is wrong) for a file
    that is not a whole index or whose columns do not describe readable videos. Shard names in it are
    resolved to absolute URIs."""
    if not storage.exists(uri):
        raise DatasetError(f"{uri}: no dataset index (create the dataset first, e.g. `mega3d data synth`)")
    try:
        with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as arrays:
            data = json.loads(arrays["header"].tobytes())
            columns = {name: arrays[name] for name in COLUMNS}
    # Damaged bytes surface as many kinds (BadZipFile, EOFError, NotImplementedError for a flipped
    # compression method, ValueError, KeyError, ...): all mean the file is not a whole index.
    except Exception as error:
        raise DatasetError(f"{uri}: not a mega3d dataset index ({type(error).__name__}: {error})") from None
    # The format decides how the rest is laid out: an index of another version is refused for that, before
    # its fields are looked at.
    if isinstance(data, dict) and data.get("format") != FORMAT:
        raise DatasetError(f"{uri}: format is {data.get('format')!r}, expected {FORMAT!r}")
    try:
        header = IndexHeader.parse(data, "header")
    except RecordError as error:
        raise DatasetError(f"{uri}: not a mega3d dataset index ({error})") from None
    problem = column_problem(columns, header)
    if problem is not None:
        raise DatasetError(f"{uri}: {problem}")
    base = storage.parent(storage.local_absolute(uri))
    return DatasetIndex(
        classes=header.classes,
        shards=[storage.resolve(base, shard) for shard in header.shards],
        columns=columns,
        multi_label=header.multi_label,
        sources=header.sources,
        errors=header.errors,
        fingerprint=header.fingerprint,
    )


def column_problem(columns: dict[str, np.ndarray], header: IndexHeader) -> str | None:
    """What is wrong with an index's columns, as a phrase naming the column (and the first video it is
    wrong for); None when every video can be read as the columns say. Checked once, when an index is loaded,
    so that readers (the loader, stats, merges) can trust them."""
    n = len(columns["id"])
    for name, kind in COLUMNS.items():
        values = columns[name]
        wanted = (n + 1,) if name in RAGGED.values() else (n, DIGEST_BYTES) if name == "digest" else (n,)
        if name not in RAGGED and values.shape != wanted:
            return f"column {name!r}: shape {values.shape}, expected {wanted}"
        if (values.dtype.kind != "S") if name == "id" else (values.dtype != np.dtype(kind)):
            return f"column {name!r}: type {values.dtype}, expected {np.dtype(kind)}"
    for name, start_name in RAGGED.items():
        start, values = columns[start_name], columns[name]
        if values.ndim != 1 or start[0] != 0 or start[-1] != len(values) or np.any(np.diff(start) < 0):
            return f"column {start_name!r}: does not say where each video's entries in {name!r} begin"
    label_count, key_count = np.diff(columns["label_start"]), np.diff(columns["key_start"])
    label_owner = np.repeat(np.arange(n), label_count)
    classes = len(header.classes)
    outside = (columns["label"] < 0) | (columns["label"] >= classes)
    # Per column: which videos are wrong, and what is wrong with them; in this order, as the later checks
    # rely on the earlier ones (the last key of a video exists once its key count is right).
    checks: list[tuple[str, Callable[[], np.ndarray], str]] = [
        ("label", lambda: label_count < 1, "has no label"),
        (
            "label",
            lambda: (label_count > 1) & (not header.multi_label),
            "has several labels in a single-label index",
        ),
        (
            "label",
            lambda: np.bincount(label_owner[outside], minlength=n) > 0,
            f"has a label outside the {classes} classes",
        ),
        ("split", lambda: columns["split"] >= len(SUBSETS), f"has a split outside {'/'.join(SUBSETS)}"),
        (
            "shard",
            lambda: (columns["shard"] < 0) | (columns["shard"] >= len(header.shards)),
            "names no listed shard",
        ),
        ("offset", lambda: columns["offset"] < 0, "begins before its shard"),
        ("length", lambda: columns["length"] < 1, "has no bytes"),
        ("frames", lambda: columns["frames"] < 1, "has no frames"),
        ("height", lambda: columns["height"] < 1, "has no rows of pixels"),
        ("width", lambda: columns["width"] < 1, "has no columns of pixels"),
        (
            "key",
            lambda: key_count != -(-columns["frames"] // KEY_EVERY),
            f"has not one key per {KEY_EVERY} frames",
        ),
        ("key", lambda: columns["key"][columns["key_start"][:-1]] != 0, "does not begin at its first frame"),
        # Per video rather than per key: an index of Kinetics + MiT holds some 30 million keys.
        (
            "key",
            lambda: columns["key"][columns["key_start"][1:] - 1] >= columns["length"],
            "has a key offset past its bytes",
        ),
    ]
    for name, wrong, what in checks:
        bad = wrong()
        if np.any(bad):
            video_id = columns["id"][int(np.flatnonzero(bad)[0])].decode(errors="replace")
            return f"column {name!r}: video {video_id!r} {what}"
    return None


def shard_problems(index: DatasetIndex) -> list[str]:
    """Shards of an index that are missing, or shorter than the videos the index places in them: one
    phrase per shard, naming it. One ranged read of one byte per shard (the last its videos need), so that
    a dataset is checked in a moment before training, whatever its size."""
    shard = index.columns["shard"]
    ends = index.columns["offset"] + index.columns["length"]
    needed = np.zeros(len(index.shards), dtype=np.int64)
    np.maximum.at(needed, shard, ends)
    problems = []
    for number in np.flatnonzero(needed):
        uri, need = index.shards[number], int(needed[number])
        videos = int(np.count_nonzero(shard == number))
        try:
            whole = len(storage.read_range(uri, need - 1, need)) == 1
        except FileNotFoundError:
            problems.append(f"{uri}: missing shard ({videos} videos are in it)")
            continue
        except Exception:  # some object stores answer a read past an object's end with an error status
            whole = False
        if not whole:
            problems.append(f"{uri}: short shard (shorter than the {need:,} bytes the index places in it)")
    return problems


def dataset_problems(dataset_uri: str) -> list[str]:
    """What keeps an existing dataset from being trained on: a damaged index, missing or short shards.
    One phrase each; none for a dataset whose index and shards are whole."""
    try:
        return shard_problems(load_index(index_uri(dataset_uri)))
    except DatasetError as error:
        return [str(error)]


def json_array(value: Any) -> np.ndarray:
    """A JSON value as a uint8 array, to keep beside numpy columns in one .npz file."""
    return np.frombuffer(json.dumps(value, sort_keys=True).encode(), dtype=np.uint8)


def save_index(uri: str, index: DatasetIndex) -> None:
    """Write an index in one piece; shards beside it are recorded by name, others by URI."""
    base = storage.parent(storage.local_absolute(uri))
    header = IndexHeader(
        classes=index.classes,
        shards=[
            posixpath.basename(shard) if storage.parent(shard) == base else shard for shard in index.shards
        ],
        multi_label=index.multi_label,
        sources=index.sources,
        errors=index.errors,
        fingerprint=index.fingerprint,
    )
    arrays: dict[str, Any] = {"header": json_array(header.to_json()), **index.columns}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    storage.write_bytes(uri, buffer.getvalue())


def merge(parts: list[tuple[str, DatasetIndex]], uris: Sequence[str] | None = None) -> DatasetIndex:
    """Concatenate label spaces (class names become `<dataset>/<class>`), sharing the shards. Dataset names
    must differ, and so must video ids: a video in two datasets would be trained and evaluated twice.
    `uris`, where the parts were loaded from, are recorded in the merge's sources."""
    names = [name for name, _ in parts]
    if len(set(names)) != len(names):
        raise DatasetError(f"two datasets are named {sorted(n for n in names if names.count(n) > 1)[0]!r}")
    classes: list[str] = []
    shards: list[str] = []
    sources: list[IndexSource] = []
    label_offsets, shard_offsets = [], []
    part_uris: Sequence[str | None] = [None] * len(parts) if uris is None else uris
    for (name, index), uri in zip(parts, part_uris, strict=True):
        label_offsets.append(len(classes))
        shard_offsets.append(len(shards))
        sources.append(
            MergedSource(
                name=name,
                classes=len(index.classes),
                label_offset=len(classes),
                fingerprint=index.fingerprint,
                uri=uri,
            )
        )
        classes += [f"{name}/{label}" for label in index.classes]
        shards += index.shards
    columns = concat_columns([index.columns for _, index in parts], label_offsets, shard_offsets)
    in_order = np.sort(columns["id"])
    if np.any(in_order[1:] == in_order[:-1]):
        raise DatasetError(f"video ids clash: {_clash(parts)}")
    return DatasetIndex(
        classes=classes,
        shards=shards,
        columns=columns,
        multi_label=any(index.multi_label for _, index in parts),
        sources=sources,
    )


def _clash(parts: list[tuple[str, DatasetIndex]]) -> str:
    seen: dict[bytes, str] = {}
    for name, index in parts:
        for video_id in index.columns["id"].tolist():
            if video_id in seen:
                return f"{video_id.decode()!r} is in {seen[video_id]} and in {name}"
            seen[video_id] = name
    return "?"


# ---- frames ---------------------------------------------------------------------------------------------


def encode_video(frames: list[bytes]) -> tuple[bytes, np.ndarray]:
    """A video's stored bytes (each JPEG frame behind its uint32 length), and its key offsets."""
    sizes = np.array([len(frame) for frame in frames], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes + 4)])[:-1]
    lengths = sizes.astype("<u4")
    data = b"".join(length.tobytes() + frame for length, frame in zip(lengths, frames, strict=True))
    return data, starts[::KEY_EVERY].astype(np.uint32)


def encode_jpeg(frame: np.ndarray) -> bytes:
    return bytes(
        simplejpeg.encode_jpeg(
            np.ascontiguousarray(frame), quality=JPEG_QUALITY, colorspace="RGB", colorsubsampling="420"
        )
    )


def video_digest(data: bytes | memoryview) -> bytes:
    """What the index's `digest` column holds for a video's stored bytes."""
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def decode_jpeg(data: bytes | memoryview, out: np.ndarray | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image; written into `out` when given (no copy)."""
    return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)


class ClipReader:
    """Reads runs of frames of an index's videos: one ranged read per clip. Shard handles are opened lazily
    in each process (DataLoader workers included), so their connections are reused. With `cache_dir`, a
    video's bytes are fetched whole on first use and kept on local disk, named by content hash (so any
    index that points at the same bytes shares them); what goes into the cache is checked against the
    video's digest. Reads check whole videos' digests for about `verify_share` of the bytes they read (0:
    none; math.inf: every read)."""

    def __init__(
        self, index: DatasetIndex, cache_dir: str | None = None, verify_share: float = VERIFY_SHARE
    ) -> None:
        self.index = index
        self.cache_dir = cache_dir
        self.verify_share = verify_share
        self._readers: dict[int, storage.RangeReader] = {}
        self._damaged: dict[int, str] = {}  # rows whose bytes were found not to match: what is wrong
        self._random_pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": {}}  # handles are per process: a worker opens its own

    def _chance(self) -> float:
        # Per process: forked DataLoader workers would otherwise all draw the same numbers.
        if self._random_pid != os.getpid():
            self._random, self._random_pid = random.Random(), os.getpid()
        return self._random.random()

    def frames(self, row: int, start: int, count: int) -> np.ndarray:
        """Frames [start, start + count) of a video (fewer at its end) as (T, H, W, 3) uint8."""
        c = self.index.columns
        n = int(c["frames"][row])
        stop = min(start + count, n)
        if not 0 <= start < stop:
            raise DatasetError(
                f"{c['id'][row].decode()}: frames [{start}, {start + count}) are outside its {n} frames"
            )
        if row in self._damaged:
            raise CorruptVideo(self._damaged[row])
        keys = c["key"][c["key_start"][row] : c["key_start"][row + 1]]
        first, after = start // KEY_EVERY, -(-stop // KEY_EVERY)
        begin = int(keys[first])
        end = int(keys[after]) if after < len(keys) else int(c["length"][row])
        payload = self._read(row, begin, end)
        clip = np.empty((stop - start, int(c["height"][row]), int(c["width"][row]), 3), dtype=np.uint8)
        try:
            position = 0
            for frame_number in range(first * KEY_EVERY, stop):
                size = int.from_bytes(payload[position : position + 4], "little")
                position += 4
                if position + size > len(payload):
                    raise ValueError(f"frame {frame_number} runs past the video's bytes")
                if frame_number >= start:
                    frame = decode_jpeg(payload[position : position + size], out=clip[frame_number - start])
                    if frame.shape != clip.shape[1:]:
                        raise ValueError(
                            f"frame {frame_number} is {frame.shape[1]}x{frame.shape[0]}, not as indexed"
                        )
                position += size
        except ValueError as error:  # simplejpeg raises ValueErrors for data it cannot decode
            raise CorruptVideo(f"{c['id'][row].decode()}: frames cannot be decoded ({error})") from None
        return clip

    def _read(self, row: int, start: int, end: int) -> memoryview:
        """Bytes [start, end) of a video."""
        c = self.index.columns
        length = int(c["length"][row])
        verify = self._chance() < self.verify_share * (end - start) / length
        if self.cache_dir is not None:
            path = os.path.join(self.cache_dir, f"{bytes(c['digest'][row]).hex()}.bin")
            if not os.path.exists(path):
                data = self._verified(row, self._shard_bytes(row, 0, length))
                storage.write_bytes(path, data)
                return memoryview(data)[start:end]
            with open(path, "rb") as cached:
                if verify:
                    return memoryview(self._verified(row, cached.read()))[start:end]
                cached.seek(start)
                return memoryview(cached.read(end - start))
        if verify:
            return memoryview(self._verified(row, self._shard_bytes(row, 0, length)))[start:end]
        return memoryview(self._shard_bytes(row, start, end))

    def _verified(self, row: int, data: bytes) -> bytes:
        """A video's whole bytes, once they are found to be those the index recorded."""
        c = self.index.columns
        length = int(c["length"][row])
        if len(data) != length:
            problem = f"{len(data):,} of its {length:,} bytes could be read (short shard)"
        elif video_digest(data) != bytes(c["digest"][row]):
            problem = "its bytes do not match the index's digest"
        else:
            return data
        self._damaged[row] = f"{c['id'][row].decode()}: {problem}"
        raise CorruptVideo(self._damaged[row])

    def _shard_bytes(self, row: int, start: int, end: int) -> bytes:
        c = self.index.columns
        shard = int(c["shard"][row])
        reader = self._readers.get(shard)
        if reader is None:
            reader = self._readers[shard] = storage.RangeReader(self.index.shards[shard])
        offset = int(c["offset"][row])
        return reader.read(offset + start, offset + end)
