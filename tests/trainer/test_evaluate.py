from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from trainer.evaluate import own_windows, summarize


def test_video_accuracy_averages_window_probabilities() -> None:
    # Video 0 (label 0): two windows, one wrong but unsure, so the average is right.
    # Video 1 (label 2): one window, confidently wrong (class 2 ranks 2nd).
    sums = np.array([[0.9 + 0.4, 0.1 + 0.6, 0.0], [0.1, 0.6, 0.3]])
    result = summarize(sums, np.array([2, 1]), clip_correct=1, video_labels=np.array([0, 2]))
    assert result["clip_accuracy"] == pytest.approx(1 / 3)
    assert result["video_top1"] == pytest.approx(1 / 2)
    assert result["video_top5"] == 1.0  # fewer than five classes: every label is in the top five
    assert (result["n_clips"], result["n_videos"]) == (3, 2)


def test_top5_misses_a_label_ranked_sixth() -> None:
    probs = np.array([[0.3, 0.25, 0.2, 0.1, 0.08, 0.07]])
    assert summarize(probs, np.array([1]), 0, np.array([5]))["video_top5"] == 0.0
    assert summarize(probs, np.array([1]), 0, np.array([4]))["video_top5"] == 1.0


@pytest.mark.parametrize(("n_items", "world_size", "batch"), [(18, 4, 3), (18, 5, 2), (7, 2, 4), (3, 4, 1)])
def test_each_item_is_owned_by_exactly_one_rank(n_items: int, world_size: int, batch: int) -> None:
    owned: list[int] = []
    for rank in range(world_size):
        indices = list(DistributedSampler(range(n_items), world_size, rank, shuffle=False))  # type: ignore[arg-type]
        for seen in range(0, len(indices), batch):
            chunk = torch.tensor(indices[seen : seen + batch])
            owned += chunk[own_windows(rank, world_size, n_items, seen, len(chunk))].tolist()
    assert sorted(owned) == list(range(n_items))
