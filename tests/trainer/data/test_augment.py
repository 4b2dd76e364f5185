"""The paper's transforms, checked exactly: crop boxes for every scale and position, the crop itself,
flips, normalisation and memory layout of a batch."""

from __future__ import annotations

import random

import pytest
import torch

from mega3d.trainer.data.augment import center_box, crop_box, crop_resize, normalize, sample_crop
from mega3d.trainer.spec import CROP_POSITIONS, KINETICS_MEAN, KINETICS_STD, PAPER_SCALES, ClipSpec


def coordinates(height: int, width: int, frames: int = 2) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames whose pixels name their place: channel 0 = row, 1 = column, 2 = frame."""
    rows = torch.arange(height).view(1, height, 1).expand(frames, height, width)
    columns = torch.arange(width).view(1, 1, width).expand(frames, height, width)
    times = torch.arange(frames).view(frames, 1, 1).expand(frames, height, width)
    return torch.stack([rows, columns, times], dim=-1).to(torch.uint8)


def test_the_papers_five_scales_of_a_240x320_frame() -> None:
    sides = [crop_box(240, 320, scale, "center")[2] for scale in PAPER_SCALES]
    assert sides == [240, 202, 170, 143, 120]  # round(240 x 2^-k/4)


@pytest.mark.parametrize(
    ("position", "top", "left"),
    [
        ("center", 60, 100),
        ("top-left", 0, 0),
        ("top-right", 0, 200),
        ("bottom-left", 120, 0),
        ("bottom-right", 120, 200),
    ],
)
def test_corner_and_centre_boxes(position: str, top: int, left: int) -> None:
    assert crop_box(240, 320, 0.5, position) == (top, left, 120)


def test_centre_box_of_a_portrait_frame() -> None:
    assert center_box(320, 240) == (40, 0, 240)


def test_crop_takes_exactly_the_boxed_pixels() -> None:
    frames = coordinates(40, 60)
    for position in CROP_POSITIONS:
        top, left, side = crop_box(40, 60, 0.5, position)
        crop = crop_resize(frames, (top, left, side), side)  # same size: no resampling
        assert crop.shape == (2, side, side, 3)
        assert crop[0, 0, 0].tolist() == [top, left, 0]
        assert crop[1, -1, -1].tolist() == [top + side - 1, left + side - 1, 1]


def test_resize_keeps_a_flat_colour_and_the_uint8_type() -> None:
    frames = torch.full((3, 30, 40, 3), 77, dtype=torch.uint8)
    out = crop_resize(frames, center_box(30, 40), 16)
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16, 3) and bool((out == 77).all())


def test_normalize_flips_only_the_chosen_clips_and_applies_mean_and_std() -> None:
    clips = torch.stack([coordinates(4, 4, frames=3)] * 2)  # (2, 3, 4, 4, 3)
    out = normalize(clips, KINETICS_MEAN, KINETICS_STD, flips=torch.tensor([False, True]))
    assert out.shape == (2, 3, 3, 4, 4) and out.is_contiguous()
    mean = torch.tensor(KINETICS_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(KINETICS_STD).view(3, 1, 1, 1)
    expected = (clips[0].permute(3, 0, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert torch.allclose(out[1], expected.flip(-1), atol=1e-6)
    columns = out[1, 1] * KINETICS_STD[1] * 255 + KINETICS_MEAN[1] * 255  # channel 1 holds the column
    assert torch.allclose(columns[0, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]), atol=1e-3)


def test_normalize_with_the_spec_statistics_and_channels_last() -> None:
    clips = torch.full((2, 2, 4, 4, 3), 255, dtype=torch.uint8)
    out = normalize(clips, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert [float(out[0, c, 0, 0, 0]) for c in range(3)] == pytest.approx([2.0, 1.0, 0.5])


def test_sampling_draws_every_configured_scale_position_and_flip() -> None:
    clip = ClipSpec(scales=[1.0, 0.5], positions=["top-left", "bottom-right"])
    draw = random.Random(0)
    drawn = {sample_crop(clip, 240, 320, draw) for _ in range(200)}
    assert drawn == {
        (box, flip)
        for box in [(0, 0, 240), (0, 80, 240), (0, 0, 120), (120, 200, 120)]
        for flip in (False, True)
    }
    no_flips = ClipSpec(flip=False, positions=["center"], scales=[1.0])
    assert {sample_crop(no_flips, 240, 320, draw) for _ in range(20)} == {((0, 40, 240), False)}
