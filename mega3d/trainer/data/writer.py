"""Writing datasets: shards of about `shard_bytes`, resumable; the index appears only when all is done.

While a dataset is being written, `<dataset>/ingest/` holds its plan (`IngestPlan`) and one manifest per
finished shard (`ShardManifest`, beside the columns of the videos in it). A run that is interrupted leaves
finished shards and their manifests; the next run with the same plan skips what they hold. `finish()`
gathers the manifests into the index (in the source's order, whatever order the workers finished in),
writes it, and removes the work files and any shard that no manifest claims (the remains of a crash).
"""

from __future__ import annotations

import io
import json
import posixpath
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from hashlib import blake2b
from typing import Any, Literal

import numpy as np

from mega3d.trainer import storage
from mega3d.trainer.data.format import (
    COLUMNS,
    DEFAULT_SHARD_BYTES,
    DIGEST_BYTES,
    SUBSETS,
    DatasetError,
    DatasetIndex,
    UnreadableVideo,
    concat_columns,
    encode_jpeg,
    encode_video,
    index_uri,
    json_array,
    save_index,
    take_rows,
)
from mega3d.trainer.records import Record

WORK_DIR = "ingest"
PLAN_FILE = "plan.json"
LOCK_FILE = "ingest.lock"  # beside the work folder: held from `start` to the end of `finish`
MANIFEST_COLUMNS = (*COLUMNS, "order")  # `order`: each video's place in the source


def work_dir(dataset_uri: str) -> str:
    return storage.join(dataset_uri, WORK_DIR)


# ---- the work files ------------------------------------------------------------------------------------


class SourcePlan(Record):
    """What `ingest` writes a source dataset with (`mega3d.trainer.data.ingest.plan_of`)."""

    kind: str
    root: str
    classes: list[str]
    videos: str  # SHA-256 of the listed videos
    short_side: int
    fps: float
    shard_bytes: int


class SingleWriterPlan(Record):
    """What a `DatasetWriter` writes: videos handed to one process, of which it knows only the classes."""

    classes: list[str]
    writer: Literal["single"] = "single"


IngestPlan = SourcePlan | SingleWriterPlan


def _read_plan(uri: str) -> IngestPlan:
    try:
        data = storage.read_json(uri)
        kind = SingleWriterPlan if isinstance(data, dict) and "writer" in data else SourcePlan
        return kind.parse(data, "plan")
    except ValueError as error:  # JSON that does not decode, or a RecordError
        raise DatasetError(
            f"{uri}: not an ingest plan ({error}); delete {storage.parent(uri)} to start over"
        ) from None


class UnreadableSourceVideo(UnreadableVideo):
    """An unreadable video as a shard manifest lists it: with its place in the source, so that the index
    lists such videos in the source's order."""

    order: int


class ShardManifest(Record):
    """The header of a shard's manifest, `ingest/<shard name>.npz`, beside the columns of its videos."""

    shard: str | None  # the shard's file name; None when no video of it could be read
    errors: list[UnreadableSourceVideo]

    def to_json(self) -> dict[str, Any]:
        # A manifest without a shard says so with null, as manifests always have: an ingest resumed by an
        # earlier version reads the key.
        data: dict[str, Any] = self.model_dump(mode="json")
        return data


def _read_manifest(uri: str) -> tuple[ShardManifest, dict[str, np.ndarray]]:
    try:
        with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as arrays:
            header = json.loads(arrays["header"].tobytes())
            columns = {name: arrays[name] for name in MANIFEST_COLUMNS}
        return ShardManifest.parse(header, "header"), columns
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:  # ValueError: a RecordError too
        raise DatasetError(
            f"{uri}: not a shard manifest ({error}); delete it to write its videos again"
        ) from None


# ---- writing -------------------------------------------------------------------------------------------


def jpeg_frames(frames: np.ndarray) -> list[bytes]:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or 0 in frames.shape:
        raise DatasetError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return [encode_jpeg(frame) for frame in frames]


