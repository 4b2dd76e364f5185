"""Training checkpoints in the reference layout ({"epoch", "arch", "state_dict", "optimizer", "scheduler"})
plus mega3d's own fields ("format", "n_classes", "classes", "model_options", "history"), stored through the
storage facade and read back as tensors only."""

from __future__ import annotations

import io
from typing import Any

import torch

from trainer import storage
from trainer.models.weights import read_state

FORMAT = "mega3d-checkpoint/1"


def save_checkpoint(uri: str, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def load_checkpoint(uri: str) -> dict[str, Any]:
    return read_state(uri)
