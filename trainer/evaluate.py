"""Accuracy as the paper reports it.

Clip accuracy: every window is scored alone. Video top-1 / top-5: the class probabilities of a video's
non-overlapping windows are averaged, then ranked. No test-time augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class RankShare(Sampler[int]):
    """Items rank, rank + W, rank + 2W, ... of `n_items`: every item goes to exactly one rank. Unlike
    DistributedSampler, no rank is padded with repeats, so nothing is counted twice (ranks may get one
    item less; evaluation runs no collective per batch, so uneven counts are fine)."""

    def __init__(self, n_items: int, rank: int, world_size: int) -> None:
        self.items = range(rank, n_items, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def summarize(
    video_prob_sums: np.ndarray, window_counts: np.ndarray, clip_correct: int, video_labels: np.ndarray
) -> dict[str, float]:
    """Metrics from per-video sums: `video_prob_sums[v]` adds up the class probabilities of video v's
    `window_counts[v]` windows, `clip_correct` counts windows whose own top class was right."""
    video_probs = video_prob_sums / np.maximum(window_counts, 1)[:, None]
    ranked = np.argsort(-video_probs, axis=1, kind="stable")
    hits = ranked == video_labels[:, None]
    n_clips = int(window_counts.sum())
    return {
        "clip_accuracy": clip_correct / n_clips,
        "video_top1": float(hits[:, :1].any(axis=1).mean()),
        "video_top5": float(hits[:, :5].any(axis=1).mean()),
        "n_clips": n_clips,
        "n_videos": len(video_labels),
    }