class ShardWriter:
    """Appends videos to shards of one writer (one process); after each shard, its manifest."""

    def __init__(
        self, dataset_uri: str, n_classes: int, shard_bytes: int = DEFAULT_SHARD_BYTES, tag: str = ""
    ) -> None:
        """`tag` begins the names of this writer's shards and manifests (after `shard-`), so that a
        writer's successor can find its work among everyone's."""
        self.dataset_uri = dataset_uri
        self.n_classes = n_classes
        self.shard_bytes = shard_bytes
        self.prefix = f"shard-{tag}{uuid.uuid4().hex[:8]}"  # runs and workers never share a shard name
        self.written = 0
        self._reset()

    def _reset(self) -> None:
        self._payload: list[bytes] = []
        self._size = 0
        self._rows: dict[str, list[Any]] = {name: [] for name in MANIFEST_COLUMNS}
        self._errors: list[UnreadableSourceVideo] = []

    def add(
        self,
        order: int,
        video_id: str,
        labels: Sequence[int],
        split: str,
        frames: list[bytes],
        height: int,
        width: int,
        fps: float,
    ) -> None:
        """One video: `frames` as JPEG images of `height` x `width`; `order` is its place in the source."""
        if split not in SUBSETS:
            raise DatasetError(f"{video_id}: split must be one of {', '.join(SUBSETS)}, got {split!r}")
        if not labels or not all(0 <= label < self.n_classes for label in labels):
            raise DatasetError(
                f"{video_id}: labels {list(labels)} are not among the {self.n_classes} classes"
            )
        if not frames:
            raise DatasetError(f"{video_id}: no frames")
        data, keys = encode_video(frames)
        values = {
            "id": video_id.encode(),
            "label_start": len(labels),  # counts here; cumulated in the manifest
            "label": list(labels),
            "key_start": len(keys),
            "key": keys,
            "split": SUBSETS.index(split),
            "shard": 0,
            "offset": self._size,
            "length": len(data),
            "frames": len(frames),
            "height": height,
            "width": width,
            "fps": fps,
            "digest": np.frombuffer(blake2b(data, digest_size=DIGEST_BYTES).digest(), dtype=np.uint8),
            "order": order,
        }
        for name, value in values.items():
            self._rows[name].append(value)
        self._payload.append(data)
        self._size += len(data)
        if self._size >= self.shard_bytes:
            self.flush()

    def add_error(self, order: int, video_id: str, message: str) -> None:
        self._errors.append(UnreadableSourceVideo(order=order, id=video_id, error=message))

    def flush(self) -> None:
        """Write the pending shard, then its manifest (so a manifest always describes a whole shard)."""
        if not self._payload and not self._errors:
            return
        name = f"{self.prefix}-{self.written:05d}"
        shard = f"{name}.bin" if self._payload else None
        if shard is not None:
            storage.write_bytes(storage.join(self.dataset_uri, shard), b"".join(self._payload))
        rows = self._rows
        columns = {
            "id": np.array(rows["id"], dtype="S"),
            "label_start": np.concatenate([[0], np.cumsum(rows["label_start"], dtype=np.int64)]),
            "label": np.array([label for labels in rows["label"] for label in labels], dtype=np.int32),
            "key_start": np.concatenate([[0], np.cumsum(rows["key_start"], dtype=np.int64)]),
            "key": np.concatenate(rows["key"]) if rows["key"] else np.zeros(0, np.uint32),
            "digest": np.array(rows["digest"], dtype=np.uint8).reshape(-1, DIGEST_BYTES),
            "order": np.array(rows["order"], dtype=np.int64),
        }
        for column, kind in COLUMNS.items():
            if column not in columns:
                columns[column] = np.array(rows[column], dtype=kind)
        manifest = ShardManifest(shard=shard, errors=self._errors)
        arrays: dict[str, Any] = {"header": json_array(manifest.to_json()), **columns}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        storage.write_bytes(storage.join(work_dir(self.dataset_uri), f"{name}.npz"), buffer.getvalue())
        self.written += 1
        self._reset()


@contextmanager
def writing(dataset_uri: str, notice: Callable[[str], None] | None = None) -> Iterator[storage.Lock]:
    """Hold the dataset's writer lock for the block: one writer per dataset, whatever the host. Another
    live writer's lock is a DatasetError naming it; a dead one's is taken over (said through `notice`)."""
    existed = storage.exists(dataset_uri)
    try:
        with storage.exclusive(storage.join(dataset_uri, LOCK_FILE), notice) as lock:
            yield lock
    except storage.Locked as error:
        raise DatasetError(f"{dataset_uri}: {error}") from None
    finally:
        # A refused or failed first write leaves no empty folder behind (the lock made it).
        if not existed and not storage.list_dir(dataset_uri):
            storage.remove(dataset_uri)


