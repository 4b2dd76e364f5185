"""Accuracy as the paper reports it.

Clip accuracy: every window is scored alone. Video top-1 / top-5: the class probabilities of a video's
non-overlapping windows are averaged, then ranked. No test-time augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mega3d.trainer.data.format import DatasetIndex


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


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> list[list[int]]:
    """Rows: true class, columns: predicted class; cell [t][p] counts the pairs (true[i], predicted[i])
    equal to (t, p). Dense whatever the number of classes: 1,039² counts (Kinetics-700 + MiT) are 8 MB."""
    cells = np.bincount(
        np.asarray(true, dtype=np.int64) * n_classes + np.asarray(predicted, dtype=np.int64),
        minlength=n_classes * n_classes,
    )
    matrix: list[list[int]] = cells.reshape(n_classes, n_classes).tolist()
    return matrix


def summarize(
    video_prob_sums: np.ndarray, window_counts: np.ndarray, clip_correct: int, video_labels: np.ndarray
) -> dict[str, Any]:
    """Metrics from per-video sums: `video_prob_sums[v]` adds up the class probabilities of video v's
    `window_counts[v]` windows, `clip_correct` counts windows whose own top class was right.

    Mean class accuracy averages the video top-1 accuracy of each class that has videos, so that large
    classes do not dominate; `per_class_accuracy` holds it per class (None for a class without videos)."""
    video_probs = video_prob_sums / np.maximum(window_counts, 1)[:, None]
    ranked = np.argsort(-video_probs, axis=1, kind="stable")
    hits = ranked == video_labels[:, None]
    n_clips = int(window_counts.sum())
    n_classes = video_prob_sums.shape[1]
    videos_of_class = np.bincount(video_labels, minlength=n_classes)
    right_of_class = np.bincount(video_labels, weights=hits[:, 0], minlength=n_classes)
    present = videos_of_class > 0
    per_class = right_of_class / np.maximum(videos_of_class, 1)
    return {
        "confusion": confusion_matrix(video_labels, ranked[:, 0], n_classes),  # predicted: video top-1
        "clip_accuracy": clip_correct / n_clips,
        "video_top1": float(hits[:, :1].any(axis=1).mean()),
        "video_top5": float(hits[:, :5].any(axis=1).mean()),
        "mean_class_accuracy": float(per_class[present].mean()),
        "per_class_accuracy": [float(a) if p else None for a, p in zip(per_class, present, strict=True)],
        "n_clips": n_clips,
        "n_videos": len(video_labels),
    }


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Non-interpolated average precision: the mean, over the positives, of the precision at each one's
    rank when the videos are ranked by score."""
    hits = positives[np.argsort(-scores, kind="stable")]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def summarize_multi_label(
    video_prob_sums: np.ndarray, window_counts: np.ndarray, clip_correct: int, video_targets: np.ndarray
) -> dict[str, Any]:
    """Metrics of a multi-label evaluation from per-video sums of (sigmoid) class probabilities and the
    videos' multi-hot targets: mAP over the classes that have videos (per class in `per_class_ap`, None
    for one without), and top-1 / top-5 hit rates (a video's top classes include one of its labels)."""
    video_probs = video_prob_sums / np.maximum(window_counts, 1)[:, None]
    ranked = np.argsort(-video_probs, axis=1, kind="stable")
    hits = np.take_along_axis(video_targets, ranked, axis=1)
    present = np.asarray(video_targets.any(axis=0))
    per_class = [
        average_precision(video_probs[:, c], video_targets[:, c]) if present[c] else None
        for c in range(video_targets.shape[1])
    ]
    n_clips = int(window_counts.sum())
    videos, labels = np.nonzero(video_targets)
    return {
        # A video counts once in the row of each of its labels, in the column of its top-1 class.
        "confusion": confusion_matrix(labels, ranked[videos, 0], video_targets.shape[1]),
        "clip_accuracy": clip_correct / n_clips,
        "video_top1": float(hits[:, :1].any(axis=1).mean()),
        "video_top5": float(hits[:, :5].any(axis=1).mean()),
        "mAP": float(np.mean([ap for ap in per_class if ap is not None])),
        "per_class_ap": per_class,
        "n_clips": n_clips,
        "n_videos": len(video_targets),
    }


