"""Bring existing datasets into mega3d's format (torch-free), in parallel and resumably.

Sources, each read into one list of `SourceVideo`s:
  reference-jpg   3D-ResNets-PyTorch frame folders `root/<label>/<video_id>/image_%05d.jpg` (from 1) and
                  its annotation JSON (`{"labels": [...], "database": {id: {"subset", "annotations":
                  {"label", "segment": [begin, end)}}}}`)
  reference-hdf5  `root/<label>/<video_id>.hdf5`, dataset `video` = one JPEG per frame (from 0), same JSON
and video files (mp4, avi, webm, mkv; decoded with PyAV) listed by
  csv             `path,label[,split]` lines, paths relative to the source root; `a|b` labels: multi-label
  ucf101          `classInd.txt`, `trainlistNN.txt` and `testlistNN.txt` (test videos become validation)
  hmdb51          `<action>_test_splitN.txt` files: 1 training, 2 validation, 0 unused
  kinetics        CSVs of label, youtube_id, time_start, time_end[, split] (train / val / test)
  hvu             HVU's CSVs of Tags (`a|b|c`), youtube_id, time_start, time_end: multi-label
  activitynet     its JSON: each annotated segment becomes a trimmed clip

Frames are stored as JPEG at most `short_side` pixels on the short side. A source JPEG that is small enough
already is checked (decoded once) and stored as it is, bit for bit. A video that cannot be read is listed
in the index's `errors` and in the summary, never dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import queue
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from mega3d.trainer import storage
from mega3d.trainer.data.format import DEFAULT_SHARD_BYTES, SUBSETS, DatasetError, DatasetIndex, encode_jpeg
from mega3d.trainer.data.writer import ShardWriter, SourcePlan, finish, start, writing
from mega3d.trainer.lifetime import end_with_parent

# What reading a missing or broken video raises (PyAV's errors are OSErrors or ValueErrors; h5py's missing
# dataset a KeyError; a file without a video stream an IndexError).
UNREADABLE = (OSError, ValueError, KeyError, IndexError, SyntaxError)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SourceVideo:
    """A video (or a trimmed part of one) as a source dataset names it."""

    id: str
    labels: tuple[str, ...]
    split: str
    path: str  # under the source root
    frames: tuple[int, int] | None = None  # [begin, end) frame numbers (reference layouts)
    seconds: tuple[float, float] | None = None  # [start, end) of a video file
    row: str = field(default="", compare=False)  # where the annotations list it, for messages


# Where a source's files are: a local folder, or a storage URI (gs://bucket/videos) of a folder whose video
# files are read through the storage facade.
Root = Path | str


@dataclass(frozen=True)
class Source:
    kind: str  # how videos are stored: "frames" (JPEG folders), "hdf5" or "video" (files)
    root: Root  # a URI for video files only: frame folders and HDF5 files are read from local folders
    labels: list[str]
    videos: list[SourceVideo]
    unlabelled: int = 0  # videos the annotations list without a label (the reference's testing split)


# ---- reading annotations -------------------------------------------------------------------------------


def _read_text(path: Path, what: str) -> str:
    if path.is_dir():
        raise DatasetError(f"{path}: a folder, not the {what}")
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise DatasetError(f"{path}: not a regular file, so not the {what}")
    try:
        return path.read_text()
    except FileNotFoundError:
        raise DatasetError(f"{path}: cannot read the {what} (no such file)") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: cannot read the {what} (not UTF-8 text)") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the {what} ({error.strerror or error})") from None


def _check_split(split: object, where: str) -> str:
    if split not in SUBSETS:
        raise DatasetError(f"{where}: {split!r} is not one of {', '.join(SUBSETS)}")
    return str(split)


def read_reference(kind: str, root: Path, path: Path) -> Source:
    """The reference's annotation JSON, for its jpg (`kind` "frames") or hdf5 layout."""
    try:
        data = json.loads(_read_text(path, "annotation file"))
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path}: not JSON, so not a reference annotation file (line {error.lineno} column {error.colno})"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list) or "database" not in data:
        raise DatasetError(f"{path}: expected {{'labels': [...], 'database': {{...}}}}")
    labels = [str(label) for label in data["labels"]]
    if not isinstance(data["database"], dict):
        raise DatasetError(f"{path}: database: expected {{video id: {{...}}}}")
    videos, unlabelled = [], 0
    for video_id, entry in data["database"].items():
        where = f"{path}: database.{video_id}"
        annotation = entry.get("annotations") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(annotation or {}, dict):
            raise DatasetError(f"{where}: expected {{'subset': ..., 'annotations': {{'label': ...}}}}")
        split = _check_split(entry.get("subset"), f"{where}.subset")
        annotation = annotation or {}
        if "label" not in annotation:  # the reference's testing videos carry no label
            unlabelled += 1
            continue
        label = annotation["label"]
        if label not in labels:
            raise DatasetError(f"{where}.annotations.label: {label!r} is not in labels")
        segment = annotation.get("segment")
        location = f"{label}/{video_id}" + (".hdf5" if kind == "hdf5" else "")
        frames = (int(segment[0]), int(segment[1])) if segment else None
        videos.append(SourceVideo(video_id, (label,), split, location, frames=frames, row=where))
    return Source(kind, root, labels, videos, unlabelled)


