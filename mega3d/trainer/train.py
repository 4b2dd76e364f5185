"""The Trainer: DDP training and evaluation of one stage, in explicit phases.

    setup()     process group, data, model (fresh or from a checkpoint), frozen modules, optimizer, resume
    train()     epochs of train_epoch() + validate(); LR drops on a validation-loss plateau; save() each epoch
    evaluate()  clip accuracy and video top-1/top-5 over every non-overlapping window of a split
    close()     leave the process group

Ranks come from the torchrun environment; without torchrun the Trainer runs as a world of one.
gloo on CPU, nccl on GPU. Only rank 0 writes to storage.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mega3d.trainer import storage
from mega3d.trainer.checkpoint import load_checkpoint, load_latest, save_checkpoint, save_epoch
from mega3d.trainer.data.augment import Augmentation, normalize
from mega3d.trainer.data.clips import EvaluationWindows, TrainingClips, collate_clips
from mega3d.trainer.data.format import DatasetError, DatasetIndex, load_index
from mega3d.trainer.evaluate import RankShare, summarize, summarize_multi_label, top_predictions
from mega3d.trainer.exporter import Endpoints, Exporter
from mega3d.trainer.layout import CHECKPOINT_FILE, METRICS_FILE, RESULTS_FILE
from mega3d.trainer.model_catalog import canonical_name
from mega3d.trainer.models import build_model, load_weights
from mega3d.trainer.prefetch import prefetched

PROGRESS_EVERY_S = 20.0


@dataclass(frozen=True)
class TrainJob:
    """Everything one stage needs, as plain values (built from the spec by the entry point)."""

    stage: str
    data_index: str
    out_dir: str
    model_name: str
    model_options: dict[str, Any] = field(default_factory=dict)
    init_checkpoint: str | None = None
    new_head: bool = False  # fine-tuning: a checkpoint's head for other classes is replaced
    train_from: str | None = None
    epochs: int = 1
    batch_size: int = 8
    num_workers: int = 0
    clip_frames: int = 16
    augmentation: Augmentation = field(default_factory=Augmentation)
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 0.001
    nesterov: bool = False
    schedule: str = "plateau"  # plateau | multistep | cosine
    patience: int = 10
    factor: float = 0.1
    milestones: tuple[int, ...] = ()
    warmup_epochs: int = 0
    accumulate: int = 1  # steps whose gradients add up before an update
    seed: int = 0
    checkpoint_every: int = 1  # epochs
    keep_checkpoints: int = 2
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False  # torch.compile the training step
    sync_batchnorm: bool = False  # GPUs only
    eval_split: str = "validation"
    eval_batch_size: int = 32
    cache_dir: str | None = None
    max_unreadable: float = 0.01  # fraction of clips per epoch that may fail to decode
    experiment: str = "mega3d"  # the spec's name, a label of the Prometheus metrics


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def scheduled_lr(job: TrainJob, epoch: int) -> float | None:
    """The learning rate of an epoch (from 1) where the schedule fixes it: during warm-up, and for the
    multistep and cosine schedules; None where a plateau schedule decides from validation losses."""
    if epoch <= job.warmup_epochs:
        return job.lr * epoch / job.warmup_epochs
    if job.schedule == "multistep":
        return job.lr * job.factor ** sum(1 for milestone in job.milestones if milestone <= epoch)
    if job.schedule == "cosine":
        done = (epoch - 1 - job.warmup_epochs) / (job.epochs - job.warmup_epochs)
        return job.lr * 0.5 * (1 + math.cos(math.pi * done))
    return None


def duration(seconds: float) -> str:
    """4s, 3m05s, 2h07m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def init_distributed() -> Rank:
    if "RANK" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), device)


def gather(value: Any) -> list[Any]:
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def freeze_before(model: nn.Module, first_trained: str) -> list[nn.Module]:
    """Freeze every module that comes before `first_trained` in the model's (forward) order.

    Returns the frozen modules; the Trainer keeps them in eval mode, so their BatchNorm statistics stay
    fixed as well (requires_grad=False alone would still update them).
    """
    names = dict(model.named_modules())
    if first_trained not in names:
        raise ValueError(f"train_from: the model has no module {first_trained!r}")
    frozen: list[str] = []
    for name, module in model.named_modules():
        if name == first_trained:
            break
        inside_frozen = any(name.startswith(f"{outer}.") for outer in frozen)
        encloses_target = name == "" or first_trained.startswith(f"{name}.")
        if not inside_frozen and not encloses_target:
            module.requires_grad_(False)
            frozen.append(name)
    return [names[name] for name in frozen]


