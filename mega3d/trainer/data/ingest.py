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
import queue
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mega3d.trainer.data.format import DEFAULT_SHARD_BYTES, SUBSETS, DatasetError, DatasetIndex, encode_jpeg
from mega3d.trainer.data.writer import ShardWriter, SourcePlan, finish, start

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


@dataclass(frozen=True)
class Source:
    kind: str  # how videos are stored: "frames" (JPEG folders), "hdf5" or "video" (files)
    root: Path
    labels: list[str]
    videos: list[SourceVideo]
    unlabelled: int = 0  # videos the annotations list without a label (the reference's testing split)


# ---- reading annotations -------------------------------------------------------------------------------


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the {what} ({error})") from None


def _check_split(split: object, where: str) -> str:
    if split not in SUBSETS:
        raise DatasetError(f"{where}: {split!r} is not one of {', '.join(SUBSETS)}")
    return str(split)


def read_reference(kind: str, root: Path, path: Path) -> Source:
    """The reference's annotation JSON, for its jpg (`kind` "frames") or hdf5 layout."""
    try:
        data = json.loads(_read_text(path, "annotation file"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: cannot read the annotation file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list) or "database" not in data:
        raise DatasetError(f"{path}: expected {{'labels': [...], 'database': {{...}}}}")
    labels = [str(label) for label in data["labels"]]
    videos, unlabelled = [], 0
    for video_id, entry in data["database"].items():
        where = f"{path}: database.{video_id}"
        split = _check_split(entry.get("subset"), f"{where}.subset")
        annotation = entry.get("annotations") or {}
        if "label" not in annotation:  # the reference's testing videos carry no label
            unlabelled += 1
            continue
        label = annotation["label"]
        if label not in labels:
            raise DatasetError(f"{where}.annotations.label: {label!r} is not in labels")
        segment = annotation.get("segment")
        location = f"{label}/{video_id}" + (".hdf5" if kind == "hdf5" else "")
        frames = (int(segment[0]), int(segment[1])) if segment else None
        videos.append(SourceVideo(video_id, (label,), split, location, frames=frames))
    return Source(kind, root, labels, videos, unlabelled)


def read_video_list(root: Path, path: Path) -> Source:
    """A CSV of `path,label[,split]`, a header line optional; `a|b` gives a video several labels."""
    rows = list(csv.reader(_read_text(path, "video list").splitlines()))
    videos = []
    for number, row in enumerate(rows, 1):
        if not row or (number == 1 and row[:2] == ["path", "label"]):
            continue
        if len(row) not in (2, 3):
            raise DatasetError(f"{path}: line {number}: expected path,label[,split], got {len(row)} fields")
        split = _check_split(row[2] if len(row) == 3 else "training", f"{path}: line {number}: split")
        videos.append(SourceVideo(row[0], tuple(row[1].split("|")), split, row[0]))
    return Source("video", root, _labels_of(videos), videos)


def _labels_of(videos: list[SourceVideo]) -> list[str]:
    return sorted({label for video in videos for label in video.labels})


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in _read_text(path, "split list").splitlines() if line.strip()]


def read_ucf101(root: Path, lists: Path, split: int) -> Source:
    """UCF-101's own split lists; labels in classInd.txt order."""
    labels = [name for _, name in _lines(lists / "classInd.txt")]
    videos = []
    for name, subset in (
        (f"trainlist{split:02d}.txt", "training"),
        (f"testlist{split:02d}.txt", "validation"),
    ):
        for fields in _lines(lists / name):
            label = fields[0].split("/")[0]
            if label not in labels:
                raise DatasetError(f"{lists / name}: {fields[0]}: class {label!r} is not in classInd.txt")
            videos.append(SourceVideo(fields[0], (label,), subset, fields[0]))
    return Source("video", root, labels, videos)


def read_hmdb51(root: Path, splits: Path, split: int) -> Source:
    """HMDB-51's `<action>_test_split<N>.txt` files; videos at `<action>/<video>`; labels sorted by name."""
    files = sorted(splits.glob(f"*_test_split{split}.txt"))
    if not files:
        raise DatasetError(f"{splits}: no *_test_split{split}.txt files")
    labels = [path.name.removesuffix(f"_test_split{split}.txt") for path in files]
    videos = []
    for label, path in zip(labels, files, strict=True):
        for video, use in _lines(path):
            if use not in ("0", "1", "2"):
                raise DatasetError(f"{path}: {video}: {use!r} is not 0 (unused), 1 (training) or 2 (testing)")
            if use != "0":
                subset = "training" if use == "1" else "validation"
                videos.append(SourceVideo(f"{label}/{video}", (label,), subset, f"{label}/{video}"))
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
            videos.append(SourceVideo(name, labels, split, found))
    return Source("video", root, _labels_of(videos), videos)