def read_video_list(root: Root, path: Path) -> Source:
    """A CSV of `path,label[,split]`, a header line optional; `a|b` gives a video several labels."""
    text = _read_text(path, "video list")
    if text.lstrip().startswith("{"):
        raise DatasetError(f"{path}: JSON, not a video list of path,label[,split]")
    rows = list(csv.reader(text.splitlines()))
    videos = []
    for number, row in enumerate(rows, 1):
        if not row or (number == 1 and row[:2] == ["path", "label"]):
            continue
        if len(row) not in (2, 3):
            raise DatasetError(f"{path}: line {number}: expected path,label[,split], got {len(row)} fields")
        split = _check_split(row[2] if len(row) == 3 else "training", f"{path}: line {number}: split")
        where = f"{path}: line {number}"
        videos.append(SourceVideo(row[0], tuple(row[1].split("|")), split, row[0], row=where))
    return Source("video", root, _labels_of(videos), videos)


def _labels_of(videos: list[SourceVideo]) -> list[str]:
    return sorted({label for video in videos for label in video.labels})


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """The words of each line that has any, with its line number."""
    lines = enumerate(_read_text(path, "split list").splitlines(), 1)
    return [(number, line.split()) for number, line in lines if line.strip()]


def read_ucf101(root: Root, lists: Path, split: int) -> Source:
    """UCF-101's own split lists; labels in classInd.txt order."""
    labels = [fields[-1] for _, fields in _lines(lists / "classInd.txt")]
    videos = []
    for name, subset in (
        (f"trainlist{split:02d}.txt", "training"),
        (f"testlist{split:02d}.txt", "validation"),
    ):
        for number, fields in _lines(lists / name):
            label = fields[0].split("/")[0]
            if label not in labels:
                raise DatasetError(f"{lists / name}: {fields[0]}: class {label!r} is not in classInd.txt")
            where = f"{lists / name}: line {number}"
            videos.append(SourceVideo(fields[0], (label,), subset, fields[0], row=where))
    return Source("video", root, labels, videos)


def read_hmdb51(root: Root, splits: Path, split: int) -> Source:
    """HMDB-51's `<action>_test_split<N>.txt` files; videos at `<action>/<video>`; labels sorted by name."""
    files = sorted(splits.glob(f"*_test_split{split}.txt"))
    if not files:
        raise DatasetError(f"{splits}: no *_test_split{split}.txt files")
    labels = [path.name.removesuffix(f"_test_split{split}.txt") for path in files]
    videos = []
    for label, path in zip(labels, files, strict=True):
        for number, fields in _lines(path):
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise DatasetError(
                    f"{path}: line {number}: expected a video and 0 (unused), 1 (training) or 2 (testing)"
                )
            video, use = fields
            if use != "0":
                subset = "training" if use == "1" else "validation"
                where = f"{path}: line {number}"
                videos.append(
                    SourceVideo(f"{label}/{video}", (label,), subset, f"{label}/{video}", row=where)
                )
    return Source("video", root, labels, videos)