def set_train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    model.train()
    for module in frozen:
        module.eval()


class Trainer:
    def __init__(self, job: TrainJob) -> None:
        self.job = job
        self.checkpoint_uri = storage.join(job.out_dir, CHECKPOINT_FILE)
        self.history: list[dict[str, float]] = []
        self.start_epoch = 1

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        job = self.job
        self.rank = init_distributed()
        random.seed(job.seed + self.rank.rank)
        torch.manual_seed(job.seed + self.rank.rank)
        self.step = 0  # optimizer updates so far
        self.ranks = gather({"rank": self.rank.rank, "pid": os.getpid(), "host": socket.gethostname()})
        self.index: DatasetIndex = load_index(job.data_index)
        self.classes = self.index.classes
        self.exporter = Exporter(
            job.experiment, job.stage, self.rank.rank, self.rank.world_size, Endpoints.from_environment()
        )
        self.exporter.describe(job.model_name, self.index.fingerprint)
        self.unreadable = 0
        self.model = self._build_model().to(self.rank.device)
        if job.channels_last:
            # Module.to's type stubs omit memory_format, which it accepts.
            self.model = self.model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        if job.sync_batchnorm:  # before freezing: frozen BatchNorm modules must be the ones that run
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.frozen = freeze_before(self.model, job.train_from) if job.train_from else []
        on_gpu = self.rank.device.type == "cuda"
        if on_gpu:
            torch.backends.cudnn.benchmark = True  # clips have one shape: pick the fastest kernels once
        # A GPU stage run where torch sees no GPU trains in fp32: CPU bf16 3D convolutions are unreliable.
        self.bf16 = job.precision == "bf16" and on_gpu
        self.ddp = DistributedDataParallel(
            self.model, device_ids=[self.rank.device.index] if on_gpu else None
        )
        # What a training step calls; compiled, it is still the DDP module underneath (no_sync, state).
        self.step_model: nn.Module = torch.compile(self.ddp) if job.compile else self.ddp  # type: ignore[assignment]
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            trainable, lr=job.lr, momentum=job.momentum, weight_decay=job.weight_decay, nesterov=job.nesterov
        )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=job.factor, patience=job.patience
        )
        # Multi-label data (several tags per video, e.g. HVU): one sigmoid per class.
        self.loss_fn = nn.BCEWithLogitsLoss() if self.index.multi_label else nn.CrossEntropyLoss()
        self._resume()
        if job.precision == "bf16" and not self.bf16:
            self.log("no GPU here: training in fp32 instead of bf16")
        members = ", ".join(f"rank {r['rank']} pid {r['pid']}" for r in self.ranks)
        self.log(
            f"world size {self.rank.world_size} ({members}); "
            f"{len(self.classes)} classes; {job.model_name}; "
            f"{sum(p.numel() for p in trainable):,} of {sum(p.numel() for p in self.model.parameters()):,} "
            "parameters trained"
        )

    def _build_model(self) -> nn.Module:
        job = self.job
        model = build_model(job.model_name, len(self.classes), **job.model_options)
        if job.init_checkpoint is not None:
            state = load_checkpoint(job.init_checkpoint)
            arch = canonical_name(str(state.get("arch", job.model_name)))
            if arch != job.model_name:
                raise ValueError(
                    f"{job.init_checkpoint} holds a {arch} model; the spec's model is {job.model_name}"
                )
            same_classes = state.get("classes") == self.classes
            if not job.new_head and state.get("classes") is not None and not same_classes:
                raise ValueError(
                    f"{job.init_checkpoint} was trained on other classes than those of {job.data_index}: "
                    "scores against these labels would mean nothing"
                )
            # Fine-tuning keeps the head only when the checkpoint was trained on exactly these classes.
            load_weights(model, state, new_head=job.new_head and not same_classes, where=job.init_checkpoint)
        return model

    def _resume(self) -> None:
        """A restarted job (Volcano restarts every pod on any failure) continues after the newest epoch
        checkpoint, as if it had not stopped: weights, optimizer, schedule, step and every rank's random
        state (so the next epoch samples the clips and augmentations it would have)."""
        state = load_latest(self.job.out_dir)
        if state is None:
            return
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = json.loads(state["history"])
        self.start_epoch = int(state["epoch"]) + 1
        self.step = int(state["step"])
        rng = state["rng"]
        if len(rng) == self.rank.world_size:  # the same world: each rank continues its own sequence
            python_state, torch_state = rng[self.rank.rank]
            random.setstate(python_state)
            torch.set_rng_state(torch_state)
        self.log(f"resuming after epoch {state['epoch']} (step {self.step}) from {self.job.out_dir}")

    def _loader(
        self, dataset: Dataset[Any], batch_size: int, shuffle: bool, drop_last: bool = False
    ) -> DataLoader[Any]:
        """Training: DistributedSampler (shuffled, padded so that every rank takes as many DDP steps).
        Evaluation: each window on exactly one rank."""
        sampler: Sampler[int] = (
            DistributedSampler(dataset, shuffle=True, drop_last=False)
            if shuffle
            else RankShare(len(dataset), self.rank.rank, self.rank.world_size)  # type: ignore[arg-type]
        )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.job.num_workers,
            persistent_workers=self.job.num_workers > 0,
            pin_memory=self.rank.device.type == "cuda",
            collate_fn=None if shuffle else collate_clips,
        )

    def count_unreadable(self, failed: torch.Tensor, clips: int, what: str) -> None:
        """Add up clips that could not be decoded on all ranks; stop when there are too many."""
        dist.all_reduce(failed)
        self.unreadable += int(failed)
        if int(failed) > self.job.max_unreadable * max(clips, 1):
            raise DatasetError(
                f"{self.job.data_index}: {int(failed)} of {clips} clips in {what} could not be decoded, "
                f"more than the limit of {self.job.max_unreadable:.1%} (max_unreadable)"
            )

    # ---- training ----------------------------------------------------------------------------------
    def train(self) -> None:
        job = self.job
        clips = TrainingClips(self.index, "training", job.clip_frames, job.augmentation, job.cache_dir)
        for split, rows in (("training", clips.rows), (job.eval_split, self.index.rows(job.eval_split))):
            if not len(rows):  # found now rather than after the last epoch
                raise ValueError(f"{job.data_index}: the dataset has no {split} videos")
        # BatchNorm cannot train on a batch of one clip: drop a short last batch, and refuse a dataset that
        # leaves a process fewer than two clips.
        per_process = math.ceil(len(clips) / self.rank.world_size)
        if per_process < 2:
            raise ValueError(
                f"{job.data_index}: {len(clips)} training videos for {self.rank.world_size} processes; "
                "each process needs at least 2"
            )
        loader = self._loader(clips, job.batch_size, shuffle=True, drop_last=per_process >= job.batch_size)
        val_windows = EvaluationWindows(
            self.index,
            "validation",
            job.clip_frames,
            job.augmentation.size,
            middle_only=True,
            cache_dir=job.cache_dir,
        )
        val_loader = (
            self._loader(val_windows, job.eval_batch_size, shuffle=False) if len(val_windows) else None
        )
        for epoch in range(self.start_epoch, job.epochs + 1):
            assert isinstance(loader.sampler, DistributedSampler)
            loader.sampler.set_epoch(epoch)
            started = time.monotonic()
            lr = scheduled_lr(job, epoch)
            if lr is not None:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            lr_used = self.optimizer.param_groups[0]["lr"]
            trained = self.train_epoch(loader, epoch)
            val_loss = (
                self.validate(val_loader, len(val_windows))
                if val_loader is not None
                else trained["train_loss"]
            )
            if job.schedule == "plateau" and epoch >= job.warmup_epochs:
                self.scheduler.step(val_loss)
            seconds = time.monotonic() - started
            record = {
                "epoch": epoch,
                "train_loss": trained["train_loss"],
                "train_accuracy": trained["train_accuracy"],
                "val_loss": val_loss,
                "lr": lr_used,
                "clips_per_s": trained["clips"] / seconds,
                "data_wait": trained["data_wait"],
                "seconds": seconds,
                "unreadable": self.unreadable,
            }
            self.history.append(record)
            self.exporter.record_epoch(epoch, lr_used, self.rank.device)
            self.save(epoch)
            this_run = [r["seconds"] for r in self.history[-(epoch - self.start_epoch + 1) :]]
            eta = sum(this_run) / len(this_run) * (job.epochs - epoch)
            self.log(
                f"epoch {epoch}/{job.epochs}  loss {record['train_loss']:.3f}  "
                f"acc {record['train_accuracy']:.3f}  val-loss {val_loss:.3f}  lr {record['lr']:.2g}  "
                f"{record['clips_per_s']:.0f} clips/s  data wait {record['data_wait']:.0%}  {seconds:.1f}s  "
                f"ETA {duration(eta)}"
            )
        self.save_final()

    def model_input(self, clips: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 clips from the loader, on the device, flipped where `flips` says and normalised."""
        augmentation = self.job.augmentation
        on_device = clips.to(self.rank.device, non_blocking=True)
        return normalize(on_device, augmentation.mean, augmentation.std, flips, self.job.channels_last)

    def training_batch(self, batch: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clips, flips, labels, skipped = batch
        return self.model_input(clips, flips), labels.to(self.rank.device, non_blocking=True), skipped

    def evaluation_batch(self, batch: tuple[Any, ...]) -> tuple[Any, ...]:
        clips, *rest = batch
        return (None if clips is None else self.model_input(clips), *rest)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.rank.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_epoch(self, loader: DataLoader[Any], epoch: int) -> dict[str, float]:
        """One pass over the training clips: loss, accuracy, clips, and the share of the time spent waiting
        for the loader (averaged over ranks)."""
        set_train_mode(self.model, self.frozen)
        totals = torch.zeros(4, dtype=torch.float64)  # loss sum, correct, clips, seconds waiting for data
        failed = torch.zeros(1, dtype=torch.float64)
        started = last_report = asked = time.monotonic()
        batches = prefetched(loader, self.training_batch, self.rank.device)
        for step, (clips, labels, skipped) in enumerate(batches, 1):
            waited = time.monotonic() - asked
            totals[3] += waited
            failed += skipped.sum()
            self.exporter.unreadable_videos.inc(int(skipped.sum()))
            update = step % self.job.accumulate == 0 or step == len(loader)
            loss, correct = self.train_step(clips, labels, update)
            totals[:3] += torch.tensor([loss * len(labels), correct, len(labels)], dtype=torch.float64)
            now = time.monotonic()
            self.exporter.record_step(now - asked, waited, len(labels), loss)
            if now - last_report > PROGRESS_EVERY_S:
                last_report = now
                eta = (now - started) / step * (len(loader) - step)
                self.log(
                    f"epoch {epoch}  step {step}/{len(loader)}  loss {totals[0] / totals[2]:.3f}  "
                    f"data wait {totals[3] / (now - started):.0%}  epoch ends in {duration(eta)}"
                )
            asked = time.monotonic()
        seconds = time.monotonic() - started
        dist.all_reduce(totals)
        loss_sum, correct, n, waited = totals.tolist()
        self.count_unreadable(failed, int(n + failed.item()), f"training epoch {epoch}")
        return {
            "train_loss": loss_sum / max(n, 1),
            "train_accuracy": correct / max(n, 1),
            "clips": n,
            "data_wait": waited / self.rank.world_size / max(seconds, 1e-9),
        }

    def train_step(self, clips: torch.Tensor, labels: torch.Tensor, update: bool = True) -> tuple[float, int]:
        """Forward and backward; the optimizer steps when `update` (gradients of the steps in between add
        up, and DDP synchronises them only once, on the updating step)."""
        with contextlib.nullcontext() if update else self.ddp.no_sync():
            with self.autocast():
                logits = self.step_model(clips)
                loss = self.loss_fn(logits.float(), labels)
            (loss / self.job.accumulate).backward()
        if update:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        return float(loss.detach()), self.top1_hits(logits, labels)

    def top1_hits(self, scores: torch.Tensor, labels: torch.Tensor) -> int:
        """Clips whose top class is their label (multi-label: one of their labels)."""
        top = scores.argmax(1)
        if self.index.multi_label:
            return int(labels.gather(1, top[:, None]).sum())
        return int((top == labels).sum())

    @torch.no_grad()
    def validate(self, loader: DataLoader[Any], n_windows: int) -> float:
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64)
        failed = torch.zeros(1, dtype=torch.float64)
        for clips, labels, _, unreadable in prefetched(loader, self.evaluation_batch, self.rank.device):
            failed += unreadable
            self.exporter.unreadable_videos.inc(unreadable)
            if clips is None:
                continue
            with self.autocast():
                logits = self.model(clips).float()
            loss = self.loss_fn(logits, labels.to(self.rank.device)) * len(labels)  # summed over clips
            totals += torch.tensor([float(loss), len(labels)], dtype=torch.float64)
        dist.all_reduce(totals)
        self.count_unreadable(failed, n_windows, "validation")
        return float(totals[0] / max(float(totals[1]), 1.0))

    # ---- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, Any]:
        """Per-video probability sums are reduced across ranks: memory grows with videos x classes, not
        with the number of windows. A video none of whose windows could be decoded is left out."""
        job = self.job
        windows = EvaluationWindows(
            self.index, split, job.clip_frames, job.augmentation.size, cache_dir=job.cache_dir
        )
        if len(windows) == 0:
            raise ValueError(f"{job.data_index}: the dataset has no {split} videos")
        self.model.eval()
        n_videos = len(windows.rows)
        sums = torch.zeros(n_videos, len(self.classes), dtype=torch.float64)
        counts = torch.zeros(n_videos, dtype=torch.float64)
        correct = torch.zeros(1, dtype=torch.float64)
        failed = torch.zeros(1, dtype=torch.float64)
        loader = self._loader(windows, job.eval_batch_size, shuffle=False)
        for clips, labels, numbers, unreadable in prefetched(loader, self.evaluation_batch, self.rank.device):
            failed += unreadable
            self.exporter.unreadable_videos.inc(unreadable)
            if clips is None:
                continue
            with self.autocast():
                logits = self.model(clips)
            to_probabilities = torch.sigmoid if self.index.multi_label else partial(torch.softmax, dim=1)
            probs = to_probabilities(logits.float()).double().cpu()
            sums.index_add_(0, numbers, probs)
            counts.index_add_(0, numbers, torch.ones(len(numbers), dtype=torch.float64))
            correct += self.top1_hits(probs, labels)
        for total in (sums, counts, correct):
            dist.all_reduce(total)
        self.count_unreadable(failed, len(windows), f"the {split} split")
        read = counts.numpy() > 0
        rows = windows.rows[read]
        video_sums, video_counts = sums.numpy()[read], counts.numpy()[read]
        if self.index.multi_label:
            targets = self.index.multi_hot(rows)
            metrics = summarize_multi_label(video_sums, video_counts, int(correct.item()), targets)
        else:
            metrics = summarize(
                video_sums, video_counts, int(correct.item()), self.index.single_labels()[rows]
            )
        if self.rank.is_main:
            ids = [video_id.decode() for video_id in self.index.columns["id"][rows].tolist()]
            predictions = top_predictions(video_sums / video_counts[:, None], self.classes)
            results = {"results": dict(zip(ids, predictions, strict=True))}
            storage.write_json(storage.join(job.out_dir, RESULTS_FILE), results)
        self.exporter.record_evaluation(metrics)
        per_class_key = "per_class_ap" if self.index.multi_label else "per_class_accuracy"
        per_class = zip(self.classes, metrics.pop(per_class_key), strict=True)
        return {
            "split": split,
            "unreadable": self.unreadable,
            **metrics,
            per_class_key: {name: value for name, value in per_class if value is not None},
        }

    # ---- persistence -------------------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        """The stage as a checkpoint: the reference's fields, mega3d's, and what resuming needs."""
        return {
            "epoch": epoch,
            "step": self.step,
            "arch": self.job.model_name,
            "model_options": self.job.model_options,
            "n_classes": len(self.classes),
            "classes": self.classes,
            "clip": {  # for predictions
                "frames": self.job.clip_frames,
                "size": self.job.augmentation.size,
                "mean": list(self.job.augmentation.mean),
                "std": list(self.job.augmentation.std),
            },
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": json.dumps(self.history),
        }

    def save(self, epoch: int) -> None:
        """Every `checkpoint_every` epochs and after the last, a verified epoch checkpoint (with every
        rank's random state: a collective, so all ranks call it)."""
        job = self.job
        if epoch % job.checkpoint_every and epoch != job.epochs:
            return
        rng = gather((random.getstate(), torch.get_rng_state()))
        if self.rank.is_main:
            save_epoch(job.out_dir, epoch, {**self.state(epoch), "rng": rng}, job.keep_checkpoints)

    def save_final(self) -> None:
        """The stage's trained model, which later stages and evaluation start from."""
        if self.rank.is_main:
            save_checkpoint(self.checkpoint_uri, self.state(self.job.epochs))

    def write_metrics(self, evaluation: dict[str, Any], seconds: float, checkpoint: str) -> dict[str, Any]:
        metrics = {
            "stage": self.job.stage,
            "world_size": self.rank.world_size,
            "ranks": self.ranks,
            "classes": self.classes,
            "checkpoint": checkpoint,
            "job": asdict(self.job),
            "history": self.history,
            "seconds": seconds,
            **evaluation,
        }
        if self.rank.is_main:
            storage.write_json(storage.join(self.job.out_dir, METRICS_FILE), metrics)
        return metrics

    def log(self, message: str) -> None:
        if self.rank.is_main:
            print(f"[{self.job.stage}] {message}", flush=True, file=sys.stdout)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
