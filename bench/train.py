"""Training throughput through the real Trainer and data loader, and the share spent waiting for data.

A synthetic motion dataset is written to a temporary directory (by default 4 classes x 12 videos of 32 frames
at short side 128, the default stored size; a quarter of them become validation videos). Then, for each
DataLoader worker count, a `Trainer` runs in this process as a world of one (gloo; a fresh rendezvous port for
each): setup(), train() for `--epochs` epochs, close(). The model is R3D-18 (`--quick`: r3d-10 at width 0.25),
clips are 16 x 112 x 112 with the paper's training transforms, SGD at lr 0.003, batches of `--batch-size`.
The first epoch warms up (worker start, allocator, kernels); the last epoch's history record is reported:

    clips/s     training clips / the epoch's wall time (which includes the per-epoch validation pass: the
                middle window of each validation video)
    data wait   the share of the training loop spent waiting for the next batch, as the Trainer measures it
    epoch s     the epoch's wall time
    wall s      the whole setting: setup, every epoch, checkpoints, close

torch's intra-op thread count is left at its default (training uses the cores) and printed. For reference, the
model's own step rate (forward + backward + SGD on random input of the same shape, no loader, no DDP) is
timed first.

On a GPU (when torch sees one) the settings are those the paper's models train with there: R3D-50, bf16
autocast, channels_last_3d, batches of 64, one loader worker per core, 8 classes x 96 videos. The model
alone is then also reported in achieved TFLOP/s (the FLOPs of one training step counted by torch's
FlopCounterMode, over the measured step time) and as a share of the card's dense bf16 peak (known cards,
or --peak-tflops).

Targets (issue): CPU: data wait < 10% with 2 loader workers per core. GPU: >= 35% of the bf16 peak for the
model alone, and data wait < 5% through the loader.

    .venv/bin/python bench/train.py                 # CPU: R3D-18, workers 0, 2 and 2/core; ~75 s on 2 cores
    .venv/bin/python bench/train.py --quick         # a small model, for which the loader matters more
    .venv/bin/python bench/train.py --workers 4 8 --verbose     # chosen worker counts, with the Trainer's log
    .venv/bin/python bench/train.py --compile       # GPU: the training step under torch.compile
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.flop_counter import FlopCounterMode

from mega3d.trainer.data.format import index_uri
from mega3d.trainer.data.synth import synthesize
from mega3d.trainer.models import build_model
from mega3d.trainer.records import StageJob
from mega3d.trainer.spec import ClipSpec, EvaluationSpec, ModelSpec, PretrainSpec, SyntheticSpec
from mega3d.trainer.train import Trainer

CLIP_FRAMES = 16
CLIP_SIZE = 112
TARGET_DATA_WAIT = 0.10
WORKERS_PER_CORE = 2
GPU_TARGET_DATA_WAIT = 0.05
GPU_TARGET_PEAK_SHARE = 0.35
# Dense bf16 tensor-core peaks in TFLOP/s from the vendor's data sheets, by a part of the device name
# (first match wins: the PCIe and NVL H100s are slower than the SXM one).
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)


@dataclass(frozen=True)
class Model:
    name: str
    options: dict[str, Any]

    @property
    def label(self) -> str:
        width = self.options.get("widen_factor")
        return self.name if width is None else f"{self.name} x{width:g}"


FULL = Model("r3d-18", {})
QUICK = Model("r3d-10", {"widen_factor": 0.25})
GPU = Model("r3d-50", {})


@dataclass(frozen=True)
class Device:
    """Where and how the model trains: on a GPU in bf16 with channels_last_3d, on CPU in fp32."""

    device: torch.device

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.on_gpu else "CPU"

    @property
    def precision(self) -> Literal["fp32", "bf16"]:
        return "bf16" if self.on_gpu else "fp32"

    def peak_tflops(self) -> float | None:
        return next((peak for part, peak in BF16_PEAK_TFLOPS if part in self.name), None)

    def synchronize(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class Result:
    workers: int
    clips_per_s: float
    data_wait: float
    seconds: float
    wall: float


def fresh_rendezvous() -> None:
    """The torchrun environment of a single process on a port no earlier Trainer used: a second process
    group on the first one's port can hang."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


@dataclass(frozen=True)
class ModelRate:
    clips_per_s: float
    step_flops: float  # forward + backward of one batch

    def tflops(self, batch: int) -> float:
        return self.step_flops * self.clips_per_s / batch / 1e12


