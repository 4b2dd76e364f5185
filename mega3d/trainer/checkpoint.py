"""Training checkpoints in the reference layout ({"epoch", "arch", "state_dict", "optimizer", "scheduler"})
plus mega3d's own fields ("format", "n_classes", "classes", "model_options", "clip", "history", "rng"),
stored through the storage facade and read back as tensors only.

While a stage trains, `<stage>/checkpoints/` holds its last few epochs and a pointer to the newest:

    <stage>/checkpoints/epoch-00005.pt
    <stage>/checkpoints/latest.json     {"epoch": 5, "file": "epoch-00005.pt", "sha256": ...}

An epoch's file is written, read back and compared with what was written, and only then does the pointer
move: a reader (a restarted job) never sees a partial checkpoint, whenever the writer was stopped."""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from typing import Any

import torch

from mega3d.trainer import storage
from mega3d.trainer.models.weights import parse_state, read_state

FORMAT = "mega3d-checkpoint/1"


CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest.json"
EPOCH_FILE = re.compile(r"epoch-\d{5,}\.pt")


def _serialized(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    return buffer.getvalue()


def save_checkpoint(uri: str, state: dict[str, Any]) -> None:
    storage.write_bytes(uri, _serialized(state))


class CheckpointError(RuntimeError):
    """A checkpoint that did not store as written, or that no longer matches its pointer."""


def save_epoch(stage_dir: str, epoch: int, state: dict[str, Any], keep: int) -> str:
    """Write an epoch's checkpoint, verify it, move the `latest` pointer to it, then delete all but the
    newest `keep` epoch files, and the partial files of an earlier, killed attempt. Returns the file's URI."""
    directory = storage.join(stage_dir, CHECKPOINTS_DIR)
    name = f"epoch-{epoch:05d}.pt"  # matches EPOCH_FILE
    data = _serialized(state)
    digest = hashlib.sha256(data).hexdigest()
    uri = storage.join(directory, name)
    storage.write_bytes(uri, data)
    if hashlib.sha256(storage.read_bytes(uri)).hexdigest() != digest:
        raise CheckpointError(f"{uri}: what was read back differs from what was written")
    storage.write_json(storage.join(directory, LATEST_FILE), {"epoch": epoch, "file": name, "sha256": digest})
    names = {posixpath.basename(path): path for path in storage.list_dir(directory)}
    epochs = sorted(path for name, path in names.items() if EPOCH_FILE.fullmatch(name))
    # What else is named like an epoch file is what a writer killed mid-write left beside it.
    leftovers = [path for name, path in names.items() if name.startswith("epoch-") and path not in epochs]
    for old in epochs[:-keep] + leftovers:
        storage.remove(old)
    return uri


def load_latest(stage_dir: str) -> dict[str, Any] | None:
    """The newest epoch checkpoint of a stage, checked against its pointer; None before the first one."""
    directory = storage.join(stage_dir, CHECKPOINTS_DIR)
    pointer_uri = storage.join(directory, LATEST_FILE)
    if not storage.exists(pointer_uri):
        return None
    pointer = storage.read_json(pointer_uri)
    uri = storage.join(directory, pointer["file"])
    data = storage.read_bytes(uri)
    if hashlib.sha256(data).hexdigest() != pointer["sha256"]:
        raise CheckpointError(f"{uri}: its bytes do not match {pointer_uri}")
    return parse_state(data, uri)


def load_checkpoint(uri: str) -> dict[str, Any]:
    return read_state(uri)
