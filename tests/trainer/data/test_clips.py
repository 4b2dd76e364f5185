from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mega3d.trainer.data.clips import EvaluationWindows, TrainingClips, clip_frames, collate_clips
from mega3d.trainer.data.format import ClipReader, index_uri, load_index
from mega3d.trainer.data.writer import ShardWriter, SingleWriterPlan, finish, jpeg_frames, start
from mega3d.trainer.evaluate import RankShare
from mega3d.trainer.spec import ClipSpec


def test_short_videos_are_looped(tiny_dataset: str) -> None:
    index = load_index(index_uri(tiny_dataset))
    assert index.video(0).frames == 10
    clip = clip_frames(ClipReader(index), 0, 6, 8)
    assert clip.shape == (8, 24, 24, 3)
    assert torch.equal(clip[4], clip[0])  # frames 6..9 then 6..9 again


def test_training_clips_and_evaluation_windows(tiny_dataset: str) -> None:
    index = load_index(index_uri(tiny_dataset))
    clips = TrainingClips(index, "training", ClipSpec(frames=4, size=16))
    clip, flip, label, skipped = clips[0]
    assert clip.shape == (4, 16, 16, 3) and clip.dtype == torch.uint8 and isinstance(flip, bool)
    assert label == index.video(int(clips.rows[0])).label and skipped == 0

    windows = EvaluationWindows(index, "validation", frames=4, size=16)
    # 10 frames in non-overlapping windows of 4: starts 0, 4, 8 (the last one looped).
    assert len(windows) == 3 * len(windows.rows)
    assert windows.starts[windows.numbers == 0].tolist() == [0, 4, 8]
    clip, label, number = windows[2]
    assert clip.shape == (4, 16, 16, 3) and number == 0 and label == index.video(int(windows.rows[0])).label
    middle = EvaluationWindows(index, "validation", frames=4, size=16, middle_only=True)
    assert (middle.numbers[0], middle.starts[0]) == (0, 3)


def test_ranks_and_workers_read_every_window_once(tiny_dataset: str) -> None:
    """Two DDP ranks, two loader workers each: every evaluation window is read by exactly one of them."""
    index = load_index(index_uri(tiny_dataset))
    windows = EvaluationWindows(index, "validation", frames=4, size=16)
    seen: list[tuple[int, int]] = []
    for rank in range(2):
        loader = DataLoader(
            windows,
            batch_size=2,
            sampler=RankShare(len(windows), rank, 2),
            num_workers=2,
            collate_fn=collate_clips,
        )
        for clips, labels, numbers, unreadable in loader:
            assert unreadable == 0 and clips.shape[0] == len(numbers)
            seen += [(int(n), int(label)) for n, label in zip(numbers, labels, strict=True)]
    expected = [(int(n), int(index.video(int(windows.rows[n])).label)) for n in windows.numbers]
    assert sorted(seen) == sorted(expected) and len(seen) == len(windows)


def test_multi_label_targets_are_multi_hot(tmp_path: Path) -> None:
    uri = str(tmp_path / "tags")
    start(uri, SingleWriterPlan(classes=["a", "b", "c", "d"]))
    writer = ShardWriter(uri, n_classes=4)
    frames = np.zeros((6, 20, 20, 3), dtype=np.uint8)
    for order, labels in enumerate(([0, 2], [3])):
        writer.add(order, f"v{order}", labels, "training", jpeg_frames(frames), 20, 20, 30.0)
    writer.flush()
    index = finish(uri, ["a", "b", "c", "d"], multi_label=True)
    clips = TrainingClips(index, "training", ClipSpec(frames=4, size=16))
    assert clips[0][2].tolist() == [1.0, 0.0, 1.0, 0.0] and clips[1][2].tolist() == [0.0, 0.0, 0.0, 1.0]