CSV_SPLITS = {"train": "training", "val": "validation", "validate": "validation", "test": "testing"}
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi")


def _find_video(root: Path, candidates: list[str]) -> str:
    """The first candidate (a path without suffix) found with a video suffix; else the first, as .mp4."""
    for candidate in candidates:
        for suffix in VIDEO_SUFFIXES:
            if (root / f"{candidate}{suffix}").exists():
                return f"{candidate}{suffix}"
    return f"{candidates[0]}.mp4"


def _split_of_file(path: Path) -> str:
    """The split a CSV without a split column holds, from its name (train.csv, validate.csv, ...)."""
    for word, split in CSV_SPLITS.items():
        if word in path.stem.lower():
            return split
    return "training"


def read_youtube_clips(root: Path, paths: Sequence[Path], multi_label: bool) -> Source:
    """Kinetics CSVs (label, youtube_id, time_start, time_end[, split]), or HVU's (Tags `a|b|c` instead of
    label). Files are named as the usual download scripts save them, already trimmed:
    `[<label>/]<youtube_id>_<start:06d>_<end:06d>.<mp4|webm|mkv>`. Without a split column, a file's split
    comes from its name (train / val / test), else training."""
    label_column = "Tags" if multi_label else "label"
    required = {label_column, "youtube_id", "time_start", "time_end"}
    videos = []
    for path in paths:
        rows = list(csv.DictReader(_read_text(path, "CSV").splitlines()))
        if not rows or not required <= set(rows[0]):
            raise DatasetError(f"{path}: expected a header with {', '.join(sorted(required))}[, split]")
        for number, row in enumerate(rows, 2):
            split = CSV_SPLITS.get(row.get("split") or "", "") or (
                None if row.get("split") else _split_of_file(path)
            )
            if split is None:
                raise DatasetError(f"{path}: line {number}: split {row['split']!r} is not train, val or test")
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                raise DatasetError(
                    f"{path}: line {number}: time_start and time_end must be numbers"
                ) from None
            name = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            labels = tuple(row[label_column].split("|"))
            found = _find_video(root, [f"{labels[0]}/{name}", name])
            videos.append(SourceVideo(name, labels, split, found, row=f"{path}: line {number}"))
    return Source("video", root, _labels_of(videos), videos)


def read_activitynet(root: Path, path: Path) -> Source:
    """An ActivityNet JSON: every annotated segment becomes a trimmed clip `<video id>_<n>` of the video file
    `v_<id>` (or `<id>`); unannotated (testing) videos are skipped."""
    try:
        database = json.loads(_read_text(path, "ActivityNet JSON"))["database"]
        if not isinstance(database, dict):
            raise TypeError("database is not an object")
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path}: not JSON, so not an ActivityNet file (line {error.lineno} column {error.colno})"
        ) from None
    except (KeyError, TypeError):
        raise DatasetError(f"{path}: expected an ActivityNet JSON with a database of videos") from None
    videos = []
    for video_id, entry in database.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("annotations") or [], list):
            raise DatasetError(
                f"{path}: database.{video_id}: expected {{'subset': ..., 'annotations': [...]}}"
            )
        split = _check_split(entry.get("subset"), f"{path}: database.{video_id}.subset")
        found = _find_video(root, [f"v_{video_id}", video_id])
        for n, annotation in enumerate(entry.get("annotations") or []):
            where = f"{path}: database.{video_id}.annotations[{n}]"
            try:
                begin, end = (float(t) for t in annotation["segment"])
                label = str(annotation["label"])
            except (KeyError, TypeError, ValueError):  # not an object, no such key, not two numbers
                raise DatasetError(
                    f"{where}: expected a label and a segment [start, end] in seconds"
                ) from None
            videos.append(
                SourceVideo(f"{video_id}_{n}", (label,), split, found, seconds=(begin, end), row=where)
            )
    return Source("video", root, _labels_of(videos), videos)


