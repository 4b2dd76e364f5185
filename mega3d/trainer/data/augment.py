"""The paper's clip transforms, on tensors.

Training (paper, §6 of the design notes): a square crop whose side is a scale of the short side (scales
{1, 2^-1/4, 2^-1/2, 2^-3/4, 1/2}) at one of {centre, 4 corners}, chosen per clip, resized to `size`, a
random horizontal flip, then normalisation with the Kinetics mean and standard deviation.
Evaluation: the centre crop of the short side, resized, normalised.

The work is split where the data's shape allows batching:
- `crop_resize` runs per clip in the loader workers, on uint8: videos differ in frame size, so their crops
  cannot share a batch before they are resized. It is batched over the clip's frames, and torch's
  antialiased uint8 resize is several times faster than a float one.
- `normalize` runs on a whole batch on the training device (a GPU when there is one): flip, conversion to
  float, mean/std and the memory layout. The loader therefore ships uint8 clips: a quarter of the bytes of
  float ones to copy to the device.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from mega3d.trainer.spec import ClipSpec


def sample_crop(
    clip: ClipSpec, height: int, width: int, draw: random.Random
) -> tuple[tuple[int, int, int], bool]:
    """A training clip's crop box and whether to flip it, drawn from `draw` as `clip` says."""
    box = crop_box(height, width, draw.choice(clip.scales), draw.choice(clip.positions))
    return box, clip.flip and draw.random() < 0.5


def crop_box(height: int, width: int, scale: float, position: str) -> tuple[int, int, int]:
    """(top, left, side) of a square crop whose side is `scale` x the short side."""
    side = max(1, round(min(height, width) * scale))
    vertical, _, horizontal = position.partition("-")
    top = {"top": 0, "bottom": height - side}.get(vertical, (height - side) // 2)
    left = {"left": 0, "right": width - side}.get(horizontal or vertical, (width - side) // 2)
    return top, left, side


def center_box(height: int, width: int) -> tuple[int, int, int]:
    return crop_box(height, width, 1.0, "center")


def crop_resize(frames: torch.Tensor, box: tuple[int, int, int], size: int) -> torch.Tensor:
    """Crop (T, H, W, 3) uint8 frames to `box` and resize them to (T, size, size, 3) uint8."""
    top, left, side = box
    crop = frames[:, top : top + side, left : left + side]
    if side == size:
        return crop.contiguous()
    planar = crop.permute(0, 3, 1, 2)
    resized = F.interpolate(planar, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.permute(0, 2, 3, 1).contiguous()


def normalize(
    clips: torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    flips: torch.Tensor | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """A batch of (B, T, S, S, 3) uint8 clips as (B, 3, T, S, S) float model input, on the clips' device.

    `flips` (B booleans) mirrors those clips left to right. The uint8 layout is already channels-last
    for the model's (B, 3, T, S, S) view, so `channels_last` keeps it without a copy; otherwise the
    result is contiguous."""
    planar = clips.permute(0, 4, 1, 2, 3)
    if flips is not None and bool(flips.any()):
        planar = torch.where(flips.view(-1, 1, 1, 1, 1).to(planar.device), planar.flip(-1), planar)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    out = planar.to(torch.float32, memory_format=memory_format)
    # (pixel / 255 - mean) / std as one multiply and one subtract, in place
    scale = torch.tensor([1 / (255 * s) for s in std], device=out.device).view(1, 3, 1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], device=out.device)
    return out.mul_(scale).sub_(shift.view(1, 3, 1, 1, 1))