def start(dataset_uri: str, plan: IngestPlan, resume: bool = True) -> set[str]:
    """Begin or resume writing a dataset: the ids already written (or found unreadable) by an earlier run
    with the same plan. Refuses a finished dataset, and unfinished work of another plan that has written
    shards. Leftovers that hold no video (a failed command's plan, manifests of unreadable videos only)
    never block: they are cleared, as is an earlier single writer's work when `resume` is false (a writer
    that cannot skip what is done would write it twice). Call it holding `writing`'s lock."""
    if storage.exists(index_uri(dataset_uri)):
        raise DatasetError(f"{dataset_uri}: a dataset already exists there; choose another URI")
    plan_uri = storage.join(work_dir(dataset_uri), PLAN_FILE)
    manifests = []
    if storage.exists(plan_uri):
        earlier = _read_plan(plan_uri)
        manifests = _manifests(dataset_uri)
        written = any(manifest.shard is not None for manifest, _ in manifests)
        restart = not resume and isinstance(earlier, SingleWriterPlan)
        if written and earlier != plan and not restart:
            raise DatasetError(
                f"{dataset_uri}: an unfinished dataset of other videos or options is there "
                f"({plan_uri}); choose another URI, or delete {work_dir(dataset_uri)} to start over"
            )
        if not written or restart:
            discard(dataset_uri)
            manifests = []
    if not manifests:
        plan.write(plan_uri)
    return {video_id for manifest in manifests for video_id in _ids(manifest)}


def unfinished_plan(dataset_uri: str) -> IngestPlan | None:
    """The plan of the work in progress there, if any (read without the writer's lock)."""
    plan_uri = storage.join(work_dir(dataset_uri), PLAN_FILE)
    return _read_plan(plan_uri) if storage.exists(plan_uri) else None


def manifest_uris(dataset_uri: str) -> list[str]:
    """The manifests of the shards finished so far."""
    return [uri for uri in storage.list_dir(work_dir(dataset_uri)) if uri.endswith(".npz")]


def manifest_ids(manifest_uri: str) -> list[str]:
    """The ids of the videos a manifest holds: those written, then those found unreadable."""
    return _ids(_read_manifest(manifest_uri))


def _ids(manifest: tuple[ShardManifest, dict[str, np.ndarray]]) -> list[str]:
    header, columns = manifest
    return [video_id.decode() for video_id in columns["id"].tolist()] + [error.id for error in header.errors]


def discard(dataset_uri: str) -> None:
    """Remove unfinished work: the work folder and every shard (no index refers to them yet)."""
    for uri in storage.list_dir(dataset_uri):
        if posixpath.basename(uri).startswith("shard-"):
            storage.remove(uri)
    storage.remove(work_dir(dataset_uri))


def _manifests(dataset_uri: str) -> list[tuple[ShardManifest, dict[str, np.ndarray]]]:
    return [_read_manifest(uri) for uri in manifest_uris(dataset_uri)]


def finish(dataset_uri: str, classes: list[str], multi_label: bool = False) -> DatasetIndex:
    """Build and write the index from the manifests, then tidy up."""
    manifests = _manifests(dataset_uri)
    shards = [manifest.shard for manifest, _ in manifests if manifest.shard is not None]
    parts = [
        {**columns, "shard": np.full(len(columns["id"]), shards.index(manifest.shard), np.int32)}
        if manifest.shard is not None
        else columns
        for manifest, columns in manifests
    ]
    errors = sorted(
        (error for manifest, _ in manifests for error in manifest.errors), key=lambda error: error.order
    )
    if sum(len(columns["id"]) for columns in parts) == 0:
        # Nothing worth resuming: a corrected run (the same command after fixing the files) starts over.
        discard(dataset_uri)
        reason = f" ({errors[0].error})" if errors else ""
        raise DatasetError(f"{dataset_uri}: no video could be read{reason}")
    columns = concat_columns(parts, [0] * len(parts), [0] * len(parts))
    columns = take_rows(columns, np.argsort(columns.pop("order"), kind="stable"))
    index = DatasetIndex(
        classes=classes,
        shards=[storage.join(storage.local_absolute(dataset_uri), shard) for shard in shards],
        columns=columns,
        multi_label=multi_label,
        errors=[UnreadableVideo(id=error.id, error=error.error) for error in errors],
    )
    save_index(index_uri(dataset_uri), index)
    for uri in storage.list_dir(dataset_uri):
        name = posixpath.basename(uri)
        if name.startswith("shard-") and name not in shards:
            storage.remove(uri)
    storage.remove(work_dir(dataset_uri))
    return index


class DatasetWriter:
    """Writes a whole dataset from one process: videos in, index out (synthetic data, small sources)."""

    def __init__(self, dataset_uri: str, classes: list[str], shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        start(dataset_uri, SingleWriterPlan(classes=classes), resume=False)
        self.classes = classes
        self.dataset_uri = dataset_uri
        self.shards = ShardWriter(dataset_uri, len(classes), shard_bytes)
        self.count = 0

    def add(self, video_id: str, label: int, split: str, frames: np.ndarray, fps: float = 25.0) -> None:
        jpegs = jpeg_frames(frames)
        self.shards.add(self.count, video_id, [label], split, jpegs, frames.shape[1], frames.shape[2], fps)
        self.count += 1

    def close(self) -> DatasetIndex:
        self.shards.flush()
        return finish(self.dataset_uri, self.classes)