FORMATS_OF_JSON = {
    "reference": ("reference-jpg", "reference-hdf5"),
    "activitynet": ("activitynet",),
}
SNIFF_BYTES = 1 << 16


def formats_that_fit(path: Path) -> tuple[str, tuple[str, ...]]:
    """What an annotation file (or folder) looks like, and the --format values that read such files; no
    formats when it is not recognised. Only the first 64 KiB of a file are looked at (JSON whole)."""
    if path.is_dir():
        if (path / "classInd.txt").is_file():
            return "UCF-101's split lists", ("ucf101",)
        if next(path.glob("*_test_split[123].txt"), None) is not None:
            return "HMDB-51's split files", ("hmdb51",)
        return "a folder", ()
    if not path.is_file():
        return "", ()
    with path.open("rb") as file:
        head = file.read(SNIFF_BYTES).decode("utf-8", errors="replace")
    if head.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(_read_text(path, "annotation file"))
        except (json.JSONDecodeError, DatasetError):
            return "broken JSON", ()
        if isinstance(data, dict) and "labels" in data and "database" in data:
            return "a reference annotation JSON", FORMATS_OF_JSON["reference"]
        if isinstance(data, dict) and "database" in data:
            return "an ActivityNet JSON", FORMATS_OF_JSON["activitynet"]
        return "JSON of another kind", ()
    lines = [line for line in head.splitlines()[:20] if line.strip()]
    rows = list(csv.reader(lines))
    header = set(rows[0]) if rows else set()
    if {"youtube_id", "time_start", "time_end"} <= header:
        return ("HVU's CSV", ("hvu",)) if "Tags" in header else ("a Kinetics CSV", ("kinetics",))
    if rows and all(len(row) in (2, 3) for row in rows):
        return "a CSV list of path,label[,split]", ("csv",)
    if lines and all(1 <= len(line.split()) <= 2 for line in lines):
        return "a UCF-101 or HMDB-51 split list", ("ucf101", "hmdb51")
    return "", ()


def format_hint(annotations: Sequence[Path], chosen: str) -> str:
    """For a message about annotations that `chosen` cannot read: which formats fit them, if others do."""
    if not annotations:
        return ""
    looks, formats = formats_that_fit(annotations[0])
    if not formats or chosen in formats:
        return ""
    if formats == ("ucf101", "hmdb51"):
        return f"; it looks like {looks}: give --annotations its folder with --format ucf101 or hmdb51"
    return f"; it looks like {looks}: use --format {' or '.join(formats)}"


# ---- reading frames ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frames:
    jpegs: list[bytes]
    height: int
    width: int
    fps: float | None  # None: the source does not say


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled down to `short_side`; unchanged when the short side is that small already."""
    scale = short_side / min(width, height)
    if scale >= 1:
        return width, height
    return round(width * scale), round(height * scale)


def scaled_to_short_side(image: Image.Image, short_side: int) -> Image.Image:
    size = scaled_size(image.width, image.height, short_side)
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


def frame_pixels(frame: Any, short_side: int) -> np.ndarray:
    """A decoded video frame (PyAV) as RGB pixels scaled down to `short_side`: converted and scaled in one
    pass by FFmpeg's swscale, bilinear (a PIL image first, then PIL's resize, costs about twice as much).
    Ingest and predict both use it: a model sees frames as they were stored for training."""
    width, height = scaled_size(frame.width, frame.height, short_side)
    pixels: np.ndarray = frame.to_ndarray(
        width=width, height=height, format="rgb24", interpolation="BILINEAR"
    )
    return pixels


def _stored_jpeg(data: bytes, short_side: int, where: str) -> tuple[bytes, tuple[int, int]]:
    """A source JPEG as stored: as it is when it is an RGB image small enough (checked by decoding it),
    else decoded, scaled down and encoded again. Returns the bytes and (width, height)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format == "JPEG" and image.mode == "RGB" and min(image.size) <= short_side:
                return data, image.size
            scaled = scaled_to_short_side(image.convert("RGB"), short_side)
    except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for data it cannot decode
        raise DatasetError(f"{where}: not a readable image ({type(error).__name__})") from None
    return encode_jpeg(np.asarray(scaled)), scaled.size


