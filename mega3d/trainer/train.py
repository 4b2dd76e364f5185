"""The Trainer: DDP training and evaluation of one stage, in explicit phases.

    setup()     process group, data, model (fresh or from a checkpoint), frozen modules, optimizer, LR
                schedule, and the state of a restarted job's last epoch checkpoint
    train()     epochs of train_epoch() + validate(); the LR schedule steps on the validation loss; an epoch
                checkpoint after each epoch, the stage's checkpoint at the end; a step checkpoint on
                SIGTERM (then Preempted) and every `checkpoint_minutes`, from which a restarted stage
                continues at the next batch of that epoch
    evaluate()  clip accuracy and video top-1/top-5 over every non-overlapping window of a split
    close()     leave the process group

What has state of its own is its own object: the learning rate (`schedule.LRSchedule`), what checkpoints
save and restore (`checkpoint.TrainingState`), an evaluation's per-video scores (`evaluate.VideoScores`).
The Trainer runs a `records.StageJob`: the stage's spec as validated, with the values of this run.

Ranks come from the torchrun environment; without torchrun the Trainer runs as a world of one.
gloo on CPU, nccl on GPU. Only rank 0 writes to storage.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from mega3d.trainer import environment, storage
from mega3d.trainer.checkpoint import (
    CheckpointHeader,
    EpochProgress,
    RankProgress,
    TrainingState,
    load_checkpoint,
)
from mega3d.trainer.data.augment import normalize
from mega3d.trainer.data.clips import EvaluationWindows, TrainingClips, collate_clips
from mega3d.trainer.data.format import DatasetError, DatasetIndex, load_index
from mega3d.trainer.distributed import close_distributed, gather, init_distributed
from mega3d.trainer.evaluate import RankShare, VideoScores, top1_hits
from mega3d.trainer.exporter import Endpoints, Exporter
from mega3d.trainer.layout import CHECKPOINT_FILE, METRICS_FILE, RESULTS_FILE
from mega3d.trainer.lifetime import StopNotice
from mega3d.trainer.models import build_model, load_weights
from mega3d.trainer.prefetch import prefetched
from mega3d.trainer.records import ClipShape, EpochRecord, RankInfo, StageJob, StageMetrics
from mega3d.trainer.schedule import LRSchedule

PROGRESS_EVERY_S = 20.0
# Non-finite losses in a row that end a stage. One already poisons the weights at the next update (no
# gradient scaler skips such a step), and every later loss follows; three in a row show a state that lasts
# rather than one odd batch, and cost seconds where the end of the epoch can be hours away.
DIVERGED_STEPS = 3


def duration(seconds: float) -> str:
    """4s, 3m05s, 2h07m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


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


class Diverged(RuntimeError):
    """The training loss is no longer a finite number: the stage fails rather than save such weights."""


class Preempted(RuntimeError):
    """SIGTERM came: every rank finished the step, and a step checkpoint holds where the stage was."""


class TrainingOrder(Sampler[tuple[int, int]]):
    """The clips of this rank in a training epoch, each with the seed of its random draws (see
    TrainingClips).

    The epoch's order is a permutation of the videos seeded by the stage's seed and the epoch, cut into
    `steps` global batches of `batch` x `processes` x `accumulate` clips (what does not fill a global batch
    waits for another epoch), and those into batches of `batch` numbered 0, 1, ... from the start: rank r
    takes batches r, r + processes, r + 2 x processes, ... So batch k holds the same clips, drawn alike, on
    any number of processes that share the global batch in batches of that size: a stage that goes on at
    another world size (elastic nodes) sees the clips its first world size would have, at every update.
    `skip`: global batches of the epoch done (a step checkpoint's), left out."""

    def __init__(
        self, videos: int, batch: int, processes: int, accumulate: int, rank: int, seed: int
    ) -> None:
        self.videos, self.batch, self.processes, self.accumulate = videos, batch, processes, accumulate
        self.rank, self.seed = rank, seed
        self.global_batch = batch * processes * accumulate
        self.steps = videos // self.global_batch
        self.epoch = 0
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.videos, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.videos,), generator=generator).tolist()
        per_step = self.processes * self.accumulate
        for number in range(self.skip * per_step + self.rank, self.steps * per_step, self.processes):
            for position in range(number * self.batch, (number + 1) * self.batch):
                yield order[position], seeds[position]

    def __len__(self) -> int:
        return (self.steps - self.skip) * self.accumulate * self.batch


