"""Does one data-loading worker keep up with the model? Measured side by side in one run.

For each setting it times (a) producing training clips from the shard format with the paper's transforms
(one process, no DataLoader workers) and (b) a forward+backward+SGD step of the model on such clips, and
prints both rates and their ratio: above 1.0, one loader worker feeds one training process.

    .venv/bin/python bench/throughput.py            # demo-sized and paper-sized settings
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass

import torch

from mega3d.trainer.data.augment import normalize
from mega3d.trainer.data.clips import TrainingClips
from mega3d.trainer.data.format import index_uri, load_index
from mega3d.trainer.data.synth import synthesize
from mega3d.trainer.models import build_model
from mega3d.trainer.spec import ClipSpec, SyntheticSpec


@dataclass(frozen=True)
class Setting:
    label: str
    model: str
    widen_factor: float
    video_size: int
    frames: int
    size: int
    batch: int


SETTINGS = (
    Setting("quickstart", "r3d-10", 0.25, 40, 8, 32, 16),
    Setting("paper input", "r3d-18", 1.0, 128, 16, 112, 2),
)


def clips_per_second(clips: TrainingClips, seconds: float) -> float:
    """Clips made per second, normalised one at a time (the Trainer normalises whole batches)."""
    done, started = 0, time.perf_counter()
    mean, std = clips.clip.mean, clips.clip.std
    while time.perf_counter() - started < seconds:
        clip, flip, _, _ = clips[done % len(clips)]
        normalize(clip[None], mean, std, torch.tensor([flip]))
        done += 1
    return done / (time.perf_counter() - started)


def steps_per_second(setting: Setting, n_classes: int, steps: int) -> float:
    model = build_model(setting.model, n_classes, widen_factor=setting.widen_factor)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs = torch.randn(setting.batch, 3, setting.frames, setting.size, setting.size)
    labels = torch.randint(0, n_classes, (setting.batch,))
    timings = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - started)
    return 1 / (sum(timings[1:]) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per setting")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    header = ("setting", "model", "input", "loader clips/s", "train clips/s", "ratio")
    print("{:<12} {:<22} {:<16} {:>15} {:>14} {:>7}".format(*header))
    for setting in SETTINGS:
        with tempfile.TemporaryDirectory() as tmp:
            params = SyntheticSpec(
                classes=4, videos_per_class=8, frames=2 * setting.frames, size=setting.video_size
            )
            synthesize(tmp, params)
            clip = ClipSpec(frames=setting.frames, size=setting.size)
            clips = TrainingClips(load_index(index_uri(tmp)), "training", clip)
            loader_rate = clips_per_second(clips, seconds=2.0)
        train_rate = steps_per_second(setting, params.classes, args.steps) * setting.batch
        model = f"{setting.model} x{setting.widen_factor:g}"
        shape = f"{setting.batch}x3x{setting.frames}x{setting.size}x{setting.size}"
        print(
            f"{setting.label:<12} {model:<22} {shape:<16} {loader_rate:>15.0f} {train_rate:>14.1f} "
            f"{loader_rate / train_rate:>7.1f}"
        )


if __name__ == "__main__":
    main()
