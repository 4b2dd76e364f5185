"""Predict the action in one's own video with a trained mega3d checkpoint, as the paper scores a video.

    python -m mega3d.trainer.predict VIDEO --model URI [--top 5] [--frames F] [--size S] [--short-side 128]

prints one JSON object on stdout, a `records.Prediction`: {"video", "model", "arch", "windows",
"window_frames", "frames", "seconds", "top": [{"label", "score"}, ...]}; `top` entries have the reference
implementation's results layout.
Bad input (a missing or undecodable video, a missing or unreadable checkpoint, one without class names,
one whose weights give scores that are not finite numbers) ends with one line `error: ...` on stderr and
exit code 2; what is printed is always valid JSON. The torch-free CLI (`mega3d predict`) runs this in a
subprocess.

Frames are seen as training saw them: every frame is decoded by PyAV, scaled down to `short_side` pixels on
its short side and stored as JPEG, exactly as `mega3d data ingest` writes a video file; windows are then
decoded from those JPEG frames as the dataset reader does. The video is cut into non-overlapping windows of
`frames` frames (the last one looped to full length when short), each window is centre-cropped and resized
to `size` (the evaluation transform), and the softmax probabilities of the windows are averaged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mega3d.trainer.checkpoint import CheckpointError, CheckpointHeader, load_checkpoint
from mega3d.trainer.data.augment import center_box, crop_resize, normalize
from mega3d.trainer.data.format import decode_jpeg, encode_jpeg
from mega3d.trainer.data.ingest import frame_pixels  # frames must look as they do in training
from mega3d.trainer.models import WeightsError, build_model, load_weights
from mega3d.trainer.records import ClipShape, Prediction, ScoredLabel

BATCH_WINDOWS = 8  # windows per forward pass
DEFAULT_FPS = 30.0  # as ingest assumes when a stream does not say


class PredictError(ValueError):
    """Bad input: reported as one line, exit code 2."""


@dataclass(frozen=True)
class DecodedVideo:
    """A video's frames as a dataset stores them: JPEG bytes at most `short_side` on the short side."""

    jpegs: list[bytes]
    height: int
    width: int
    fps: float

    @property
    def seconds(self) -> float:
        return len(self.jpegs) / self.fps


def decode_video(path: str, short_side: int) -> DecodedVideo:
    """Every frame of a video file, scaled down and JPEG-encoded one at a time (a long video costs its JPEG
    bytes in memory, not its raw frames)."""
    import av

    if not Path(path).is_file():
        what = "is a directory, not a video file" if Path(path).is_dir() else "no such file"
        raise PredictError(f"{path}: {what}")
    jpegs: list[bytes] = []
    height = width = 0
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise PredictError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or DEFAULT_FPS)
            for frame in container.decode(stream):
                pixels = frame_pixels(frame, short_side)
                height, width = pixels.shape[:2]
                jpegs.append(encode_jpeg(pixels))
    except PredictError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:  # what PyAV raises for bytes it cannot decode
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise PredictError(f"{path}: cannot decode it as a video ({reason})") from None
    if not jpegs:
        raise PredictError(f"{path}: no frames could be decoded")
    return DecodedVideo(jpegs, height, width, fps)