def top_predictions(video_probs: np.ndarray, classes: list[str], top: int = 5) -> list[list[dict[str, Any]]]:
    """Per video, its `top` classes with their probabilities, best first: the entries of the reference's
    results JSON (`{"results": {video id: [{"label", "score"}, ...]}}`)."""
    ranked = np.argsort(-video_probs, axis=1, kind="stable")[:, :top]
    return [
        [{"label": classes[c], "score": float(probs[c])} for c in order]
        for probs, order in zip(video_probs, ranked, strict=True)
    ]


def top1_hits(scores: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> int:
    """Clips whose top class is their label (multi-label: one of their labels)."""
    top = scores.argmax(1)
    if multi_label:
        return int(labels.gather(1, top[:, None]).sum())
    return int((top == labels).sum())


class VideoScores:
    """The scores of one split's windows, added up per video: class probability sums and window counts,
    and the windows whose own top class was right. Memory grows with videos x classes, not with windows.

    Each rank adds the windows it scored; `reduce` adds up the ranks' sums (a collective)."""

    def __init__(self, index: DatasetIndex, rows: np.ndarray) -> None:
        self.index = index
        self.rows = rows  # the index rows of the split's videos, by video number
        self.sums = torch.zeros(len(rows), len(index.classes), dtype=torch.float64)
        self.counts = torch.zeros(len(rows), dtype=torch.float64)
        self.correct = torch.zeros(1, dtype=torch.float64)

    def add(self, logits: torch.Tensor, labels: torch.Tensor, videos: torch.Tensor) -> None:
        """Windows' logits, their labels and the numbers of the videos they are cut from."""
        multi_label = self.index.multi_label
        probabilities = torch.sigmoid(logits.float()) if multi_label else torch.softmax(logits.float(), dim=1)
        probabilities = probabilities.double().cpu()
        self.sums.index_add_(0, videos, probabilities)
        self.counts.index_add_(0, videos, torch.ones(len(videos), dtype=torch.float64))
        self.correct += top1_hits(probabilities, labels, multi_label)

    def reduce(self) -> None:
        for total in (self.sums, self.counts, self.correct):
            dist.all_reduce(total)

    def _read(self) -> np.ndarray:
        """Which videos had a window decoded: a video none of whose windows could be is left out."""
        read: np.ndarray = self.counts.numpy() > 0
        return read

    def summary(self) -> dict[str, Any]:
        """The metrics of the videos read (see `summarize`, `summarize_multi_label`), per-class values by
        class name (classes without videos left out)."""
        read = self._read()
        rows, sums, counts = self.rows[read], self.sums.numpy()[read], self.counts.numpy()[read]
        correct = int(self.correct.item())
        if self.index.multi_label:
            metrics = summarize_multi_label(sums, counts, correct, self.index.multi_hot(rows))
            per_class_key = "per_class_ap"
        else:
            metrics = summarize(sums, counts, correct, self.index.single_labels()[rows])
            per_class_key = "per_class_accuracy"
        per_class = zip(self.index.classes, metrics[per_class_key], strict=True)
        metrics[per_class_key] = {name: value for name, value in per_class if value is not None}
        return metrics

    def results(self) -> dict[str, Any]:
        """The reference implementation's results JSON: each video read, with its top-5 classes."""
        read = self._read()
        ids = [video_id.decode() for video_id in self.index.columns["id"][self.rows[read]].tolist()]
        video_probs = self.sums.numpy()[read] / self.counts.numpy()[read][:, None]
        predictions = top_predictions(video_probs, self.index.classes)
        return {"results": dict(zip(ids, predictions, strict=True))}
