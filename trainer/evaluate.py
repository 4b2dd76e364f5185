"""Accuracy as the paper reports it.

Clip accuracy: every window is scored alone. Video top-1 / top-5: the class probabilities of a video's
non-overlapping windows are averaged, then ranked. No test-time augmentation.
"""

from __future__ import annotations

import numpy as np


def summarize(
    window_videos: np.ndarray, window_probs: np.ndarray, video_labels: np.ndarray
) -> dict[str, float]:
    """`window_videos[i]` is the video of window i, `window_probs[i]` its class probabilities."""
    n_videos, n_classes = len(video_labels), window_probs.shape[1]
    clip_correct = window_probs.argmax(axis=1) == video_labels[window_videos]
    sums = np.zeros((n_videos, n_classes))
    np.add.at(sums, window_videos, window_probs)
    counts = np.bincount(window_videos, minlength=n_videos)[:, None]
    video_probs = sums / np.maximum(counts, 1)
    ranked = np.argsort(-video_probs, axis=1, kind="stable")
    hits = ranked == video_labels[:, None]
    return {
        "clip_accuracy": float(clip_correct.mean()),
        "video_top1": float(hits[:, :1].any(axis=1).mean()),
        "video_top5": float(hits[:, :5].any(axis=1).mean()),
        "n_clips": len(window_videos),
        "n_videos": n_videos,
    }
