"""Clip datasets for training and evaluation, with the paper's transforms written on tensors.

Training (paper, §6 of the design notes): one clip per video from a random time position, looped when the
video is too short; multi-scale corner crop (scale of the short side in {1, 2^-1/4, 2^-1/2, 2^-3/4, 1/2},
position in {centre, 4 corners}) resized to `size`, random horizontal flip.
Evaluation: the video cut into non-overlapping windows, each centre-cropped; each window is one clip.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from trainer.data.format import DatasetIndex, VideoEntry, read_frames

SCALES = (1.0, 2**-0.25, 2**-0.5, 2**-0.75, 0.5)
POSITIONS = ("center", "top-left", "top-right", "bottom-left", "bottom-right")
MEAN = torch.tensor([0.4345, 0.4051, 0.3775]).view(3, 1, 1, 1)
STD = torch.tensor([0.2768, 0.2713, 0.2737]).view(3, 1, 1, 1)


def clip_frames(index: DatasetIndex, video: VideoEntry, start: int, length: int) -> torch.Tensor:
    """`length` frames from `start` as a (T, H, W, 3) uint8 tensor, looping what the video has if short."""
    frames = torch.from_numpy(np.array(read_frames(index, video, start, length)))
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
    """Crop a (T, H, W, 3) uint8 clip, resize to size x size, normalise: a (3, T, size, size) float tensor."""
    top, left, side = box
    clip = frames[:, top : top + side, left : left + side].permute(0, 3, 1, 2).float().div_(255)
    clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if flip:
        clip = clip.flip(-1)
    return (clip.permute(1, 0, 2, 3) - MEAN) / STD


class TrainingClips(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, index: DatasetIndex, subset: str, frames: int, size: int, flip: bool = True) -> None:
        self.index = index
        self.videos = index.subset(subset)
        self.frames = frames
        self.size = size
        self.flip = flip

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        video = self.videos[i]
        start = random.randint(0, max(0, video.frames - self.frames))
        clip = clip_frames(self.index, video, start, self.frames)
        box = crop_box(video.height, video.width, random.choice(SCALES), random.choice(POSITIONS))
        return to_input(clip, box, self.size, flip=self.flip and random.random() < 0.5), video.label


class EvaluationWindows(Dataset[tuple[torch.Tensor, int, int]]):
    """Every non-overlapping window of every video, as (clip, label, video number); with `middle_only`,
    just the middle window of each video (a cheap per-epoch validation loss)."""

    def __init__(
        self, index: DatasetIndex, subset: str, frames: int, size: int, middle_only: bool = False
    ) -> None:
        self.index = index
        self.videos = index.subset(subset)
        self.frames = frames
        self.size = size
        self.windows = [
            (number, start)
            for number, video in enumerate(self.videos)
            for start in (
                [max(0, (video.frames - frames) // 2)] if middle_only else range(0, video.frames, frames)
            )
        ]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        number, start = self.windows[i]
        video = self.videos[number]
        clip = clip_frames(self.index, video, start, self.frames)
        return (
            to_input(clip, crop_box(video.height, video.width, 1.0, "center"), self.size),
            video.label,
            number,
        )
