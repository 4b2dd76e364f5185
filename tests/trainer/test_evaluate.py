from __future__ import annotations

import numpy as np
import pytest
import torch

from mega3d.trainer.data.format import index_uri, load_index
from mega3d.trainer.evaluate import (
    RankShare,
    VideoScores,
    average_precision,
    summarize,
    summarize_multi_label,
    top_predictions,
)


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


@pytest.mark.parametrize(("n_items", "world_size"), [(18, 4), (18, 5), (7, 2), (3, 4)])
def test_each_item_goes_to_exactly_one_rank(n_items: int, world_size: int) -> None:
    shares = [list(RankShare(n_items, rank, world_size)) for rank in range(world_size)]
    assert sorted(item for share in shares for item in share) == list(range(n_items))
    assert all(len(share) == len(RankShare(n_items, rank, world_size)) for rank, share in enumerate(shares))


def test_mean_class_accuracy_weighs_classes_equally() -> None:
    # Three videos of class 0 (two right), one of class 1 (right), none of class 2.
    sums = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.7, 0.2], [0.3, 0.6, 0.1]])
    result = summarize(sums, np.ones(4), clip_correct=3, video_labels=np.array([0, 0, 0, 1]))
    assert result["video_top1"] == pytest.approx(3 / 4)
    assert result["mean_class_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["per_class_accuracy"] == [pytest.approx(2 / 3), 1.0, None]
    # rows: true class, columns: the video's top class
    assert result["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_the_confusion_matrix_is_kept_for_a_mega_scale_label_set() -> None:
    classes = 1039  # Kinetics-700 + Moments in Time
    labels = np.arange(classes)
    sums = np.eye(classes)[(labels + 1) % classes]  # every video's top class is the next one
    result = summarize(sums, np.ones(classes), 0, labels)
    matrix = np.array(result["confusion"])
    assert matrix.shape == (classes, classes) and matrix.sum() == classes
    assert all(matrix[label, (label + 1) % classes] == 1 for label in labels)


def test_top_predictions_follow_the_reference_results_layout() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert top_predictions(probs, ["a", "b", "c"], top=2) == [
        [{"label": "b", "score": 0.7}, {"label": "c", "score": 0.2}],
        [{"label": "a", "score": 0.5}, {"label": "c", "score": 0.3}],
    ]


def test_average_precision_by_hand() -> None:
    # Ranked by score: positive, negative, positive, negative -> precisions 1/1 and 2/3 at the positives.
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(scores, np.array([True, False, True, False])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, np.array([False, False, False, True])) == pytest.approx(1 / 4)


def test_multi_label_metrics_by_hand() -> None:
    # Two videos, three classes; video 0 has labels {0, 2}, video 1 has {1}.
    sums = np.array([[0.9, 0.2, 0.4], [0.6, 0.5, 0.1]])
    targets = np.array([[True, False, True], [False, True, False]])
    result = summarize_multi_label(sums, np.ones(2), clip_correct=1, video_targets=targets)
    assert (result["video_top1"], result["video_top5"]) == (0.5, 1.0)  # video 1 ranks class 1 second
    # Both videos' top class is 0: video 0 counts in rows 0 and 2, video 1 in row 1.
    assert result["confusion"] == [[1, 0, 0], [1, 0, 0], [1, 0, 0]]
    # class 0: ranked v0 (pos), v1 -> AP 1; class 1: ranked v1 (pos) first -> 1; class 2: v0 first -> 1
    assert result["per_class_ap"] == [1.0, 1.0, 1.0] and result["mAP"] == 1.0
    worse = summarize_multi_label(sums[:, [1, 0, 2]], np.ones(2), 0, targets)  # classes 0 and 1 swapped
    assert worse["per_class_ap"] == [pytest.approx(0.5), pytest.approx(0.5), 1.0]
    assert worse["mAP"] == pytest.approx(2 / 3)


def test_video_scores_add_windows_up_per_video_and_leave_out_unread_videos(tiny_dataset: str) -> None:
    index = load_index(index_uri(tiny_dataset))
    rows = index.rows("validation")
    labels = index.single_labels()[rows]
    scores = VideoScores(index, rows)
    # Video 0: two windows, one confidently of its own class, one unsure of another; video 1: one window of
    # another class; no window of the other videos could be read.
    n_classes = len(index.classes)
    logits = torch.zeros(3, n_classes)
    logits[0, labels[0]] = 4.0
    logits[1, (labels[0] + 1) % n_classes] = 1.0
    logits[2, (labels[1] + 1) % n_classes] = 4.0
    scores.add(logits, torch.from_numpy(labels[[0, 0, 1]]), torch.tensor([0, 0, 1]))
    metrics = scores.summary()
    probabilities = torch.softmax(logits, dim=1).double().numpy()
    sums = np.stack([probabilities[0] + probabilities[1], probabilities[2]])
    expected = summarize(sums, np.array([2, 1]), clip_correct=1, video_labels=labels[:2])
    assert (metrics["n_videos"], metrics["n_clips"], metrics["clip_accuracy"]) == (2, 3, pytest.approx(1 / 3))
    assert metrics["video_top1"] == pytest.approx(expected["video_top1"]) == 0.5
    by_name = dict(zip(index.classes, expected["per_class_accuracy"], strict=True))
    assert metrics["per_class_accuracy"] == {name: a for name, a in by_name.items() if a is not None}
    results = scores.results()["results"]
    assert list(results) == [video.id for video in index.videos("validation")[:2]]
    assert results[index.videos("validation")[0].id][0]["label"] == index.classes[labels[0]]