def model_rate(model: Model, n_classes: int, batch: int, steps: int, where: Device) -> ModelRate:
    """Forward + backward + SGD on random clips, after two warm-up steps (the first one counts the FLOPs):
    clips per second. On a GPU in bf16 autocast with channels_last_3d, as the Trainer runs there."""
    layout = torch.channels_last_3d if where.on_gpu else torch.contiguous_format
    net = build_model(model.name, n_classes, **model.options).to(where.device)
    net = net.to(memory_format=layout)  # type: ignore[call-overload]
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.003, momentum=0.9)
    inputs = torch.randn(batch, 3, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, device=where.device)
    inputs = inputs.contiguous(memory_format=layout)
    labels = torch.randint(0, n_classes, (batch,), device=where.device)

    def step() -> None:
        with torch.autocast(where.device.type, dtype=torch.bfloat16, enabled=where.on_gpu):
            loss = torch.nn.functional.cross_entropy(net(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    step()
    where.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    where.synchronize()
    return ModelRate(batch * steps / (time.perf_counter() - started), float(counter.get_total_flops()))


def run_setting(
    data: str, out_dir: str, model: Model, workers: int, where: Device, args: argparse.Namespace
) -> Result:
    """One Trainer from setup to close; its log is kept back unless --verbose (and shown if it fails)."""
    stage = PretrainSpec(
        datasets=["bench"],
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_workers=workers,
        clip=ClipSpec(frames=CLIP_FRAMES, size=CLIP_SIZE),
        precision=where.precision,
        channels_last=where.on_gpu,
        compile=args.compile,
    )
    job = StageJob(
        stage="bench",
        spec=stage,
        model=ModelSpec(name=model.name, **model.options),
        evaluation=EvaluationSpec(),
        experiment="bench",
        data_index=index_uri(data),
        out_dir=out_dir,  # a fresh one: a Trainer resumes from any epoch checkpoint it finds there
    )
    log = io.StringIO()
    started = time.perf_counter()
    fresh_rendezvous()
    trainer = Trainer(job)
    try:
        with contextlib.nullcontext() if args.verbose else contextlib.redirect_stdout(log):
            trainer.setup()
            trainer.train()
    except BaseException:
        sys.stderr.write(log.getvalue())
        raise
    finally:
        trainer.close()
    wall = time.perf_counter() - started
    last = trainer.state.history[-1]
    del trainer
    gc.collect()  # the loaders' persistent workers end with their iterators, before the next setting starts
    return Result(workers, last.clips_per_s, last.data_wait, last.seconds, wall)


def notice_checkpoint(classes: int, where: Device) -> tuple[float, int]:
    """Seconds and bytes of the step checkpoint a training process writes on SIGTERM, for R3D-50 with
    `classes` classes after one SGD step (weights and momentum: what the checkpoint holds at scale), to a
    local directory, verified as the Trainer writes it. This is what must fit in the grace period."""
    from mega3d.trainer.checkpoint import CheckpointHeader, RankProgress, TrainingState
    from mega3d.trainer.distributed import close_distributed, init_distributed
    from mega3d.trainer.schedule import LRSchedule
    from mega3d.trainer.spec import ScheduleSpec

    fresh_rendezvous()
    rank = init_distributed()
    try:
        net = build_model("r3d-50", classes).to(where.device)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.003, momentum=0.9)
        clip = torch.randn(1, 3, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, device=where.device)
        torch.nn.functional.cross_entropy(
            net(clip), torch.zeros(1, dtype=torch.long, device=where.device)
        ).backward()
        optimizer.step()  # the momentum buffers exist from here on
        state = TrainingState(
            net,
            optimizer,
            LRSchedule(optimizer, ScheduleSpec(), 0.003, 200),
            CheckpointHeader(arch="r3d-50"),
            rank,
        )
        progress = RankProgress(totals=[0.0] * 4, failed=0, non_finite_steps=0)
        with tempfile.TemporaryDirectory(prefix="bench-notice-") as stage_dir:
            started = time.perf_counter()
            state.save_epoch(stage_dir, 1, (progress, 1, 0.0))
            seconds = time.perf_counter() - started
            size = sum(f.stat().st_size for f in os.scandir(os.path.join(stage_dir, "checkpoints")))
        return seconds, size
    finally:
        close_distributed()


def default_workers(where: Device) -> list[int]:
    cores = os.cpu_count() or 1
    return [cores] if where.on_gpu else sorted({0, 2, WORKERS_PER_CORE * cores})


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=None, help="DataLoader worker counts (default: 0 2 2/core)"
    )
    parser.add_argument("--batch-size", type=int, help="clips per training step (default: CPU 4, GPU 64)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per setting; the last is reported")
    parser.add_argument("--classes", type=int, help="default: CPU 4, GPU 8")
    parser.add_argument(
        "--videos", type=int, help="videos per class, a quarter for validation (default: CPU 12, GPU 96)"
    )
    parser.add_argument("--frames", type=int, default=32, help="frames per video")
    parser.add_argument("--video-size", type=int, default=128, help="stored frame size of the videos")
    parser.add_argument("--model-steps", type=int, default=3, help="timed steps of the model alone (0: skip)")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK.label} instead of {FULL.label} / {GPU.label}"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the Trainer's training step")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not a known card")
    parser.add_argument("--verbose", action="store_true", help="show the Trainer's log")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first one warms up")
    where = Device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    model = QUICK if args.quick else GPU if where.on_gpu else FULL
    args.batch_size = args.batch_size or (64 if where.on_gpu else 4)
    args.classes = args.classes or (8 if where.on_gpu else 4)
    args.videos = args.videos or (96 if where.on_gpu else 12)
    workers = sorted(set(args.workers)) if args.workers else default_workers(where)
    cores = os.cpu_count() or 1
    target_workers = WORKERS_PER_CORE * cores
    # Two workers per core is more workers than cores on purpose: DataLoader's warning about it is noise here.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    begun = time.perf_counter()
    print(
        f"torch {torch.__version__} on {where.name}, {torch.get_num_threads()} intra-op threads (default), "
        f"os.cpu_count() = {cores}; {model.label} {where.precision}"
        f"{' channels_last_3d' if where.on_gpu else ''}{' compiled' if args.compile else ''}, "
        f"batch {args.batch_size} x 3x{CLIP_FRAMES}x{CLIP_SIZE}x{CLIP_SIZE}; "
        f"{args.epochs} epochs per setting, the last reported"
    )
    print(
        f"load average (1 min) at start: {os.getloadavg()[0]:.2f}  (other work on the cores skews the rates)"
    )
    peak = args.peak_tflops or where.peak_tflops()
    peak_share: float | None = None
    if args.model_steps:
        rate = model_rate(model, args.classes, args.batch_size, args.model_steps, where)
        achieved = rate.tflops(args.batch_size)
        print(
            f"model alone (forward+backward+SGD, random input, {args.model_steps} steps): "
            f"{rate.clips_per_s:.2f} clips/s, {args.batch_size / rate.clips_per_s:.3f} s/step, "
            f"{rate.step_flops / args.batch_size / 1e9:.1f} GFLOP per clip, {achieved:.2f} TFLOP/s"
        )
        if peak:
            peak_share = achieved / peak
            print(f"  {peak_share:.1%} of the {peak:g} TFLOP/s dense bf16 peak of {where.name}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        params = SyntheticSpec(
            classes=args.classes, videos_per_class=args.videos, frames=args.frames, size=args.video_size
        )
        started = time.perf_counter()
        data = os.path.join(tmp, "data")
        index = synthesize(data, params)
        n_train, n_val = len(index.rows("training")), len(index.rows("validation"))
        print(
            f"dataset: {n_train} training + {n_val} validation videos, {args.frames} frames at "
            f"{args.video_size}x{args.video_size}, written in {time.perf_counter() - started:.1f} s; "
            f"{n_train // args.batch_size} steps per epoch"
        )
        results: list[Result] = []
        for n in workers:
            results.append(run_setting(data, os.path.join(tmp, f"out-{n}"), model, n, where, args))
            print(f"  workers {n}: done in {results[-1].wall:.1f} s", flush=True)
    print()
    print("{:>7} {:>8} {:>10} {:>8} {:>7}".format("workers", "clips/s", "data wait", "epoch s", "wall s"))
    for r in results:
        print(f"{r.workers:>7} {r.clips_per_s:>8.2f} {r.data_wait:>10.1%} {r.seconds:>8.1f} {r.wall:>7.1f}")
    print()
    if where.on_gpu:
        text = f"share of the bf16 peak >= {GPU_TARGET_PEAK_SHARE:.0%} ({model.label}, model alone)"
        if peak_share is None:
            print(f"  {text:<50} not measured (--model-steps 0, or an unknown card: give --peak-tflops)")
        else:
            print(f"  {text:<50} {peak_share:>7.1%} {verdict(peak_share >= GPU_TARGET_PEAK_SHARE)}")
        wait = min(r.data_wait for r in results)
        text = f"data wait < {GPU_TARGET_DATA_WAIT:.0%} (best of workers {', '.join(map(str, workers))})"
        print(f"  {text:<50} {wait:>7.1%} {verdict(wait < GPU_TARGET_DATA_WAIT)}")
    else:
        at_target = [r for r in results if r.workers == target_workers]
        text = f"data wait < {TARGET_DATA_WAIT:.0%} at {WORKERS_PER_CORE} workers per core ({target_workers})"
        if at_target:
            wait = at_target[0].data_wait
            print(f"  {text:<50} {wait:>7.1%} {verdict(wait < TARGET_DATA_WAIT)}")
        else:
            print(f"  {text:<50} not measured (add {target_workers} to --workers)")
        print("  GPU targets (bf16 peak share, data wait < 5%): not measured, no GPU here")
    seconds, size = notice_checkpoint(1039, where)
    print(
        f"checkpoint on notice (SIGTERM), R3D-50 with 1,039 classes, weights + SGD momentum, written, read "
        f"back and verified on local disk: {seconds:.1f} s, {size / 1e6:.0f} MB"
    )
    print(
        f"total {time.perf_counter() - begun:.0f} s; load average (1 min) at the end: "
        f"{os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
