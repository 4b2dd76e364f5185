"""Bring existing datasets into mega3d's format (torch-free).

Supported so far: the reference implementation's (3D-ResNets-PyTorch) two layouts with its annotation JSON
(`{"labels": [...], "database": {id: {"subset", "annotations": {"label", "segment": [begin, end)}}}}`):
  reference-jpg   `root/<label>/<video_id>/image_%05d.jpg`, frames numbered from 1
  reference-hdf5  `root/<label>/<video_id>.hdf5`, dataset `video` = one JPEG per frame, numbered from 0
and raw videos (mp4, avi, webm, mkv; decoded with PyAV) listed by
  csv             `path,label[,split]` lines, paths relative to the source root
  ucf101          `classInd.txt`, `trainlistNN.txt` and `testlistNN.txt` (test videos become validation)
  hmdb51          `<action>_test_splitN.txt` files: 1 training, 2 validation, 0 unused
  kinetics        a CSV of label, youtube_id, time_start, time_end[, split] (train / val / test)
  activitynet     its JSON: each annotated segment becomes a trimmed clip
A video that cannot be read is listed in the index's `errors` and in the summary, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.data.format import SUBSETS, DatasetError, DatasetIndex, DatasetWriter


@dataclass(frozen=True)
class AnnotatedVideo:
    id: str
    label: str
    subset: str
    segment: tuple[int, int] | None


def read_reference_annotations(path: Path) -> tuple[list[str], list[AnnotatedVideo], int]:
    """(labels, labelled videos, number of unlabelled videos skipped) of a reference annotation file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the annotation file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list) or "database" not in data:
        raise DatasetError(f"{path}: expected {{'labels': [...], 'database': {{...}}}}")
    labels = [str(label) for label in data["labels"]]
    videos, unlabelled = [], 0
    for video_id, entry in data["database"].items():
        where = f"{path}: database.{video_id}"
        subset = entry.get("subset")
        if subset not in SUBSETS:
            raise DatasetError(f"{where}.subset: {subset!r} is not one of {', '.join(SUBSETS)}")
        annotation = entry.get("annotations") or {}
        if "label" not in annotation:  # the reference's testing videos carry no label
            unlabelled += 1
            continue
        if annotation["label"] not in labels:
            raise DatasetError(f"{where}.annotations.label: {annotation['label']!r} is not in labels")
        segment = annotation.get("segment")
        videos.append(
            AnnotatedVideo(
                video_id, annotation["label"], subset, (int(segment[0]), int(segment[1])) if segment else None
            )
        )
    return labels, videos, unlabelled


def _decoded(jpeg: Image.Image | bytes, short_side: int) -> np.ndarray:
    """One frame as (H, W, 3) uint8, scaled down so that the short side is at most `short_side`."""
    with Image.open(io.BytesIO(jpeg)) if isinstance(jpeg, bytes) else jpeg as image:
        rgb = image.convert("RGB")
    scale = short_side / min(rgb.size)
    if scale < 1:
        rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def load_frame_folder(folder: Path, segment: tuple[int, int] | None, short_side: int) -> np.ndarray:
    """reference-jpg: a video's frames as (T, H, W, 3) uint8."""
    if segment is None:
        numbers = sorted(int(p.stem.removeprefix("image_")) for p in folder.glob("image_*.jpg"))
    else:
        numbers = list(range(*segment))
    if not numbers:
        raise DatasetError(f"no frames in {folder}")
    return np.stack([_decoded(Image.open(folder / f"image_{n:05d}.jpg"), short_side) for n in numbers])


def load_hdf5_video(path: Path, segment: tuple[int, int] | None, short_side: int) -> np.ndarray:
    """reference-hdf5: a video's frames as (T, H, W, 3) uint8."""
    import h5py

    with h5py.File(path, "r") as video_file:
        encoded = video_file["video"]
        numbers = range(*segment) if segment is not None else range(len(encoded))
        if not numbers:
            raise DatasetError(f"no frames in {path}")
        return np.stack([_decoded(bytes(encoded[n]), short_side) for n in numbers])


