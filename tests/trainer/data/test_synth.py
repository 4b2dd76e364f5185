from __future__ import annotations

from pathlib import Path

import numpy as np

from mega3d.trainer.data.format import ClipReader, index_uri, load_index
from mega3d.trainer.data.synth import class_angles, class_names, render_video, synthesize
from mega3d.trainer.spec import SyntheticSpec


def dominant_shift(video: np.ndarray, reach: int = 4) -> np.ndarray:
    """The (dy, dx) that best maps each frame's moving pixels onto the next frame's."""
    background = np.median(video.astype(float), axis=0)
    moving = np.abs(video - background).sum(axis=3) > 60
    shifts = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    scores = [
        sum(
            np.logical_and(np.roll(moving[t], (dy, dx), axis=(0, 1)), moving[t + 1]).sum()
            for t in range(len(video) - 1)
        )
        for dy, dx in shifts
    ]
    return np.array(shifts[int(np.argmax(scores))])


def test_the_class_is_in_the_motion_only() -> None:
    size, speed = 48, 2.0
    first_frames = []
    for angle in (0, 90, 180, 270):
        video = render_video(np.random.default_rng(11), frames=12, size=size, angle_deg=angle, speed=speed)
        first_frames.append(video[0])
        expected = speed * np.array([-np.sin(np.deg2rad(angle)), np.cos(np.deg2rad(angle))])
        assert np.abs(dominant_shift(video) - expected).max() <= 1, angle
    # Same random draws, different class: the first frames are identical, so one frame says nothing.
    for frame in first_frames[1:]:
        np.testing.assert_array_equal(frame, first_frames[0])


def test_synthesize_writes_a_labelled_split_dataset(tmp_path: Path) -> None:
    params = SyntheticSpec(classes=3, videos_per_class=8, frames=6, size=20, speed=1.0, rotation=30, seed=3)
    uri = str(tmp_path / "ds")
    calls: list[int] = []
    synthesize(uri, params, lambda done, total: calls.append(done))
    index = load_index(index_uri(uri))
    assert class_angles(params) == [30.0, 150.0, 270.0]
    assert (
        index.classes
        == class_names(params)
        == ["move-030.0deg-1px", "move-150.0deg-1px", "move-270.0deg-1px"]
    )
    assert len(index.rows("training")) == 18 and len(index.rows("validation")) == 6
    assert calls == list(range(1, 25))
    assert ClipReader(index).frames(len(index) - 1, 0, 6).shape == (6, 20, 20, 3)
    assert index.video(0).id == "move-030.0deg-1px-s3-0000"

    again = str(tmp_path / "again")
    synthesize(again, params)
    assert load_index(index_uri(again)).fingerprint == index.fingerprint  # the same seed, the same videos
    other = str(tmp_path / "other")
    synthesize(other, params.model_copy(update={"seed": 4}))
    assert load_index(index_uri(other)).fingerprint != index.fingerprint