def read_activitynet(root: Path, path: Path) -> Source:
    """An ActivityNet JSON: every annotated segment becomes a trimmed clip `<video id>_<n>` of the video file
    `v_<id>` (or `<id>`); unannotated (testing) videos are skipped."""
    try:
        database = json.loads(_read_text(path, "ActivityNet JSON"))["database"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DatasetError(f"{path}: expected an ActivityNet JSON with a database ({error})") from None
    videos = []
    for video_id, entry in database.items():
        split = _check_split(entry.get("subset"), f"{path}: database.{video_id}.subset")
        found = _find_video(root, [f"v_{video_id}", video_id])
        for n, annotation in enumerate(entry.get("annotations") or []):
            begin, end = (float(t) for t in annotation["segment"])
            videos.append(
                SourceVideo(f"{video_id}_{n}", (annotation["label"],), split, found, seconds=(begin, end))
            )
    return Source("video", root, _labels_of(videos), videos)


# ---- reading frames ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frames:
    jpegs: list[bytes]
    height: int
    width: int
    fps: float | None  # None: the source does not say


def scaled_to_short_side(image: Image.Image, short_side: int) -> Image.Image:
    scale = short_side / min(image.size)
    if scale >= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)


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


def load_frame_folder(path: Path, video: SourceVideo, short_side: int) -> Frames:
    """reference-jpg: image_00001.jpg ... of one video."""
    if video.frames is None:
        numbers = sorted(int(p.stem.removeprefix("image_")) for p in path.glob("image_*.jpg"))
    else:
        numbers = list(range(*video.frames))
    files = [path / f"image_{n:05d}.jpg" for n in numbers]
    return _from_jpegs([(str(file), file.read_bytes()) for file in files], short_side, str(path))


def load_hdf5_video(path: Path, video: SourceVideo, short_side: int) -> Frames:
    """reference-hdf5: dataset `video` of one JPEG per frame."""
    import h5py

    with h5py.File(path, "r") as video_file:
        encoded = video_file["video"]
        numbers = range(*video.frames) if video.frames is not None else range(len(encoded))
        frames = [(f"{path} frame {n}", bytes(encoded[n])) for n in numbers]
        return _from_jpegs(frames, short_side, str(path))


def load_video_file(path: Path, video: SourceVideo, short_side: int) -> Frames:
    """A video file decoded by PyAV: every frame, or those shown within `video.seconds`."""
    import av

    seconds = video.seconds
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        images = [
            scaled_to_short_side(frame.to_image(), short_side)
            for frame in container.decode(stream)
            if seconds is None or (frame.time is not None and seconds[0] <= frame.time < seconds[1])
        ]
    if not images:
        raise DatasetError(
            f"no frames in {path}" + (f" within {seconds[0]}-{seconds[1]} s" if seconds else "")
        )
    return Frames(
        [encode_jpeg(np.asarray(image)) for image in images], images[0].height, images[0].width, fps
    )


LOADERS: dict[str, Callable[[Path, SourceVideo, int], Frames]] = {
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


def _write(
    uri: str,
    source: Source,
    options: Options,
    items: list[tuple[int, SourceVideo]],
    report: Callable[[], None],
) -> None:
    """Decode and write some of a source's videos (one worker's share) into shards of their own."""
    writer = ShardWriter(uri, len(source.labels), options.shard_bytes)
    load = LOADERS[source.kind]
    label_number = {label: number for number, label in enumerate(source.labels)}
    for order, video in items:
        try:
            frames = load(source.root / video.path, video, options.short_side)
        except UNREADABLE as error:
            writer.add_error(order, video.id, str(error) or type(error).__name__)
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


def _worker(
    uri: str, source: Source, options: Options, items: list[tuple[int, SourceVideo]], messages: Any
) -> None:
    try:
        _write(uri, source, options, items, lambda: messages.put(("video", "")))
    except BaseException as error:
        messages.put(("failed", f"{type(error).__name__}: {error}"))
        raise
    messages.put(("finished", ""))


def plan_of(source: Source, options: Options) -> SourcePlan:
    """What an ingest writes; a resumed run must have the same plan."""
    videos = hashlib.sha256(json.dumps([astuple(video) for video in source.videos]).encode()).hexdigest()
    return SourcePlan(
        kind=source.kind,
        root=str(source.root.resolve()),
        classes=source.labels,
        videos=videos,
        short_side=options.short_side,
        fps=options.fps,
        shard_bytes=options.shard_bytes,
    )


def ingest(
    uri: str, source: Source, options: Options, workers: int = 1, progress: Progress | None = None
) -> DatasetIndex:
    """Write a source as a dataset with `workers` processes. An interrupted ingest is resumed by running it
    again: the videos of finished shards are skipped."""
    if not source.videos:
        raise DatasetError(f"{source.root}: no labelled videos listed")
    if source.kind != "video" and not source.root.is_dir():
        raise DatasetError(f"{source.root}: no such directory")
    seen: set[str] = set()
    for video in source.videos:
        if video.id in seen:
            raise DatasetError(f"video id {video.id!r} is listed twice")
        seen.add(video.id)
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
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        if todo:
            _write(uri, source, options, todo, advance)
    else:
        _write_in_parallel(uri, source, options, [todo[w::workers] for w in range(workers)], advance)
    multi_label = any(len(video.labels) > 1 for video in source.videos)
    return finish(uri, source.labels, multi_label)


def _write_in_parallel(
    uri: str,
    source: Source,
    options: Options,
    shares: list[list[tuple[int, SourceVideo]]],
    advance: Callable[[], None],
) -> None:
    # spawn, not fork: the parent may hold threads (progress display, gcsfs's event loop).
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    processes = [
        context.Process(target=_worker, args=(uri, source, options, share, messages)) for share in shares
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
