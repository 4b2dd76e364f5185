"""Clip datasets for training and evaluation.

Training (paper, §6 of the design notes): one clip per video from a random time position, looped when the
video is too short, cropped and resized as the stage's `ClipSpec` says; the sample carries whether to flip
it, for `augment.normalize` to do on the whole batch on the device.
Evaluation: the video cut into non-overlapping windows, each centre-cropped; each window is one clip.
Clips leave here as (T, size, size, 3) uint8.

Frames come from a `ClipReader`: one ranged read per clip. A video whose bytes cannot be decoded, or
are found to differ from the digest the index recorded for them (the reader checks a sample of its reads,
see `format.VERIFY_SHARE`), is skipped and counted, so that the Trainer can report it and stop when too
many fail: a training sample takes the next video in its place (every DDP rank keeps taking full batches),
an evaluation window yields None, which `collate_clips` leaves out of its batch.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from mega3d.trainer.data.augment import center_box, crop_resize, sample_crop
from mega3d.trainer.data.format import VERIFY_SHARE, ClipReader, CorruptVideo, DatasetError, DatasetIndex
from mega3d.trainer.spec import ClipSpec


def clip_frames(reader: ClipReader, row: int, start: int, length: int) -> torch.Tensor:
    """`length` frames from `start` as a (T, H, W, 3) uint8 tensor, looping what the video has if short."""
    frames = torch.from_numpy(reader.frames(row, start, length))
    if frames.shape[0] < length:
        frames = frames[torch.arange(length) % frames.shape[0]]
    return frames


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
        self,
        index: DatasetIndex,
        split: str,
        frames: int,
        size: int,
        cache_dir: str | None = None,
        verify_share: float = VERIFY_SHARE,
    ) -> None:
        self.index = index
        self.reader = ClipReader(index, cache_dir, verify_share)
        self.rows = index.rows(split)
        self.frames = frames
        self.size = size


class TrainingClips(_SplitClips, Dataset[tuple[torch.Tensor, bool, Any, int]]):
    """One clip per video: (clip, flip it?, label, number of unreadable videos skipped to find it).

    Indexed by (video, seed): the seed draws the clip's time position, crop and flip, so that a clip is the
    same whichever process or loader worker reads it. A video alone draws them from `random`."""

    ATTEMPTS = 20

    def __init__(
        self,
        index: DatasetIndex,
        split: str,
        clip: ClipSpec,
        cache_dir: str | None = None,
        verify_share: float = VERIFY_SHARE,
    ) -> None:
        super().__init__(index, split, clip.frames, clip.size, cache_dir, verify_share)
        self.clip = clip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, bool, Any, int]:
        i, seed = key if isinstance(key, tuple) else (key, random.getrandbits(64))
        draw = random.Random(seed)
        skipped = 0
        while True:
            row = int(self.rows[i])
            start = draw.randint(0, max(0, int(self.index.columns["frames"][row]) - self.frames))
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
        box, flip = sample_crop(self.clip, clip.shape[1], clip.shape[2], draw)
        return crop_resize(clip, box, self.size), flip, target(self.index, row), skipped


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
        verify_share: float = VERIFY_SHARE,
    ) -> None:
        super().__init__(index, split, frames, size, cache_dir, verify_share)
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
        box = center_box(clip.shape[1], clip.shape[2])
        return crop_resize(clip, box, self.size), target(self.index, row), number