# Where each layout keeps a video, and how to read it.
LAYOUTS: dict[str, tuple[Callable[[Path, AnnotatedVideo], Path], Callable[..., np.ndarray]]] = {
    "reference-jpg": (lambda root, video: root / video.label / video.id, load_frame_folder),
    "reference-hdf5": (lambda root, video: root / video.label / f"{video.id}.hdf5", load_hdf5_video),
}


def ingest_reference(
    layout: str,
    root: Path,
    annotations: Path,
    uri: str,
    short_side: int = 128,
    fps: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[DatasetIndex, int]:
    """Write the dataset; returns its index and the number of unlabelled videos that were skipped."""
    labels, videos, unlabelled = read_reference_annotations(annotations)
    if not videos:
        raise DatasetError(f"{annotations}: no labelled videos")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory")
    where, load = LAYOUTS[layout]
    writer = DatasetWriter(uri, labels)
    errors: list[dict[str, str]] = []
    for done, video in enumerate(videos, 1):
        try:
            frames = load(where(root, video), video.segment, short_side)
        except (OSError, ValueError, KeyError) as error:  # missing or corrupt frames (KeyError: no `video`)
            errors.append({"id": video.id, "error": str(error)})
        else:
            writer.add(video.id, labels.index(video.label), video.subset, frames, fps=fps)
        if progress is not None:
            progress(done, len(videos))
    return writer.close(errors), unlabelled


def load_video_file(
    path: Path, short_side: int, seconds: tuple[float, float] | None = None
) -> tuple[np.ndarray, float]:
    """The frames of a video file (those shown within `seconds` [start, end) if given) as (T, H, W, 3) uint8,
    and its frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        frames = [
            _decoded(frame.to_image(), short_side)
            for frame in container.decode(stream)
            if seconds is None or (frame.time is not None and seconds[0] <= frame.time < seconds[1])
        ]
    if not frames:
        raise DatasetError(
            f"no frames in {path}" + (f" within {seconds[0]}-{seconds[1]} s" if seconds else "")
        )
    return np.stack(frames), fps


@dataclass(frozen=True)
class ListedVideo:
    """A video (or a trimmed part of one) named by a dataset's own lists."""

    id: str
    path: str  # under the source root
    label: str
    split: str
    seconds: tuple[float, float] | None = None


def read_video_list(path: Path) -> tuple[list[str], list[ListedVideo]]:
    """(sorted labels, [(path, label, split)]) from a CSV of `path,label[,split]`; a header line may lead."""
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the video list ({error})") from None
    entries = []
    for number, row in enumerate(rows, 1):
        if not row or (number == 1 and row[:2] == ["path", "label"]):
            continue
        if len(row) not in (2, 3):
            raise DatasetError(f"{path}: line {number}: expected path,label[,split], got {len(row)} fields")
        split = row[2] if len(row) == 3 else "training"
        if split not in SUBSETS:
            raise DatasetError(f"{path}: line {number}: split {split!r} is not one of {', '.join(SUBSETS)}")
        entries.append(ListedVideo(row[0], row[0], row[1], split))
    if not entries:
        raise DatasetError(f"{path}: no videos listed")
    return sorted({entry.label for entry in entries}), entries


def _lines(path: Path) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read ({error})") from None


def read_ucf101(lists: Path, split: int) -> tuple[list[str], list[ListedVideo]]:
    """UCF-101's own split lists; labels in classInd.txt order."""
    labels = [name for _, name in _lines(lists / "classInd.txt")]
    entries = []
    for name, subset in (
        (f"trainlist{split:02d}.txt", "training"),
        (f"testlist{split:02d}.txt", "validation"),
    ):
        for fields in _lines(lists / name):
            label = fields[0].split("/")[0]
            if label not in labels:
                raise DatasetError(f"{lists / name}: {fields[0]}: class {label!r} is not in classInd.txt")
            entries.append(ListedVideo(fields[0], fields[0], label, subset))
    return labels, entries


def read_hmdb51(splits: Path, split: int) -> tuple[list[str], list[ListedVideo]]:
    """HMDB-51's `<action>_test_split<N>.txt` files; videos at `<action>/<video>`; labels sorted by name."""
    files = sorted(splits.glob(f"*_test_split{split}.txt"))
    if not files:
        raise DatasetError(f"{splits}: no *_test_split{split}.txt files")
    labels = [path.name.removesuffix(f"_test_split{split}.txt") for path in files]
    entries = []
    for label, path in zip(labels, files, strict=True):
        for video, use in _lines(path):
            if use not in ("0", "1", "2"):
                raise DatasetError(f"{path}: {video}: {use!r} is not 0 (unused), 1 (training) or 2 (testing)")
            if use != "0":
                subset = "training" if use == "1" else "validation"
                entries.append(ListedVideo(f"{label}/{video}", f"{label}/{video}", label, subset))
    return labels, entries


KINETICS_SPLITS = {"train": "training", "val": "validation", "validate": "validation", "test": "testing"}
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi")


def _find_video(root: Path, candidates: list[str]) -> str:
    """The first candidate (a path without suffix) found with a video suffix; else the first, as .mp4."""
    for candidate in candidates:
        for suffix in VIDEO_SUFFIXES:
            if (root / f"{candidate}{suffix}").exists():
                return f"{candidate}{suffix}"
    return f"{candidates[0]}.mp4"


def read_kinetics(root: Path, path: Path) -> tuple[list[str], list[ListedVideo]]:
    """A Kinetics CSV (label, youtube_id, time_start, time_end[, split]); files named as the usual download
    scripts save them: `[<label>/]<youtube_id>_<start:06d>_<end:06d>.<mp4|webm|mkv>`, already trimmed."""
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read ({error})") from None
    required = {"label", "youtube_id", "time_start", "time_end"}
    if not rows or not required <= set(rows[0]):
        raise DatasetError(f"{path}: expected a header with {', '.join(sorted(required))}[, split]")
    entries = []
    for number, row in enumerate(rows, 2):
        split = KINETICS_SPLITS.get(row.get("split") or "train")
        if split is None:
            raise DatasetError(f"{path}: line {number}: split {row['split']!r} is not train, val or test")
        name = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
        found = _find_video(root, [f"{row['label']}/{name}", name])
        entries.append(ListedVideo(name, found, row["label"], split))
    return sorted({entry.label for entry in entries}), entries


def read_activitynet(root: Path, path: Path) -> tuple[list[str], list[ListedVideo]]:
    """An ActivityNet JSON: every annotated segment becomes a trimmed clip `<video id>_<n>` of the video file
    `v_<id>` (or `<id>`); unannotated (testing) videos are skipped."""
    try:
        database = json.loads(path.read_text())["database"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise DatasetError(f"{path}: expected an ActivityNet JSON with a database ({error})") from None
    entries = []
    for video_id, entry in database.items():
        subset = entry.get("subset")
        if subset not in SUBSETS:
            raise DatasetError(
                f"{path}: database.{video_id}.subset: {subset!r} is not one of {', '.join(SUBSETS)}"
            )
        found = _find_video(root, [f"v_{video_id}", video_id])
        for n, annotation in enumerate(entry.get("annotations") or []):
            begin, end = (float(t) for t in annotation["segment"])
            entries.append(ListedVideo(f"{video_id}_{n}", found, annotation["label"], subset, (begin, end)))
    return sorted({entry.label for entry in entries}), entries


def ingest_video_files(
    root: Path,
    labels: list[str],
    entries: list[ListedVideo],
    uri: str,
    short_side: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetIndex:
    """Decode and write the listed videos."""
    if not entries:
        raise DatasetError(f"{root}: no videos listed")
    writer = DatasetWriter(uri, labels)
    errors: list[dict[str, str]] = []
    for done, entry in enumerate(entries, 1):
        try:
            frames, fps = load_video_file(root / entry.path, short_side, entry.seconds)
        except (OSError, ValueError, IndexError) as error:  # missing, undecodable, or without a video stream
            errors.append({"id": entry.id, "error": str(error) or type(error).__name__})
        else:
            writer.add(entry.id, labels.index(entry.label), entry.split, frames, fps=fps)
        if progress is not None:
            progress(done, len(entries))
    return writer.close(errors)