def _from_jpegs(encoded: Sequence[tuple[str, bytes]], short_side: int, where: str) -> Frames:
    """Frames from (name, JPEG bytes) pairs."""
    if not encoded:
        raise DatasetError(f"no frames in {where}")
    stored = [_stored_jpeg(data, short_side, name) for name, data in encoded]
    sizes = {size for _, size in stored}
    if len(sizes) > 1:
        raise DatasetError(f"{where}: frames of different sizes {sorted(sizes)}")
    ((width, height),) = sizes
    return Frames([data for data, _ in stored], height, width, None)


def _kind_of(mode: int) -> str:
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "of an unknown kind"


def _regular_file(path: Path) -> None:
    """Opening a FIFO or a device would block or never end: only regular files are read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    if not stat.S_ISREG(mode):
        raise DatasetError(f"{path}: {_kind_of(mode)}, not a regular file")


def load_frame_folder(path: Path, video: SourceVideo, short_side: int) -> Frames:
    """reference-jpg: image_00001.jpg ... of one video."""
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder of frames")
    if video.frames is None:
        numbers = sorted(int(p.stem.removeprefix("image_")) for p in path.glob("image_*.jpg"))
    else:
        numbers = list(range(*video.frames))
    files = [path / f"image_{n:05d}.jpg" for n in numbers]
    for file in files:
        _regular_file(file)
    return _from_jpegs([(str(file), file.read_bytes()) for file in files], short_side, str(path))


def load_hdf5_video(path: Path, video: SourceVideo, short_side: int) -> Frames:
    """reference-hdf5: dataset `video` of one JPEG per frame."""
    import h5py

    _regular_file(path)
    try:
        video_file = h5py.File(path, "r")
    except OSError:
        raise DatasetError(f"{path}: not an HDF5 file") from None
    with video_file:
        if "video" not in video_file:
            raise DatasetError(f"{path}: no dataset 'video' in it")
        encoded = video_file["video"]
        numbers = range(*video.frames) if video.frames is not None else range(len(encoded))
        if numbers and (numbers[0] < 0 or numbers[-1] >= len(encoded)):
            raise DatasetError(
                f"{path}: the annotation's segment asks for frames {numbers[0]} to {numbers[-1]}, "
                f"the file holds {len(encoded)} (0 to {len(encoded) - 1})"
            )
        frames = [(f"{path} frame {n}", bytes(encoded[n])) for n in numbers]
        return _from_jpegs(frames, short_side, str(path))


def load_video_file(path: Path | str, video: SourceVideo, short_side: int) -> Frames:
    """A video file decoded by PyAV: every frame, or those shown within `video.seconds`. A storage URI is
    read whole, in one request: decoding reads all of it, and each request costs tens of milliseconds."""
    import av

    opened: str | io.BytesIO
    if isinstance(path, str):
        opened = io.BytesIO(storage.read_bytes(path))
    else:
        _regular_file(path)
        opened = str(path)
    seconds = video.seconds
    try:
        container = av.open(opened, "r")
    except av.error.InvalidDataError:
        raise DatasetError(f"{path}: not a video file FFmpeg can read (its data is invalid)") from None
    except av.error.FFmpegError as error:
        raise DatasetError(f"{path}: FFmpeg cannot open it ({error.strerror})") from None
    with container:
        if not container.streams.video:
            raise DatasetError(f"{path}: no video stream in it (audio only?)")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        images = [
            frame_pixels(frame, short_side)
            for frame in container.decode(stream)
            if seconds is None or (frame.time is not None and seconds[0] <= frame.time < seconds[1])
        ]
    if not images:
        raise DatasetError(
            f"no frames in {path}" + (f" within {seconds[0]}-{seconds[1]} s" if seconds else "")
        )
    height, width = images[0].shape[:2]
    return Frames([encode_jpeg(image) for image in images], height, width, fps)


# Each takes a Path; load_video_file a storage URI too (check_source lets URIs through for video files only).
LOADERS: dict[str, Callable[[Any, SourceVideo, int], Frames]] = {
    "frames": load_frame_folder,
    "hdf5": load_hdf5_video,
    "video": load_video_file,
}


# ---- writing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    short_side: int = 128
    fps: float = 30.0  # for frames whose source does not say
    shard_bytes: int = DEFAULT_SHARD_BYTES


def location(root: Root, relative: str) -> Path | str:
    """A listed file's path, or its URI under a storage root."""
    return storage.join(root, relative) if isinstance(root, str) else root / relative