@dataclass(frozen=True)
class TrainedEpoch:
    """One pass over the training clips, over all ranks."""

    loss: float
    accuracy: float
    clips: float
    data_wait: float  # share of the time spent waiting for the loader (averaged over ranks)


class Trainer:
    def __init__(self, job: StageJob) -> None:
        self.job = job
        self.checkpoint_uri = storage.join(job.out_dir, CHECKPOINT_FILE)
        self.start_epoch = 1  # the first epoch this run trains
        self.non_finite_steps = 0  # training steps in a row, over epochs, whose loss was not finite
        self.saved_at = time.monotonic()  # of the last checkpoint, for `checkpoint_minutes`

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        job, spec = self.job, self.job.spec
        self.notice = StopNotice()  # from here on, SIGTERM ends the stage at a step checkpoint
        self.rank = init_distributed()
        random.seed(spec.seed + self.rank.rank)
        torch.manual_seed(spec.seed + self.rank.rank)
        self.ranks: list[RankInfo] = gather(
            RankInfo(rank=self.rank.rank, pid=os.getpid(), host=socket.gethostname())
        )
        self.index: DatasetIndex = load_index(job.data_index)
        self.classes = self.index.classes
        self.exporter = Exporter(
            job.experiment,
            job.stage,
            self.rank.rank,
            self.rank.world_size,
            Endpoints.from_environment(),
            # The launcher's labels; a stage started by hand (no launcher) is a run without an id.
            branch=os.environ.get(environment.BRANCH, ""),
            run=os.environ.get(environment.RUN, ""),
        )
        self.exporter.describe(job.model.name, self.index.fingerprint)
        self.unreadable = 0
        self.model = self._build_model().to(self.rank.device)
        if spec.channels_last:
            # Module.to's type stubs omit memory_format, which it accepts.
            self.model = self.model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        if spec.sync_batchnorm:  # before freezing: frozen BatchNorm modules must be the ones that run
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.frozen = freeze_before(self.model, job.train_from) if job.train_from else []
        on_gpu = self.rank.device.type == "cuda"
        if on_gpu:
            torch.backends.cudnn.benchmark = True  # clips have one shape: pick the fastest kernels once
        # A GPU stage run where torch sees no GPU trains in fp32: CPU bf16 3D convolutions are unreliable.
        self.bf16 = spec.precision == "bf16" and on_gpu
        self.ddp = DistributedDataParallel(
            self.model, device_ids=[self.rank.device.index] if on_gpu else None
        )
        # What a training step calls; compiled, it is still the DDP module underneath (no_sync, state).
        self.step_model: nn.Module = torch.compile(self.ddp) if spec.compile else self.ddp  # type: ignore[assignment]
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        sgd = spec.optimizer
        self.optimizer = torch.optim.SGD(
            trainable, lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay, nesterov=sgd.nesterov
        )
        self.schedule = LRSchedule(self.optimizer, spec.schedule, sgd.lr, spec.epochs)
        # Multi-label data (several tags per video, e.g. HVU): one sigmoid per class.
        self.loss_fn = nn.BCEWithLogitsLoss() if self.index.multi_label else nn.CrossEntropyLoss()
        self.state = TrainingState(self.model, self.optimizer, self.schedule, self._model_header(), self.rank)
        # A restarted job (Volcano restarts every pod on any failure) goes on after its last epoch checkpoint.
        if self.state.restore(job.out_dir):
            within = self.state.progress
            where = f" and {within.batches} batches of epoch {self.state.epoch + 1}" if within else ""
            self.log(
                f"resuming after epoch {self.state.epoch}{where} (step {self.state.step}) from {job.out_dir}"
            )
        self.start_epoch = self.state.epoch + 1
        self.exporter.record_preemptions(self.state.preemptions, self.state.preempted_seconds)
        if spec.precision == "bf16" and not self.bf16:
            self.log("no GPU here: training in fp32 instead of bf16")
        members = ", ".join(f"rank {r.rank} pid {r.pid}" for r in self.ranks)
        self.log(
            f"world size {self.rank.world_size} ({members}); "
            f"{len(self.classes)} classes; {job.model.name}; "
            f"{sum(p.numel() for p in trainable):,} of {sum(p.numel() for p in self.model.parameters()):,} "
            "parameters trained"
        )

    def _build_model(self) -> nn.Module:
        job, name = self.job, self.job.model.name
        model = build_model(name, len(self.classes), **job.model.options())
        if job.init_checkpoint is not None:
            state = load_checkpoint(job.init_checkpoint)
            header = CheckpointHeader.of(state, job.init_checkpoint)
            arch = header.model_name or name
            if arch != name:
                raise ValueError(f"{job.init_checkpoint} holds a {arch} model; the spec's model is {name}")
            same_classes = header.classes == self.classes
            if not job.new_head and header.classes is not None and not same_classes:
                raise ValueError(
                    f"{job.init_checkpoint} was trained on other classes than those of {job.data_index}: "
                    "scores against these labels would mean nothing"
                )
            # Fine-tuning keeps the head only when the checkpoint was trained on exactly these classes.
            load_weights(model, state, new_head=job.new_head and not same_classes, where=job.init_checkpoint)
        return model

    def _model_header(self) -> CheckpointHeader:
        """What the stage's checkpoints say of the model: enough to build it and to predict with it."""
        model, clip = self.job.model, self.job.spec.clip
        return CheckpointHeader(
            arch=model.name,
            model_options=model.options(),
            n_classes=len(self.classes),
            classes=self.classes,
            clip=ClipShape(frames=clip.frames, size=clip.size, mean=clip.mean, std=clip.std),
        )

    def _loader(self, dataset: Dataset[Any], sampler: Sampler[Any], batch_size: int) -> DataLoader[Any]:
        workers = self.job.spec.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.rank.device.type == "cuda",
            collate_fn=None if isinstance(sampler, TrainingOrder) else collate_clips,
        )

    def training_loader(self) -> DataLoader[Any]:
        """One clip per training video and epoch (TrainingOrder), in batches of the stage's per-process
        batch size, `accumulate` of them per update on this world size."""
        job, spec, world = self.job, self.job.spec, self.rank.world_size
        clips = TrainingClips(self.index, "training", spec.clip, spec.cache_dir)
        eval_split = job.evaluation.split
        for split, rows in (("training", clips.rows), (eval_split, self.index.rows(eval_split))):
            if not len(rows):  # found now rather than after the last epoch
                raise ValueError(f"{job.data_index}: the dataset has no {split} videos")
        batch, accumulate = spec.batching(world)
        if spec.global_batch_size is not None and spec.global_batch_size != batch * world * accumulate:
            raise ValueError(
                f"stage {job.stage}: global_batch_size {spec.global_batch_size} does not divide among "
                f"{world} processes in batches of {batch}"
            )
        if len(clips) < batch * world * accumulate:  # a dataset smaller than a global batch: one update
            batch = len(clips) // (world * accumulate)
        if batch < 2:  # BatchNorm cannot train on a batch of one clip
            raise ValueError(
                f"{job.data_index}: {len(clips)} training videos for {world} processes x {accumulate} "
                "accumulated steps; each batch needs at least 2"
            )
        order = TrainingOrder(len(clips), batch, world, accumulate, self.rank.rank, spec.seed)
        self.log(
            f"global batch {order.global_batch} = {world} processes x {batch} clips x {accumulate} "
            f"accumulated; {order.steps} updates an epoch"
        )
        return self._loader(clips, order, batch)

    def validation_loader(self) -> tuple[DataLoader[Any], int] | None:
        """The middle window of each validation video (a cheap per-epoch loss), and how many there are;
        None without validation videos."""
        clip = self.job.spec.clip
        windows = EvaluationWindows(
            self.index,
            "validation",
            clip.frames,
            clip.size,
            middle_only=True,
            cache_dir=self.job.spec.cache_dir,
        )
        if not len(windows):
            return None
        share = RankShare(len(windows), self.rank.rank, self.rank.world_size)
        return self._loader(windows, share, self.job.evaluation.batch_size), len(windows)

    def count_unreadable(self, failed: torch.Tensor, clips: int, what: str) -> None:
        """Add up clips that could not be decoded on all ranks; stop when there are too many."""
        dist.all_reduce(failed)
        self.unreadable += int(failed)
        limit = self.job.spec.max_unreadable
        if int(failed) > limit * max(clips, 1):
            raise DatasetError(
                f"{self.job.data_index}: {int(failed)} of {clips} clips in {what} could not be decoded, "
                f"more than the limit of {limit:.1%} (max_unreadable)"
            )

    # ---- training ----------------------------------------------------------------------------------
    def train(self) -> None:
        """The paper's recipe: epochs of SGD over training clips, each followed by the validation loss, on
        which the learning rate steps; a checkpoint after each epoch."""
        loader, validation = self.training_loader(), self.validation_loader()
        order = loader.sampler
        assert isinstance(order, TrainingOrder)
        for epoch in range(self.start_epoch, self.job.spec.epochs + 1):
            started = time.monotonic()
            resumed = self.state.progress if epoch == self.start_epoch else None
            if resumed and (resumed.batch, resumed.global_batch) != (order.batch, order.global_batch):
                self.log(
                    f"the step checkpoint's batches ({resumed.global_batch} clips in batches of "
                    f"{resumed.batch}) are not this world size's: epoch {epoch} starts again"
                )
                resumed = None
            order.epoch, order.skip = epoch, resumed.batches if resumed else 0
            self.schedule.set_epoch(epoch)
            lr = self.schedule.lr
            trained = self.train_epoch(loader, order, resumed)
            started -= resumed.seconds if resumed else 0.0
            val_loss = self.validate(*validation) if validation is not None else trained.loss
            if not math.isfinite(val_loss):  # an epoch of fewer than DIVERGED_STEPS steps ends here
                what = "validation loss" if validation is not None else "training loss"
                self.diverged(f"the {what} is {val_loss} after epoch {epoch} (step {self.state.step})")
            self.schedule.step(epoch, val_loss)
            self.end_epoch(epoch, lr, trained, val_loss, time.monotonic() - started)
        self.state.save(self.checkpoint_uri)

    def end_epoch(
        self, epoch: int, lr: float, trained: TrainedEpoch, val_loss: float, seconds: float
    ) -> None:
        """The epoch into the history, the metrics and (every `checkpoint_every` epochs and after the last)
        an epoch checkpoint; then a line in the log."""
        spec = self.job.spec
        record = EpochRecord(
            epoch=epoch,
            train_loss=trained.loss,
            train_accuracy=trained.accuracy,
            val_loss=val_loss,
            lr=lr,
            clips_per_s=trained.clips / seconds,
            data_wait=trained.data_wait,
            seconds=seconds,
            unreadable=self.unreadable,
        )
        self.state.history.append(record)
        self.state.epoch = epoch
        self.exporter.record_epoch(epoch, lr, self.rank.device)
        if epoch % spec.checkpoint_every == 0 or epoch == spec.epochs:
            self.state.save_epoch(self.job.out_dir, spec.keep_checkpoints)
            self.saved_at = time.monotonic()
        this_run = [r.seconds for r in self.state.history[-(epoch - self.start_epoch + 1) :]]
        eta = sum(this_run) / len(this_run) * (spec.epochs - epoch)
        self.log(
            f"epoch {epoch}/{spec.epochs}  loss {record.train_loss:.3f}  "
            f"acc {record.train_accuracy:.3f}  val-loss {val_loss:.3f}  lr {record.lr:.2g}  "
            f"{record.clips_per_s:.0f} clips/s  data wait {record.data_wait:.0%}  {seconds:.1f}s  "
            f"ETA {duration(eta)}"
        )

    def model_input(self, clips: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 clips from the loader, on the device, flipped where `flips` says and normalised."""
        spec = self.job.spec
        on_device = clips.to(self.rank.device, non_blocking=True)
        return normalize(on_device, spec.clip.mean, spec.clip.std, flips, spec.channels_last)

    def training_batch(self, batch: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clips, flips, labels, skipped = batch
        return self.model_input(clips, flips), labels.to(self.rank.device, non_blocking=True), skipped

    def evaluation_batch(self, batch: tuple[Any, ...]) -> tuple[Any, ...]:
        clips, *rest = batch
        return (None if clips is None else self.model_input(clips), *rest)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.rank.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_epoch(
        self, loader: DataLoader[Any], order: TrainingOrder, resumed: EpochProgress | None = None
    ) -> TrainedEpoch:
        """Epoch `order.epoch`, or what a step checkpoint (`resumed`) left of it: it goes on at the next
        global batch, with the sums of the batches before."""
        set_train_mode(self.model, self.frozen)
        epoch, accumulate = order.epoch, order.accumulate
        done, total = (resumed.batches if resumed else 0), order.steps  # global batches (updates)
        mine = (
            resumed.of_rank(self.rank.rank, self.rank.world_size)
            if resumed
            else RankProgress(totals=[0.0] * 4, failed=0, non_finite_steps=0)
        )
        totals = torch.tensor(
            mine.totals, dtype=torch.float64
        )  # loss sum, correct, clips, seconds waiting for data
        failed = torch.tensor([mine.failed], dtype=torch.float64)
        self.non_finite_steps = mine.non_finite_steps if resumed else self.non_finite_steps
        before = resumed.seconds if resumed else 0.0
        started = last_report = asked = time.monotonic()
        batches = prefetched(loader, self.training_batch, self.rank.device)
        for micro, (clips, labels, skipped) in enumerate(batches, done * accumulate + 1):
            waited = time.monotonic() - asked
            totals[3] += waited
            failed += skipped.sum()
            self.exporter.unreadable_videos.inc(int(skipped.sum()))
            update = micro % accumulate == 0
            step = micro // accumulate  # global batches done, this one once it updates
            loss, correct = self.train_step(clips, labels, accumulate, update)
            noticed, due = self.check_step(loss, epoch, step)
            totals[:3] += torch.tensor([loss * len(labels), correct, len(labels)], dtype=torch.float64)
            now = time.monotonic()
            self.exporter.record_step(now - asked, waited, len(labels), loss)
            if update and (noticed or due):  # between updates, accumulated gradients would be lost
                within = EpochProgress(
                    batches=step,
                    seconds=before + now - started,
                    batch=order.batch,
                    global_batch=order.global_batch,
                    ranks=[],
                )
                self.save_step(epoch, total, within, totals, failed, noticed)
            if now - last_report > PROGRESS_EVERY_S:
                last_report = now
                eta = (now - started) / (micro - done * accumulate) * (total * accumulate - micro)
                self.log(
                    f"epoch {epoch}  step {step}/{total}  loss {totals[0] / max(float(totals[2]), 1.0):.3f}  "
                    f"data wait {totals[3] / (before + now - started):.0%}  epoch ends in {duration(eta)}"
                )
            asked = time.monotonic()
        seconds = before + time.monotonic() - started
        dist.all_reduce(totals)
        loss_sum, correct, n, waited = totals.tolist()
        self.count_unreadable(failed, int(n + failed.item()), f"training epoch {epoch}")
        return TrainedEpoch(
            loss=loss_sum / max(n, 1),
            accuracy=correct / max(n, 1),
            clips=n,
            data_wait=waited / self.rank.world_size / max(seconds, 1e-9),
        )

    def save_step(
        self,
        epoch: int,
        total: int,
        within: EpochProgress,
        totals: torch.Tensor,
        failed: torch.Tensor,
        noticed: bool,
    ) -> None:
        """A step checkpoint `within` epoch `epoch` of `total` global batches, with this rank's sums (a
        collective: every rank calls it); then Preempted if SIGTERM came."""
        sums = RankProgress(
            totals=totals.tolist(),
            failed=float(failed),
            non_finite_steps=self.non_finite_steps,
            noticed=self.notice.given,
        )
        self.state.save_epoch(self.job.out_dir, self.job.spec.keep_checkpoints, (sums, within))
        self.saved_at = time.monotonic()
        if not noticed:
            return
        told = [
            f"rank {r.rank} ({r.host})"
            for r, got in zip(self.ranks, gather(self.notice.given), strict=True)
            if got
        ]
        raise Preempted(
            f"stage {self.job.stage}: stopped on SIGTERM to {', '.join(told)} in epoch {epoch} after batch "
            f"{within.batches} of {total} (step {self.state.step}); a step checkpoint in {self.job.out_dir} "
            "holds it"
        )

    def train_step(
        self, clips: torch.Tensor, labels: torch.Tensor, accumulate: int = 1, update: bool = True
    ) -> tuple[float, int]:
        """Forward and backward of one of `accumulate` steps per update; the optimizer steps when `update`
        (gradients of the steps in between add up, and DDP synchronises them only once, on the updating
        step)."""
        with contextlib.nullcontext() if update else self.ddp.no_sync():
            with self.autocast():
                logits = self.step_model(clips)
                loss = self.loss_fn(logits.float(), labels)
            (loss / accumulate).backward()
        if update:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step += 1
        return float(loss.detach()), top1_hits(logits, labels, self.index.multi_label)

    def check_step(self, loss: float, epoch: int, step: int) -> tuple[bool, bool]:
        """After a step, what the ranks agree on in one all-reduce: whether any rank's loss was not finite
        (Diverged after DIVERGED_STEPS in a row), whether any got SIGTERM, and whether a step checkpoint is
        due (`checkpoint_minutes`), so that all of them stop or save at the same step instead of one leaving
        the others waiting in a collective. Returns (SIGTERM came, a checkpoint is due)."""
        minutes = self.job.spec.checkpoint_minutes
        due = minutes is not None and time.monotonic() - self.saved_at >= minutes * 60
        flags = [0.0 if math.isfinite(loss) else 1.0, float(self.notice.given), float(due)]
        agreed = torch.tensor(flags, device=self.rank.device)
        dist.all_reduce(agreed)
        non_finite, noticed, due_anywhere = (float(value) > 0 for value in agreed.cpu())
        self.non_finite_steps = self.non_finite_steps + 1 if non_finite else 0
        if self.non_finite_steps >= DIVERGED_STEPS:
            self.diverged(
                f"the training loss was not finite for {DIVERGED_STEPS} steps in a row, up to epoch {epoch} "
                f"step {step} (last: {loss})"
            )
        return noticed, due_anywhere

    def diverged(self, what: str) -> NoReturn:
        """Raise Diverged: one line naming the stage, where, and what to change."""
        lr = self.schedule.lr
        raise Diverged(
            f"stage {self.job.stage}: training diverged: {what}; lower optimizer.lr (now {lr:g}), or check "
            "the checkpoint it starts from"
        )

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
        """Scores of every window of `split`, reduced per video across ranks; the top-5 of each video into
        results.json."""
        clip = self.job.spec.clip
        windows = EvaluationWindows(
            self.index, split, clip.frames, clip.size, cache_dir=self.job.spec.cache_dir
        )
        if len(windows) == 0:
            raise ValueError(f"{self.job.data_index}: the dataset has no {split} videos")
        self.model.eval()
        # Each rank's BatchNorm statistics drift apart while training (DDP sends rank 0's buffers at the
        # start of each step, then every rank updates its own copy); the checkpoint holds rank 0's. Every
        # rank scores its windows with those, so that these scores are the checkpoint's.
        for buffer in self.model.buffers():
            dist.broadcast(buffer, src=0)
        scores = VideoScores(self.index, windows.rows)
        failed = torch.zeros(1, dtype=torch.float64)
        share = RankShare(len(windows), self.rank.rank, self.rank.world_size)
        loader = self._loader(windows, share, self.job.evaluation.batch_size)
        for clips, labels, videos, unreadable in prefetched(loader, self.evaluation_batch, self.rank.device):
            failed += unreadable
            self.exporter.unreadable_videos.inc(unreadable)
            if clips is None:
                continue
            with self.autocast():
                logits = self.model(clips)
            scores.add(logits, labels, videos)
        scores.reduce()
        self.count_unreadable(failed, len(windows), f"the {split} split")
        metrics = scores.summary()
        if self.rank.is_main:
            storage.write_json(storage.join(self.job.out_dir, RESULTS_FILE), scores.results())
        self.exporter.record_evaluation(metrics)
        return {"split": split, "unreadable": self.unreadable, **metrics}

    # ---- results -----------------------------------------------------------------------------------
    def write_metrics(self, evaluation: dict[str, Any], seconds: float, checkpoint: str) -> StageMetrics:
        metrics = StageMetrics(
            stage=self.job.stage,
            world_size=self.rank.world_size,
            ranks=self.ranks,
            classes=self.classes,
            checkpoint=checkpoint,
            job=self.job,
            history=self.state.history,
            seconds=seconds,
            preemptions=self.state.preemptions,
            preempted_seconds=self.state.preempted_seconds,
            **evaluation,
        )
        if self.rank.is_main:
            metrics.write(storage.join(self.job.out_dir, METRICS_FILE))
        return metrics

    def log(self, message: str) -> None:
        if self.rank.is_main:
            print(f"[{self.job.stage}] {message}", flush=True, file=sys.stdout)

    def close(self) -> None:
        # DDP's reducer holds the process group. Let it go first: a group destroyed (shut down) while a
        # reducer still holds it is freed with the reducer, later, and its destructor can then wait forever
        # on a gloo thread (seen: a test's frame teardown hung in ~ProcessGroupGloo).
        for wrapper in ("step_model", "ddp"):
            self.__dict__.pop(wrapper, None)
        gc.collect()
        close_distributed()
