"""Index operations on datasets (torch-free): the paper's data-amount subsets and summary statistics.

A subset, like a merge, is a new index over the existing shards: no video is copied.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mega3d.trainer.data.format import (
    SUBSETS,
    DatasetError,
    DatasetIndex,
    SubsetOptions,
    SubsetSource,
    UnifiedClasses,
)


def subset(
    index: DatasetIndex, categories: float, instances: float, seed: int, uri: str | None = None
) -> DatasetIndex:
    """Keep a fraction of the categories, then a fraction of each kept category's training videos.

    Deterministic for a seed. Evaluation videos of kept categories are all kept, so results stay comparable
    across subsets; labels are renumbered and the mapping to the source's labels is recorded (with `uri`,
    where `index` was loaded from). A multi-label video keeps its kept labels, and counts as an instance of
    the first of them.
    """
    for name, fraction in (("categories", categories), ("instances", instances)):
        if not 0 < fraction <= 1:
            raise DatasetError(f"--{name} must be a fraction in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    n_kept = max(1, round(categories * len(index.classes)))
    kept = np.sort(rng.choice(len(index.classes), size=n_kept, replace=False))
    relabel = np.full(len(index.classes), -1)
    relabel[kept] = np.arange(n_kept)
    part = index.select(np.arange(len(index)), [index.classes[old] for old in kept], relabel)
    training = part.rows("training")
    first_label = part.columns["label"][part.columns["label_start"][:-1]]
    chosen = [part.rows(split) for split in SUBSETS if split != "training"]
    for label in range(n_kept):
        members = training[first_label[training] == label]
        if len(members):
            chosen.append(rng.choice(members, size=max(1, round(instances * len(members))), replace=False))
    rows = np.sort(np.concatenate(chosen))
    source = SubsetSource(
        subset=SubsetOptions(categories=categories, instances=instances, seed=seed),
        labels=kept.tolist(),
        uri=uri,
    )
    return replace(part.select(rows, part.classes, np.arange(n_kept)), sources=[*index.sources, source])


def read_unify_map(path: Path) -> dict[str, list[str]]:
    """`new name: [<dataset>/<class>, ...]` from a YAML file."""
    try:
        mapping = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DatasetError(f"{path}: cannot read the class map ({error})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"{path}: expected a map of `new name: [<dataset>/<class>, ...]`")
    for name, members in mapping.items():
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise DatasetError(f"{path}: {name}: expected a list of class names, got {members!r}")
    return {str(name): members for name, members in mapping.items()}


def unify_classes(index: DatasetIndex, mapping: dict[str, list[str]], where: str) -> DatasetIndex:
    """Fuse classes that mean the same thing: each group becomes one class, named by its key, at the place
    of its first member; the other classes keep their order."""
    group_of: dict[str, str] = {}
    for name, members in mapping.items():
        for member in members:
            if member not in index.classes:
                raise DatasetError(f"{where}: {name}: {member!r} is not a class of the merge")
            if member in group_of:
                raise DatasetError(f"{where}: {name}: {member!r} is already fused into {group_of[member]!r}")
            group_of[member] = name
    for name in mapping:
        if name in index.classes and name not in group_of:
            raise DatasetError(f"{where}: {name!r} is already a class of the merge; choose another name")
    number_of: dict[str, int] = {}  # new class name -> its number, in order of first appearance
    relabel = np.array(
        [number_of.setdefault(group_of.get(name, name), len(number_of)) for name in index.classes]
    )
    classes = list(number_of)
    fused = index.select(np.arange(len(index)), classes, relabel)
    return replace(fused, sources=[*index.sources, UnifiedClasses(unify=mapping)])


def stats(index: DatasetIndex) -> dict[str, Any]:
    """Counts for `mega3d data stats`: per split, per class (training videos), frames, hours and bytes."""
    c = index.columns
    training = index.rows("training")
    counts = np.diff(c["label_start"])
    label_owner = np.repeat(np.arange(len(index)), counts)
    training_labels = c["label"][np.isin(label_owner, training)]
    per_class = np.bincount(training_labels, minlength=len(index.classes))
    ordered = sorted((int(count), name) for count, name in zip(per_class, index.classes, strict=True))
    return {
        "classes": len(index.classes),
        "videos": len(index),
        "multi_label": index.multi_label,
        "splits": {split: len(index.rows(split)) for split in SUBSETS if len(index.rows(split))},
        "frames": int(c["frames"].sum()),
        "hours": float((c["frames"] / c["fps"].astype(np.float64)).sum() / 3600),
        "bytes": int(c["length"].sum()),
        "shards": len(index.shards),
        "unreadable": len(index.errors),
        "fingerprint": index.fingerprint,
        "training_videos_per_class": {name: count for count, name in ordered},
        "smallest": ordered[:3],
        "largest": ordered[::-1][:3],
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