def _write(
    uri: str,
    source: Source,
    options: Options,
    items: list[tuple[int, SourceVideo]],
    report: Callable[[], None],
    tag: str,
) -> None:
    """Decode and write some of a source's videos (one worker's share) into shards of their own."""
    writer = ShardWriter(uri, len(source.labels), options.shard_bytes, tag)
    load = LOADERS[source.kind]
    label_number = {label: number for number, label in enumerate(source.labels)}
    for order, video in items:
        path = location(source.root, video.path)
        try:
            frames = load(path, video, options.short_side)
        except UNREADABLE as error:
            writer.add_error(order, video.id, _reason(error, path))
        else:
            labels = [label_number[label] for label in video.labels]
            writer.add(
                order,
                video.id,
                labels,
                video.split,
                frames.jpegs,
                frames.height,
                frames.width,
                frames.fps or options.fps,
            )
        report()
    writer.flush()


def _reason(error: Exception, path: Path | str) -> str:
    """Why a video could not be read, in words naming its file (ours say so already)."""
    if isinstance(error, DatasetError):
        return str(error)
    av = sys.modules.get("av")  # an FFmpeg error only where PyAV was used
    if av is not None and isinstance(error, av.error.FFmpegError):  # decoding failed part-way
        return f"{path}: FFmpeg cannot decode it ({error.strerror})"
    if isinstance(error, FileNotFoundError):
        return f"{error.filename or path}: no such file"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename or path}: {error.strerror}"
    return f"{path}: {error or type(error).__name__}"


def _die_with(parent: int) -> None:
    """Make this worker end when the ingest that started it ends, however it ends: an orphan would go on
    writing shards beside a resumed run. Workers are spawned (a fresh interpreter whose parent is the
    ingest process), so this runs first in each. The parent pid is checked here, for a parent that died
    before the request took effect, and after every video (`_check_parent`), for systems without prctl."""
    end_with_parent(parent, signal.SIGKILL)


def _check_parent(parent: int) -> None:
    if os.getppid() != parent:
        os._exit(1)


def _worker(
    uri: str,
    source: Source,
    options: Options,
    items: list[tuple[int, SourceVideo]],
    messages: Any,
    parent: int,
    tag: str,
) -> None:
    _die_with(parent)

    def report() -> None:
        _check_parent(parent)
        messages.put(("video", ""))

    try:
        _write(uri, source, options, items, report, tag)
    except BaseException as error:
        messages.put(("failed", f"{type(error).__name__}: {error}"))
        raise
    messages.put(("finished", ""))


def plan_of(source: Source, options: Options) -> SourcePlan:
    """What an ingest writes; a resumed run must have the same plan."""
    listed = [[v.id, v.labels, v.split, v.path, v.frames, v.seconds] for v in source.videos]
    videos = hashlib.sha256(json.dumps(listed).encode()).hexdigest()
    return SourcePlan(
        kind=source.kind,
        root=str(source.root.resolve()) if isinstance(source.root, Path) else source.root,
        classes=source.labels,
        videos=videos,
        short_side=options.short_side,
        fps=options.fps,
        shard_bytes=options.shard_bytes,
    )


