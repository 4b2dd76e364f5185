"""Synthetic action-recognition data whose classes differ only in motion.

Every video shows a few coloured squares drifting over a random textured background. Class k moves them in
direction `rotation + 360 * k / classes` degrees at `speed` pixels per frame (with a little per-video jitter).
Colours, texture, shape sizes and start positions are drawn independently of the class, so a single frame
carries no information about the label: a model has to look at time to do better than chance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mega3d.trainer.data.format import DatasetError, DatasetIndex
from mega3d.trainer.data.writer import DatasetWriter, writing
from mega3d.trainer.spec import SyntheticSpec

VALIDATION_FRACTION = 0.25
SHAPES_PER_VIDEO = 8

# One video is rendered in memory as float32 (frames x size x size x 3): 64 Mi pixels take 768 MiB. The
# spec bounds each parameter alone; together they could still ask for terabytes.
MAX_VIDEO_PIXELS = 64 << 20


def too_large(params: SyntheticSpec) -> str | None:
    """Why videos of these parameters are too large to render, or None."""
    pixels = params.frames * params.size * params.size
    if pixels <= MAX_VIDEO_PIXELS:
        return None
    return f"frames x size x size is {pixels:,} pixels a video, more than {MAX_VIDEO_PIXELS:,}"


def class_angles(params: SyntheticSpec) -> list[float]:
    return [(params.rotation + 360.0 * k / params.classes) % 360.0 for k in range(params.classes)]


def class_names(params: SyntheticSpec) -> list[str]:
    return [f"move-{angle:05.1f}deg-{params.speed:g}px" for angle in class_angles(params)]


def _upsample_matrix(size: int, n: int) -> np.ndarray:
    """Linear interpolation from n samples to `size` samples, as a (size, n) matrix."""
    positions = np.linspace(0, n - 1, size)
    lower = np.floor(positions).astype(int).clip(0, n - 2)
    weight = positions - lower
    matrix = np.zeros((size, n))
    matrix[np.arange(size), lower] = 1 - weight
    matrix[np.arange(size), lower + 1] = weight
    return matrix


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field with fine grain: clutter that does not look like the moving squares."""
    coarse = rng.uniform(60, 190, size=(6, 6, 3))
    up = _upsample_matrix(size, 6)
    smooth = np.einsum("yi,ijc,xj->yxc", up, coarse, up)
    return smooth + rng.normal(0, 8, size=(size, size, 3))


def render_video(
    rng: np.random.Generator, frames: int, size: int, angle_deg: float, speed: float
) -> np.ndarray:
    """A (frames, size, size, 3) uint8 video of squares moving in one direction (wrapping at the edges)."""
    angle = np.deg2rad(angle_deg + rng.uniform(-10, 10))
    velocity = speed * rng.uniform(0.85, 1.15) * np.array([-np.sin(angle), np.cos(angle)])  # (dy, dx)
    background = _texture(rng, size)
    sides = rng.integers(max(3, size // 8), max(4, size // 4) + 1, size=SHAPES_PER_VIDEO)
    starts = rng.uniform(0, size, size=(SHAPES_PER_VIDEO, 2))
    colours = rng.uniform(0, 255, size=(SHAPES_PER_VIDEO, 3))
    video = np.empty((frames, size, size, 3), dtype=np.float32)
    for t in range(frames):
        frame = background.copy()
        for side, start, colour in zip(sides, starts, colours, strict=True):
            y, x = np.round(start + velocity * t).astype(int)
            rows = (y + np.arange(side)) % size
            cols = (x + np.arange(side)) % size
            frame[np.ix_(rows, cols)] = colour
        video[t] = frame + rng.normal(0, 4, size=frame.shape)
    return np.clip(video, 0, 255).astype(np.uint8)


def synthesize(
    uri: str,
    params: SyntheticSpec,
    progress: Callable[[int, int], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> DatasetIndex:
    """Write a synthetic dataset to `uri`; refuses to overwrite an existing one, and videos too large
    to render. `notice` hears of a dead writer's lock taken over."""
    problem = too_large(params)
    if problem is not None:
        raise DatasetError(f"{uri}: {problem}; choose a smaller size or fewer frames")
    with writing(uri, notice):
        return _synthesize(uri, params, progress)


def _synthesize(uri: str, params: SyntheticSpec, progress: Callable[[int, int], None] | None) -> DatasetIndex:
    writer = DatasetWriter(uri, class_names(params))
    rng = np.random.default_rng(params.seed)
    # Every class gets at least one validation video, unless it has only one video in all.
    n_val = max(1, round(params.videos_per_class * VALIDATION_FRACTION)) if params.videos_per_class > 1 else 0
    total = params.classes * params.videos_per_class
    for label, (angle, name) in enumerate(zip(class_angles(params), class_names(params), strict=True)):
        for i in range(params.videos_per_class):
            subset = "validation" if i >= params.videos_per_class - n_val else "training"
            video = render_video(rng, params.frames, params.size, angle, params.speed)
            # Ids name what makes a video: datasets with other parameters can be merged without clashes.
            writer.add(f"{name}-s{params.seed}-{i:04d}", label, subset, video)
            if progress is not None:
                progress(label * params.videos_per_class + i + 1, total)
    return writer.close()
