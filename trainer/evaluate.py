"""Accuracy as the paper reports it.

Clip accuracy: every window is scored alone. Video top-1 / top-5: the class probabilities of a video's
non-overlapping windows are averaged, then ranked. No test-time augmentation.
"""

from __future__ import annotations

import numpy as np
import torch


def own_windows(rank: int, world_size: int, n_items: int, seen: int, batch: int) -> torch.Tensor:
    """Which of a rank's next `batch` items it owns. DistributedSampler (no shuffling) hands rank r the
    positions r, r + W, r + 2W, ... of the list padded by wrapping to a multiple of W; positions past the
    end are repeats that must not be counted twice."""
    positions = rank + world_size * torch.arange(seen, seen + batch)
    return positions < n_items


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