def check_source(source: Source) -> None:
    """Refuse what the annotations list that cannot be ingested (before anything is written): no videos,
    a missing root, ids listed twice, empty labels, paths outside the root, files that are not files."""
    if not source.videos:
        raise DatasetError(f"{source.root}: no labelled videos listed")
    if isinstance(source.root, str) and source.kind != "video":
        raise DatasetError(f"{source.root}: frame folders and HDF5 files are read from a local folder only")
    if not (storage.exists(source.root) if isinstance(source.root, str) else source.root.is_dir()):
        raise DatasetError(f"{source.root}: no such directory")
    seen: set[str] = set()
    for video in source.videos:
        where = video.row or f"video {video.id!r}"
        if video.id in seen:
            raise DatasetError(f"{where}: video id {video.id!r} is listed twice")
        seen.add(video.id)
        if not video.labels or any(not label.strip() for label in video.labels):
            raise DatasetError(f"{where}: an empty label (every video needs a class name)")
        relative = PurePosixPath(video.path)
        if relative.is_absolute() or ".." in relative.parts or Path(video.path).is_absolute():
            raise DatasetError(f"{where}: {video.path!r} is not a path inside the root {source.root}")
        if isinstance(source.root, str):  # objects are files; one request per video here would double them
            continue
        try:
            mode = (source.root / video.path).stat().st_mode
        except OSError:  # missing: listed among the unreadable videos
            continue
        wanted = (stat.S_ISDIR, "a folder of frames") if source.kind == "frames" else (stat.S_ISREG, "a file")
        if not wanted[0](mode):
            raise DatasetError(f"{where}: {video.path!r} is {_kind_of(mode)}, not {wanted[1]}")


def ingest(
    uri: str,
    source: Source,
    options: Options,
    workers: int = 1,
    progress: Progress | None = None,
    notice: Callable[[str], None] | None = None,
) -> DatasetIndex:
    """Write a source as a dataset with `workers` processes. An interrupted ingest is resumed by running it
    again: the videos of finished shards are skipped. One writer at a time: another live ingest of `uri`
    is refused; a dead one's lock is taken over (`notice` hears of it)."""
    check_source(source)
    with writing(uri, notice) as lock:
        return _ingest(uri, source, options, workers, progress, lock.check)


def _ingest(
    uri: str,
    source: Source,
    options: Options,
    workers: int,
    progress: Progress | None,
    still_locked: Callable[[], None],
) -> DatasetIndex:
    done = start(uri, plan_of(source, options))
    todo = [(order, video) for order, video in enumerate(source.videos) if video.id not in done]
    total, finished = len(source.videos), len(source.videos) - len(todo)

    def advance() -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            progress(finished, total)

    if progress is not None:
        progress(finished, total)
    write_videos(uri, source, options, todo, workers, advance)
    still_locked()  # finish deletes shards no manifest claims: never another writer's
    return finish(uri, source.labels, is_multi_label(source))


def is_multi_label(source: Source) -> bool:
    return any(len(video.labels) > 1 for video in source.videos)


def write_videos(
    uri: str,
    source: Source,
    options: Options,
    todo: list[tuple[int, SourceVideo]],
    workers: int,
    advance: Callable[[], None],
    tag: str = "",
) -> None:
    """Write the (order, video) pairs `todo` with up to `workers` processes; `advance` hears of each video.
    Shard names begin with `shard-{tag}`. Call it with `start` done (the plan written)."""
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        if todo:
            _write(uri, source, options, todo, advance, tag)
    else:
        _write_in_parallel(uri, source, options, [todo[w::workers] for w in range(workers)], advance, tag)


def _write_in_parallel(
    uri: str,
    source: Source,
    options: Options,
    shares: list[list[tuple[int, SourceVideo]]],
    advance: Callable[[], None],
    tag: str,
) -> None:
    # spawn, not fork: the parent may hold threads (progress display, gcsfs's event loop).
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    processes = [
        context.Process(target=_worker, args=(uri, source, options, share, messages, os.getpid(), tag))
        for share in shares
    ]
    for process in processes:
        process.start()
    running = len(processes)
    try:
        while running:
            try:
                kind, text = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise DatasetError(
                        f"an ingest worker died (exit code {dead[0].exitcode}); run the same command again "
                        "to resume"
                    ) from None
                continue
            if kind == "video":
                advance()
            elif kind == "finished":
                running -= 1
            else:
                raise DatasetError(f"an ingest worker failed: {text}; run the same command again to resume")
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
