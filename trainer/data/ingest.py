"""Bring existing datasets into mega3d's format (torch-free).

Supported so far: the reference implementation's (3D-ResNets-PyTorch) frame folders,
`root/<label>/<video_id>/image_%05d.jpg` numbered from 1, with its annotation JSON
(`{"labels": [...], "database": {id: {"subset", "annotations": {"label", "segment": [begin, end)}}}}`).
A video that cannot be read is listed in the index's `errors` and in the summary, never dropped silently.
"""

from __future__ import annotations

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


def load_frame_folder(folder: Path, segment: tuple[int, int] | None, short_side: int) -> np.ndarray:
    """A video's frames as (T, H, W, 3) uint8, scaled down so that the short side is at most `short_side`."""
    if segment is None:
        numbers = sorted(int(p.stem.removeprefix("image_")) for p in folder.glob("image_*.jpg"))
    else:
        numbers = list(range(*segment))
    if not numbers:
        raise DatasetError(f"no frames in {folder}")
    frames = []
    for number in numbers:
        with Image.open(folder / f"image_{number:05d}.jpg") as image:
            rgb = image.convert("RGB")
        scale = short_side / min(rgb.size)
        if scale < 1:
            rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BILINEAR)
        frames.append(np.asarray(rgb))
    return np.stack(frames)


def ingest_reference_frames(
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
    writer = DatasetWriter(uri, labels)
    errors: list[dict[str, str]] = []
    for done, video in enumerate(videos, 1):
        try:
            frames = load_frame_folder(root / video.label / video.id, video.segment, short_side)
        except (OSError, ValueError) as error:  # missing or corrupt frames
            errors.append({"id": video.id, "error": str(error)})
        else:
            writer.add(video.id, labels.index(video.label), video.subset, frames, fps=fps)
        if progress is not None:
            progress(done, len(videos))
    return writer.close(errors), unlabelled
