"""mega3d's dataset format, version 1: large shard objects plus one JSON index with byte ranges.

    <dataset>/index.json        {"format", "classes", "shards", "videos": [...]}
    <dataset>/shard-00000.bin   videos back to back; one video = frames x height x width x 3 uint8

A clip is one ranged read of one shard, so object stores are read in large sequential pieces rather than
one request per frame. A merge is a new index that points at the existing shards: nothing is copied.
The index is written last, so a dataset without an index is incomplete and is never read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from trainer import storage

FORMAT = "mega3d-video/1"
INDEX_FILE = "index.json"
SUBSETS = ("training", "validation", "testing")


class DatasetError(ValueError):
    """A dataset that is missing, malformed, or would be overwritten."""


@dataclass(frozen=True)
class VideoEntry:
    id: str
    label: int
    subset: str
    shard: int
    offset: int
    length: int
    frames: int
    height: int
    width: int
    fps: float = 25.0


@dataclass(frozen=True)
class DatasetIndex:
    classes: list[str]
    shards: list[str]
    videos: list[VideoEntry]
    # Where a merged or subset index came from, with its label mapping.
    sources: list[dict[str, Any]] = field(default_factory=list)
    # Videos that could not be read when the dataset was made, as {"id", "error"}: reported, never dropped.
    errors: list[dict[str, str]] = field(default_factory=list)

    def subset(self, name: str) -> list[VideoEntry]:
        return [video for video in self.videos if video.subset == name]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "classes": self.classes,
            "shards": self.shards,
            "videos": [asdict(video) for video in self.videos],
            "sources": self.sources,
            "errors": self.errors,
        }


def index_uri(dataset_uri: str) -> str:
    return storage.join(dataset_uri, INDEX_FILE)


def load_index(uri: str) -> DatasetIndex:
    """Load an index file; shard names in it are resolved to absolute URIs."""
    if not storage.exists(uri):
        raise DatasetError(f"{uri}: no dataset index (create the dataset first, e.g. `mega3d data synth`)")
    data = storage.read_json(uri)
    if data.get("format") != FORMAT:
        raise DatasetError(f"{uri}: format is {data.get('format')!r}, expected {FORMAT!r}")
    base = storage.parent(storage.local_absolute(uri))
    return DatasetIndex(
        classes=list(data["classes"]),
        shards=[storage.resolve(base, shard) for shard in data["shards"]],
        videos=[VideoEntry(**video) for video in data["videos"]],
        sources=list(data.get("sources", [])),
        errors=list(data.get("errors", [])),
    )


def save_index(uri: str, index: DatasetIndex) -> None:
    storage.write_json(uri, index.to_json())


def read_frames(index: DatasetIndex, video: VideoEntry, start: int, count: int) -> np.ndarray:
    """Frames [start, start + count) of a video (fewer at its end) as (T, H, W, 3) uint8: one ranged read."""
    frame_bytes = video.height * video.width * 3
    stop = min(start + count, video.frames)
    if not 0 <= start < stop:
        raise DatasetError(
            f"{video.id}: frames [{start}, {start + count}) are outside its {video.frames} frames"
        )
    begin = video.offset + start * frame_bytes
    payload = storage.read_range(index.shards[video.shard], begin, video.offset + stop * frame_bytes)
    return np.frombuffer(payload, dtype=np.uint8).reshape(stop - start, video.height, video.width, 3)


def merge(parts: list[tuple[str, DatasetIndex]]) -> DatasetIndex:
    """Concatenate label spaces (class names become `<dataset>/<class>`), sharing the shards. Dataset names
    must differ: they keep the video ids apart."""
    names = [name for name, _ in parts]
    if len(set(names)) != len(names):
        raise DatasetError(f"two datasets are named {sorted(n for n in names if names.count(n) > 1)[0]!r}")
    classes: list[str] = []
    shards: list[str] = []
    videos: list[VideoEntry] = []
    sources: list[dict[str, Any]] = []
    for name, index in parts:
        label_offset, shard_offset = len(classes), len(shards)
        sources.append({"name": name, "classes": len(index.classes), "label_offset": label_offset})
        classes += [f"{name}/{label}" for label in index.classes]
        shards += index.shards
        videos += [
            replace(
                video,
                id=f"{name}/{video.id}",
                label=video.label + label_offset,
                shard=video.shard + shard_offset,
            )
            for video in index.videos
        ]
    return DatasetIndex(classes=classes, shards=shards, videos=videos, sources=sources)


class DatasetWriter:
    """Appends videos into shards of about `shard_bytes`, then writes the index last."""

    def __init__(self, dataset_uri: str, classes: list[str], shard_bytes: int = 64 << 20) -> None:
        if storage.exists(index_uri(dataset_uri)):
            raise DatasetError(f"{dataset_uri}: a dataset already exists there; choose another URI")
        self.dataset_uri = dataset_uri
        self.classes = classes
        self.shard_bytes = shard_bytes
        self.shards: list[str] = []
        self.videos: list[VideoEntry] = []
        self._pending: list[bytes] = []
        self._pending_size = 0

    def add(self, video_id: str, label: int, subset: str, frames: np.ndarray, fps: float = 25.0) -> None:
        if subset not in SUBSETS:
            raise DatasetError(f"subset must be one of {SUBSETS}, got {subset!r}")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or 0 in frames.shape:
            raise DatasetError(
                f"{video_id}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        if not 0 <= label < len(self.classes):
            raise DatasetError(f"{video_id}: label {label} is not one of the {len(self.classes)} classes")
        payload = np.ascontiguousarray(frames).tobytes()
        t, h, w, _ = frames.shape
        self.videos.append(
            VideoEntry(
                video_id, label, subset, len(self.shards), self._pending_size, len(payload), t, h, w, fps
            )
        )
        self._pending.append(payload)
        self._pending_size += len(payload)
        if self._pending_size >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"shard-{len(self.shards):05d}.bin"
        storage.write_bytes(storage.join(self.dataset_uri, name), b"".join(self._pending))
        self.shards.append(name)
        self._pending, self._pending_size = [], 0

    def close(self, errors: list[dict[str, str]] | None = None) -> DatasetIndex:
        self._flush()
        index = DatasetIndex(
            classes=self.classes, shards=self.shards, videos=self.videos, errors=errors or []
        )
        save_index(index_uri(self.dataset_uri), index)
        return index
