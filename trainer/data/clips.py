"""Clip datasets for training and evaluation, with the paper's transforms written on tensors.

Training (paper, §6 of the design notes): one clip per video from a random time position, looped when the
video is too short; multi-scale corner crop (scale of the short side in {1, 2^-1/4, 2^-1/2, 2^-3/4, 1/2},
position in {centre, 4 corners}) resized to `size`, random horizontal flip.
Evaluation: the video cut into non-overlapping windows, each centre-cropped; each window is one clip.

Frames come from a `ClipReader`: one ranged read per clip. A video whose bytes cannot be decoded is
skipped and counted, so that the Trainer can report it and stop when too many fail: a training sample
takes the next video in its place (every DDP rank keeps taking full batches), an evaluation window yields
None, which `collate_clips` leaves out of its batch.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from trainer.data.format import ClipReader, CorruptVideo, DatasetError, DatasetIndex

SCALES = (1.0, 2**-0.25, 2**-0.5, 2**-0.75, 0.5)
POSITIONS = ("center", "top-left", "top-right", "bottom-left", "bottom-right")
MEAN = torch.tensor([0.4345, 0.4051, 0.3775]).view(3, 1, 1, 1)
STD = torch.tensor([0.2768, 0.2713, 0.2737]).view(3, 1, 1, 1)
SCALE, SHIFT = 1 / (255 * STD), MEAN / STD  # (pixel / 255 - MEAN) / STD = pixel * SCALE - SHIFT


def clip_frames(reader: ClipReader, row: int, start: int, length: int) -> torch.Tensor:
    """`length` frames from `start` as a (T, H, W, 3) uint8 tensor, looping what the video has if short."""
    frames = torch.from_numpy(reader.frames(row, start, length))
    if frames.shape[0] < length:
        frames = frames[torch.arange(length) % frames.shape[0]]
    return frames


def crop_box(height: int, width: int, scale: float, position: str) -> tuple[int, int, int]:
    """(top, left, side) of a square crop whose side is `scale` x the short side."""
    side = max(1, round(min(height, width) * scale))
    top = {"top": 0, "bottom": height - side}.get(position.split("-")[0], (height - side) // 2)
    left = {"left": 0, "right": width - side}.get(position.split("-")[-1], (width - side) // 2)
    return top, left, side


def to_input(frames: torch.Tensor, box: tuple[int, int, int], size: int, flip: bool = False) -> torch.Tensor:
    """Crop a (T, H, W, 3) uint8 clip, resize to size x size, normalise: a (3, T, size, size) float tensor.

    Resizing and flipping run on uint8 (torch's antialiased uint8 resize is several times faster than on
    floats), and the one conversion to float writes the normalised result in place."""
    top, left, side = box
    clip = frames[:, top : top + side, left : left + side].permute(0, 3, 1, 2)
    if side != size:
        clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if flip:
        clip = clip.flip(-1)
    out = torch.empty(3, clip.shape[0], size, size)
    out.copy_(clip.permute(1, 0, 2, 3))
    return out.mul_(SCALE).sub_(SHIFT)


def target(index: DatasetIndex, row: int) -> int | torch.Tensor:
    """A video's label; for a multi-label dataset, a multi-hot vector over the classes."""
    if not index.multi_label:
        return int(index.columns["label"][row])
    hot = torch.zeros(len(index.classes))
    hot[torch.from_numpy(index.labels_of(row).astype(np.int64))] = 1.0
    return hot


def collate_clips(samples: list[Any]) -> tuple[Any, ...]:
    """A batch of the samples that could be read, and how many could not (the batch's last element)."""
    good = [sample for sample in samples if sample is not None]
    failed = len(samples) - len(good)
    if not good:
        return (None, None, failed)
    return (*default_collate(good), failed)


class _SplitClips:
    """Clips of `frames` x `size` x `size` from one split of an index."""

    def __init__(
        self, index: DatasetIndex, split: str, frames: int, size: int, cache_dir: str | None = None
    ) -> None:
        self.index = index
        self.reader = ClipReader(index, cache_dir)
        self.rows = index.rows(split)
        self.frames = frames
        self.size = size


class TrainingClips(_SplitClips, Dataset[tuple[torch.Tensor, Any, int]]):
    """One clip per video: (clip, label, number of unreadable videos skipped to find it)."""

    ATTEMPTS = 20

    def __init__(
        self,
        index: DatasetIndex,
        split: str,
        frames: int,
        size: int,
        flip: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(index, split, frames, size, cache_dir)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any, int]:
        skipped = 0
        while True:
            row = int(self.rows[i])
            start = random.randint(0, max(0, int(self.index.columns["frames"][row]) - self.frames))
            try:
                clip = clip_frames(self.reader, row, start, self.frames)
                break
            except CorruptVideo:
                skipped += 1
                if skipped == self.ATTEMPTS:
                    raise DatasetError(
                        f"{skipped} videos in a row could not be decoded: the dataset is damaged"
                    ) from None
                i = (i + 1) % len(self.rows)  # the next video takes its place
        height, width = clip.shape[1:3]
        box = crop_box(height, width, random.choice(SCALES), random.choice(POSITIONS))
        flip = self.flip and random.random() < 0.5
        return to_input(clip, box, self.size, flip=flip), target(self.index, row), skipped


class EvaluationWindows(_SplitClips, Dataset[tuple[torch.Tensor, Any, int] | None]):
    """Every non-overlapping window of every video, as (clip, label, video number); with `middle_only`,
    just the middle window of each video (a cheap per-epoch validation loss)."""

    def __init__(
        self,
        index: DatasetIndex,
        split: str,
        frames: int,
        size: int,
        middle_only: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(index, split, frames, size, cache_dir)
        lengths = index.columns["frames"][self.rows].astype(np.int64)
        if middle_only:
            self.numbers = np.arange(len(self.rows))
            self.starts = np.maximum(0, (lengths - frames) // 2)
        else:
            counts = -(-lengths // frames)  # windows per video, the last one looped if short
            self.numbers = np.repeat(np.arange(len(self.rows)), counts)
            firsts = np.cumsum(counts) - counts
            self.starts = (np.arange(int(counts.sum())) - np.repeat(firsts, counts)) * frames

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any, int] | None:
        number = int(self.numbers[i])
        row = int(self.rows[number])
        try:
            clip = clip_frames(self.reader, row, int(self.starts[i]), self.frames)
        except CorruptVideo:
            return None
        box = crop_box(clip.shape[1], clip.shape[2], 1.0, "center")
        return to_input(clip, box, self.size), target(self.index, row), number
