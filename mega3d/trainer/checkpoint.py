"""Checkpoints: their typed header, how they are stored, and the training state they save and restore.

A checkpoint is one mapping, in the reference layout ({"epoch", "arch", "state_dict", "optimizer",
"scheduler"}) plus mega3d's own fields. Its plain fields are the `CheckpointHeader` ("format", "epoch",
"step", "arch", "model_options", "n_classes", "classes", "clip", "history", "source"); the rest are tensors
and torch states ("state_dict", "optimizer", "scheduler", and "rng" in epoch checkpoints). Files are stored
through the storage facade and read back as tensors and containers only.

While a stage trains, `<stage>/checkpoints/` holds its last few epochs and a pointer to the newest:

    <stage>/checkpoints/epoch-00005.pt
    <stage>/checkpoints/latest.json     {"epoch": 5, "file": "epoch-00005.pt", "sha256": ...}

An epoch's file is written, read back and compared with what was written, and only then does the pointer
move: a reader (a restarted job) never sees a partial checkpoint, whenever the writer was stopped.

Any other checkpoint mega3d writes (a stage's final `checkpoint.pt`, an imported model) is written, read
back and compared the same way, and its SHA-256 is then recorded beside it, as `sha256sum` writes it:

    <stage>/checkpoint.pt
    <stage>/checkpoint.pt.sha256        "<sha256>  checkpoint.pt"

`load_checkpoint` (predict, fine-tuning, evaluation, import) checks a file against that record when there
is one; files mega3d did not write (reference .pth, a bare state_dict) have none and are read as they are."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import random
import re
import time
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, ValidationError, field_validator
from torch import nn
from torch.optim import Optimizer

from mega3d.trainer import storage
from mega3d.trainer.distributed import Rank, gather
from mega3d.trainer.layout import CHECKPOINTS_DIR, LATEST_FILE
from mega3d.trainer.model_catalog import canonical_name
from mega3d.trainer.models.weights import WeightsError, parse_state
from mega3d.trainer.records import ClipShape, EpochRecord, LatestEpoch, Record
from mega3d.trainer.schedule import LRSchedule
from mega3d.trainer.spec import validation_problems

FORMAT = "mega3d-checkpoint/1"

# `epoch-00004.pt` after epoch 4; `epoch-00004-batch-000120.pt` 120 batches into epoch 5 (a step checkpoint).
CHECKPOINT_NAME = re.compile(r"epoch-(?P<epoch>\d{5,})(?:-batch-(?P<batches>\d{6,}))?\.pt")

# What is wrong with a header field that a reader names on its own, in this order of precedence.
FIELD_RULES = {
    "classes": "'classes' must be a list of class names",
    "model_options": "'model_options' must be a mapping",
    "clip": "the checkpoint's 'clip' must be {frames, size, mean, std}",
}


class ImportedFrom(Record):
    """The file a checkpoint was converted from (`python -m mega3d.trainer.convert`)."""

    uri: str
    arch: str | None = None  # as that file names it, e.g. resnet2p1d-18
    n_classes: int


class RankProgress(Record):
    """What one rank had added up of the epoch a step checkpoint stopped in."""

    totals: list[float]  # loss sum, correct clips, clips, seconds waiting for data
    failed: float  # clips that could not be decoded
    non_finite_steps: int
    noticed: bool = False  # this rank got SIGTERM


class EpochProgress(Record):
    """How far into the epoch after `CheckpointHeader.epoch` a step checkpoint is: what resumes that epoch
    at its next global batch, as if it had not stopped, on any world size that cuts the epoch alike."""

    batches: int  # global batches (updates) of the epoch, done
    seconds: float  # training time of the epoch so far
    batch: int  # clips per process and step
    global_batch: int  # clips per update
    ranks: list[RankProgress]  # by rank
    noticed_at: float | None = None  # when written on SIGTERM (seconds since the epoch); None: on time

    def of_rank(self, rank: int, world_size: int) -> RankProgress:
        """What `rank` takes up: its own sums, on the world size that wrote them. On another, rank 0 takes
        up all of them (the epoch adds up every rank's at its end) and the others start from none; the
        time waited for data, averaged over ranks at the end, is scaled to the new world size."""
        if len(self.ranks) == world_size:
            return self.ranks[rank]
        steps = self.ranks[0].non_finite_steps  # the same on every rank: they agree on it each step
        if rank:
            return RankProgress(totals=[0.0] * 4, failed=0, non_finite_steps=steps)
        loss, correct, clips, waited = (
            sum(column) for column in zip(*(r.totals for r in self.ranks), strict=True)
        )
        return RankProgress(
            totals=[loss, correct, clips, waited * world_size / len(self.ranks)],
            failed=sum(r.failed for r in self.ranks),
            non_finite_steps=steps,
        )


class CheckpointHeader(Record):
    """The plain fields of a checkpoint. A reference .pth has `epoch` and `arch` only, a bare state_dict
    none of them; mega3d's files have `format` and the fields of the model and of the stage that trained it.
    """

    format: str | None = None  # FORMAT in mega3d's files
    epoch: int = 0  # epochs trained
    step: int = 0  # optimizer updates
    arch: str | None = None  # a mega3d model name or a reference alias
    model_options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of `build_model`
    n_classes: int | None = None
    classes: list[str] | None = None  # None in reference and imported files: a head without class names
    clip: ClipShape | None = None  # how the model saw clips in training
    history: list[EpochRecord] = Field(default_factory=list)
    progress: EpochProgress | None = None  # a step checkpoint: part of the next epoch is done
    preemptions: int = 0  # restarts after a checkpoint on notice, so far
    preempted_seconds: float = 0.0  # from each such checkpoint to its restart
    source: ImportedFrom | None = None

    @field_validator("history", mode="before")
    @classmethod
    def _history_from_text(cls, value: Any) -> Any:
        # The file keeps the history as JSON text, as mega3d's files have always stored it.
        return json.loads(value) if isinstance(value, str) else value

    @classmethod
    def of(cls, state: Mapping[str, Any], where: str) -> CheckpointHeader:
        """The header of a loaded checkpoint; WeightsError (one line naming `where`) when a field is not
        what it should be."""
        plain = {key: value for key, value in state.items() if key in cls.model_fields}
        try:
            return cls.model_validate(plain)
        except ValidationError as error:
            problems = validation_problems(error)
        fields = {problem.path.partition(".")[0].partition("[")[0] for problem in problems}
        named = [rule for field, rule in FIELD_RULES.items() if field in fields]
        reason = named[0] if named else "; ".join(f"{p.path}: {p.message}" for p in problems)
        raise WeightsError(f"{where}: {reason}")

    @property
    def model_name(self) -> str | None:
        """The mega3d name of the architecture; None where the file does not say."""
        return canonical_name(self.arch) if self.arch else None

    def fields(self) -> dict[str, Any]:
        """The header as mega3d writes it into a checkpoint."""
        history = json.dumps([record.to_json() for record in self.history])
        return {**self.to_json(), "format": FORMAT, "history": history}


def _serialized(header: CheckpointHeader, tensors: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({**header.fields(), **tensors}, buffer)
    return buffer.getvalue()


class CheckpointError(RuntimeError):
    """A checkpoint that did not store as written, or that no longer matches its pointer or its recorded
    hash."""


HASH_SUFFIX = ".sha256"


def hash_uri(uri: str) -> str:
    """Where the SHA-256 of the checkpoint at `uri` is recorded."""
    return uri + HASH_SUFFIX


def save_checkpoint(uri: str, header: CheckpointHeader, tensors: Mapping[str, Any]) -> None:
    """Write a checkpoint, check that it reads back as written, then record its SHA-256 beside it."""
    data = _serialized(header, tensors)
    digest = hashlib.sha256(data).hexdigest()
    # Removed first: a writer stopped before the new record is written leaves a file without a record
    # (read unchecked), never a record of the earlier file beside the new one (refused).
    storage.remove(hash_uri(uri))
    storage.write_bytes(uri, data)
    if hashlib.sha256(storage.read_bytes(uri)).hexdigest() != digest:
        raise CheckpointError(f"{uri}: what was read back differs from what was written")
    storage.write_bytes(hash_uri(uri), f"{digest}  {posixpath.basename(uri)}\n".encode())


def save_epoch(stage_dir: str, header: CheckpointHeader, tensors: Mapping[str, Any], keep: int) -> str:
    """Write the checkpoint of epoch `header.epoch` (and, with `header.progress`, of the batches of the
    next epoch done: a step checkpoint), verify it, move the `latest` pointer to it, then delete all but
    the newest `keep` epoch files, every step checkpoint but this one (the next checkpoint of any kind
    supersedes it), and the partial files of an earlier, killed attempt. Returns the file's URI."""
    directory = storage.join(stage_dir, CHECKPOINTS_DIR)
    epoch = header.epoch
    name = f"epoch-{epoch:05d}" + (f"-batch-{header.progress.batches:06d}" if header.progress else "") + ".pt"
    data = _serialized(header, tensors)
    digest = hashlib.sha256(data).hexdigest()
    uri = storage.join(directory, name)
    storage.write_bytes(uri, data)
    if hashlib.sha256(storage.read_bytes(uri)).hexdigest() != digest:
        raise CheckpointError(f"{uri}: what was read back differs from what was written")
    noticed_at = header.progress.noticed_at if header.progress else None
    pointer = LatestEpoch(epoch=epoch, file=name, sha256=digest, noticed_at=noticed_at)
    pointer.write(storage.join(directory, LATEST_FILE))
    found = {posixpath.basename(path): path for path in storage.list_dir(directory)}
    named = {name: CHECKPOINT_NAME.fullmatch(name) for name in found}
    epochs = sorted(
        (int(match["epoch"]), found[name]) for name, match in named.items() if match and not match["batches"]
    )
    steps = [found[other] for other, match in named.items() if match and match["batches"] and other != name]
    # What else is named like a checkpoint is what a writer killed mid-write left beside it.
    leftovers = [
        found[other] for other, match in named.items() if match is None and other.startswith("epoch-")
    ]
    for old in [path for _, path in epochs[:-keep]] + steps + leftovers:
        storage.remove(old)
    return uri


def load_latest(stage_dir: str) -> dict[str, Any] | None:
    """The newest epoch checkpoint of a stage, checked against its pointer; None before the first one."""
    directory = storage.join(stage_dir, CHECKPOINTS_DIR)
    pointer_uri = storage.join(directory, LATEST_FILE)
    if not storage.exists(pointer_uri):
        return None
    pointer = LatestEpoch.read(pointer_uri)
    uri = storage.join(directory, pointer.file)
    data = storage.read_bytes(uri)
    if hashlib.sha256(data).hexdigest() != pointer.sha256:
        raise CheckpointError(f"{uri}: its bytes do not match {pointer_uri}")
    return parse_state(data, uri)


def load_checkpoint(uri: str) -> dict[str, Any]:
    """A checkpoint's top-level mapping; CheckpointError (one line naming the file) when its bytes differ
    from the SHA-256 recorded beside it."""
    data = storage.read_bytes(uri)
    record = hash_uri(uri)
    if storage.exists(record):
        recorded = storage.read_bytes(record).decode(errors="replace").split()
        if not recorded or recorded[0] != hashlib.sha256(data).hexdigest():
            raise CheckpointError(f"{uri}: its bytes do not match the SHA-256 recorded in {record}")
    return parse_state(data, uri)


class TrainingState:
    """What a stage's checkpoints save and a restarted stage restores: the model's weights, the optimizer,
    the LR schedule, the epochs and optimizer steps done, the history, and every rank's random state.

    `model_header` says what the checkpoint says of the model (arch, options, classes, clip)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        schedule: LRSchedule,
        model_header: CheckpointHeader,
        rank: Rank,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.model_header = model_header
        self.rank = rank
        self.epoch = 0  # epochs done
        self.step = 0  # optimizer updates done
        self.history: list[EpochRecord] = []
        self.progress: EpochProgress | None = None  # restored from a step checkpoint: the next epoch's part
        self.preemptions = 0
        self.preempted_seconds = 0.0

    def header(self) -> CheckpointHeader:
        return self.model_header.model_copy(
            update={
                "epoch": self.epoch,
                "step": self.step,
                "history": list(self.history),
                "preemptions": self.preemptions,
                "preempted_seconds": self.preempted_seconds,
            }
        )

    def tensors(self) -> dict[str, Any]:
        return {
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
        }

    def save_epoch(
        self, stage_dir: str, keep: int, progress: tuple[RankProgress, EpochProgress] | None = None
    ) -> None:
        """A verified epoch checkpoint with every rank's random state (a collective: all ranks call it).
        With `progress` (this rank's sums, and how far into the next epoch it is, without ranks), a step
        checkpoint of that epoch, with every rank's sums and buffers: each rank's BatchNorm statistics have
        taken in its own batches since DDP last sent it rank 0's, and the validation after an epoch that
        resumes at its end sees them before any step would send rank 0's again."""
        mine = progress[0] if progress is not None else None
        buffers = {name: buffer.cpu() for name, buffer in self.model.named_buffers()} if progress else None
        rng, sums, rank_buffers = zip(
            *gather(((random.getstate(), torch.get_rng_state()), mine, buffers)), strict=True
        )
        if not self.rank.is_main:
            return
        header, tensors = self.header(), {**self.tensors(), "rng": list(rng)}
        if progress is not None:
            ranks = [rank for rank in sums if rank is not None]
            noticed_at = time.time() if any(rank.noticed for rank in ranks) else None
            within = progress[1].model_copy(update={"ranks": ranks, "noticed_at": noticed_at})
            header = header.model_copy(update={"progress": within})
            tensors["rank_buffers"] = list(rank_buffers)
        save_epoch(stage_dir, header, tensors, keep)

    def save(self, uri: str) -> None:
        """The trained model, which later stages and evaluation start from (written by rank 0)."""
        if self.rank.is_main:
            save_checkpoint(uri, self.header(), self.tensors())

    def restore(self, stage_dir: str) -> bool:
        """Continue after the newest epoch checkpoint of `stage_dir`, if there is one, as if the stage had
        not stopped: weights, optimizer, schedule, counters, history, each rank's random state (on the world
        size that saved it), and, from a step checkpoint, how far into the next epoch it was."""
        state = load_latest(stage_dir)
        if state is None:
            return False
        header = CheckpointHeader.of(state, storage.join(stage_dir, CHECKPOINTS_DIR))
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.history = header.epoch, header.step, list(header.history)
        self.preemptions, self.preempted_seconds = header.preemptions, header.preempted_seconds
        if header.progress is not None and header.progress.noticed_at is not None:
            self.preemptions += 1
            self.preempted_seconds += max(0.0, time.time() - header.progress.noticed_at)
        rng = state["rng"]
        if len(rng) == self.rank.world_size:  # each rank continues its own sequence
            python_state, torch_state = rng[self.rank.rank]
            random.setstate(python_state)
            torch.set_rng_state(torch_state)
        # Clips draw from seeds of their own (TrainingOrder): another world size goes on with the same ones.
        self.progress = header.progress
        if self.progress is not None:
            buffers = state["rank_buffers"]
            own = buffers[self.rank.rank] if self.rank.rank < len(buffers) else buffers[0]
            for name, buffer in self.model.named_buffers():
                buffer.copy_(own[name])
        return True
