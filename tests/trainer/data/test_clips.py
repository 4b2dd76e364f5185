from __future__ import annotations

import torch

from trainer.data.clips import SCALES, EvaluationWindows, TrainingClips, clip_frames, crop_box, to_input
from trainer.data.format import index_uri, load_index


def test_crop_boxes_follow_the_papers_corners_and_scales() -> None:
    assert crop_box(240, 320, 1.0, "center") == (0, 40, 240)
    assert crop_box(240, 320, 0.5, "top-left") == (0, 0, 120)
    assert crop_box(240, 320, 0.5, "bottom-right") == (120, 200, 120)
    assert crop_box(240, 320, SCALES[1], "top-right")[1:] == (320 - 202, 202)


def test_short_videos_are_looped(tiny_dataset: str) -> None:
    index = load_index(index_uri(tiny_dataset))
    video = index.videos[0]  # 10 frames
    clip = clip_frames(index, video, 6, 8)
    assert clip.shape == (8, 24, 24, 3)
    assert torch.equal(clip[4], clip[0])  # frames 6..9 then 6..9 again


def test_to_input_resizes_flips_and_normalises() -> None:
    frames = torch.zeros(4, 20, 30, 3, dtype=torch.uint8)
    frames[:, :, :15] = 255  # left half white
    out = to_input(frames, crop_box(20, 30, 1.0, "center"), 16)
    flipped = to_input(frames, crop_box(20, 30, 1.0, "center"), 16, flip=True)
    assert out.shape == (3, 4, 16, 16)
    assert out[:, :, :, 0].mean() > out[:, :, :, -1].mean()
    assert torch.allclose(flipped, out.flip(-1))


def test_training_clips_and_evaluation_windows(tiny_dataset: str) -> None:
    index = load_index(index_uri(tiny_dataset))
    clips = TrainingClips(index, "training", frames=4, size=16)
    clip, label = clips[0]
    assert clip.shape == (3, 4, 16, 16) and label == clips.videos[0].label

    windows = EvaluationWindows(index, "validation", frames=4, size=16)
    # 10 frames in non-overlapping windows of 4: starts 0, 4, 8 (the last one looped).
    assert len(windows) == 3 * len(windows.videos)
    assert [start for number, start in windows.windows if number == 0] == [0, 4, 8]
    middle = EvaluationWindows(index, "validation", frames=4, size=16, middle_only=True)
    assert middle.windows[0] == (0, 3)