def window_count(n_frames: int, frames: int) -> int:
    """Non-overlapping windows covering the video, the last one looped if short (as evaluation cuts it)."""
    return -(-n_frames // frames)


def window_clip(video: DecodedVideo, window: int, frames: int, size: int) -> torch.Tensor:
    """Window `window` as (frames, size, size, 3) uint8: its frames looped to full length when short,
    centre crop of the short side, resized."""
    start = window * frames
    stop = min(start + frames, len(video.jpegs))
    clip = np.empty((stop - start, video.height, video.width, 3), dtype=np.uint8)
    for i in range(start, stop):
        decode_jpeg(video.jpegs[i], out=clip[i - start])
    tensor = torch.from_numpy(clip)
    if tensor.shape[0] < frames:
        tensor = tensor[torch.arange(frames) % tensor.shape[0]]
    return crop_resize(tensor, center_box(video.height, video.width), size)


def batches(video: DecodedVideo, clip: ClipShape) -> Iterator[torch.Tensor]:
    """Model input for all windows, BATCH_WINDOWS at a time."""
    n = window_count(len(video.jpegs), clip.frames)
    for first in range(0, n, BATCH_WINDOWS):
        windows = range(first, min(first + BATCH_WINDOWS, n))
        stacked = torch.stack([window_clip(video, w, clip.frames, clip.size) for w in windows])
        yield normalize(stacked, clip.mean, clip.std)


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module  # in eval mode
    classes: list[str]
    arch: str
    clip: ClipShape


def load_model(uri: str) -> LoadedModel:
    """The checkpoint's model in eval mode, its class names, architecture and clip shape."""
    try:
        state = load_checkpoint(uri)
        header = CheckpointHeader.of(state, uri)
    except (WeightsError, CheckpointError) as error:
        raise PredictError(str(error)) from None
    except FileNotFoundError:
        raise PredictError(f"{uri}: no such checkpoint") from None
    except OSError as error:  # a directory, no permission, an object store that cannot be reached
        reason = error.strerror or str(error) or type(error).__name__
        raise PredictError(f"{uri}: cannot read the checkpoint ({reason})") from None
    except (ImportError, ValueError) as error:  # a URI scheme unknown, or its filesystem not installed
        raise PredictError(f"{uri}: cannot read the checkpoint ({error})") from None
    classes = header.classes
    if not classes:
        raise PredictError(
            f"{uri}: the checkpoint names no classes (a reference .pth, or one converted by `mega3d models "
            "import`): fine-tune it on labelled videos first (`init_from:` in a spec), then predict with "
            "the checkpoint the fine-tuning writes"
        )
    arch = header.model_name or ""
    try:
        model = build_model(arch, len(classes), **header.model_options)
        load_weights(model, state, where=uri)  # strict: every tensor must fit
    except KeyError as error:  # an unknown architecture
        raise PredictError(f"{uri}: {error.args[0]}") from None
    except (WeightsError, ValueError, TypeError) as error:
        raise PredictError(f"{uri}: {error}" if uri not in str(error) else str(error)) from None
    return LoadedModel(model.eval(), classes, arch, header.clip or ClipShape())


@torch.no_grad()
def video_probabilities(model: nn.Module, video: DecodedVideo, clip: ClipShape) -> torch.Tensor:
    """The softmax probabilities of all windows, averaged (float64)."""
    total: torch.Tensor | None = None
    for clips in batches(video, clip):
        probs = torch.softmax(model(clips).float(), dim=1).double().sum(0)
        total = probs if total is None else total + probs
    assert total is not None  # a decoded video has at least one frame, hence one window
    return total / window_count(len(video.jpegs), clip.frames)


def predict(
    video_path: str,
    checkpoint_uri: str,
    frames: int | None = None,
    size: int | None = None,
    short_side: int = 128,
    top: int = 5,
) -> Prediction:
    """The video-level prediction: the `top` classes with their averaged window probabilities. Windows
    of `frames` x `size` x `size`; by default the clip shape the checkpoint was trained on (else 16, 112)."""
    for name, value in (("frames", frames), ("size", size), ("short_side", short_side), ("top", top)):
        if value is not None and value < 1:
            raise PredictError(f"{name} must be at least 1, got {value}")
    if not Path(video_path).exists():  # before the checkpoint is read: a typo is reported at once
        raise PredictError(f"{video_path}: no such file")
    loaded = load_model(checkpoint_uri)
    model, classes, arch = loaded.model, loaded.classes, loaded.arch
    clip = loaded.clip.model_copy(
        update={"frames": frames or loaded.clip.frames, "size": size or loaded.clip.size}
    )
    video = decode_video(video_path, short_side)
    probabilities = video_probabilities(model, video, clip)
    if not bool(torch.isfinite(probabilities).all()):  # NaN weights give NaN scores: not an answer
        raise PredictError(
            f"{checkpoint_uri}: the model's scores are not finite numbers (its weights are not: was its "
            "training diverged?)"
        )
    order = np.argsort(-probabilities.numpy(), kind="stable")[:top]
    return Prediction(
        video=video_path,
        model=checkpoint_uri,
        arch=arch,
        windows=window_count(len(video.jpegs), clip.frames),
        window_frames=clip.frames,
        frames=len(video.jpegs),
        seconds=round(video.seconds, 3),
        top=[ScoredLabel(label=classes[i], score=float(probabilities[i])) for i in order],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mega3d.trainer.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("video")
    parser.add_argument("-m", "--model", required=True, help="mega3d checkpoint: path or fsspec URI")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--frames", type=int, help="default: as trained (the checkpoint's clip), else 16")
    parser.add_argument("--size", type=int, help="default: as trained (the checkpoint's clip), else 112")
    parser.add_argument("--short-side", type=int, default=128)
    args = parser.parse_args(argv)
    try:
        result = predict(args.video, args.model, args.frames, args.size, args.short_side, args.top)
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result.to_json(), allow_nan=False))


if __name__ == "__main__":
    main()
