"""Index operations on datasets (torch-free): the paper's data-amount subsets and summary statistics.

A subset, like a merge, is a new index over the existing shards: no video is copied.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from trainer.data.format import DatasetError, DatasetIndex


def subset(index: DatasetIndex, categories: float, instances: float, seed: int) -> DatasetIndex:
    """Keep a fraction of the categories, then a fraction of each kept category's training videos.

    Deterministic for a seed. Evaluation videos of kept categories are all kept, so results stay comparable
    across subsets; labels are renumbered and the mapping to the source's labels is recorded.
    """
    for name, fraction in (("categories", categories), ("instances", instances)):
        if not 0 < fraction <= 1:
            raise DatasetError(f"--{name} must be a fraction in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    n_kept = max(1, round(categories * len(index.classes)))
    kept = sorted(int(c) for c in rng.choice(len(index.classes), size=n_kept, replace=False))
    new_label = {old: new for new, old in enumerate(kept)}
    training_of: dict[int, list[int]] = {old: [] for old in kept}
    for i, video in enumerate(index.videos):
        if video.subset == "training" and video.label in training_of:
            training_of[video.label].append(i)
    chosen: set[int] = set()
    for training in training_of.values():
        if training:
            size = max(1, round(instances * len(training)))
            chosen.update(int(i) for i in rng.choice(training, size=size, replace=False))
    videos = [
        replace(video, label=new_label[video.label])
        for i, video in enumerate(index.videos)
        if video.label in new_label and (video.subset != "training" or i in chosen)
    ]
    source = {"subset": {"categories": categories, "instances": instances, "seed": seed}, "labels": kept}
    return DatasetIndex(
        classes=[index.classes[old] for old in kept],
        shards=index.shards,
        videos=videos,
        sources=[*index.sources, source],
    )


def stats(index: DatasetIndex) -> dict[str, Any]:
    """Counts for `mega3d data stats`: per split, per class (training videos), frames, hours and bytes."""
    per_class = Counter(video.label for video in index.videos if video.subset == "training")
    counts = sorted(((per_class.get(label, 0), name) for label, name in enumerate(index.classes)))
    return {
        "classes": len(index.classes),
        "videos": len(index.videos),
        "splits": dict(sorted(Counter(video.subset for video in index.videos).items())),
        "frames": sum(video.frames for video in index.videos),
        "hours": sum(video.frames / video.fps for video in index.videos) / 3600,
        "bytes": sum(video.length for video in index.videos),
        "shards": len(index.shards),
        "training_videos_per_class": {name: count for count, name in counts},
        "smallest": counts[:3],
        "largest": counts[::-1][:3],
    }


def plot_class_histogram(index: DatasetIndex, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    per_class = stats(index)["training_videos_per_class"]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.12 * len(per_class)), 4))
    few = len(per_class) <= 40  # few enough to tell the bars apart and name each one
    axes.bar(range(len(per_class)), list(per_class.values()), width=0.8 if few else 1.0, color="#4c72b0")
    axes.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlabel(f"class (sorted by size; {len(per_class)} classes)")
    axes.set_ylabel("training videos")
    axes.set_title("training videos per class")
    if few:
        axes.set_xticks(range(len(per_class)), list(per_class), rotation=90, fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
