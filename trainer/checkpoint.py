"""Checkpoints in the reference layout ({"epoch", "arch", "state_dict", "optimizer", "scheduler"}) plus
mega3d's own fields, stored through the storage facade and read back as tensors only."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from trainer import storage
from trainer.models import build_model

FORMAT = "mega3d-checkpoint/1"


def save_checkpoint(uri: str, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def load_checkpoint(uri: str) -> dict[str, Any]:
    """Tensors and plain containers only: a file with code in it is refused by `weights_only`."""
    state: dict[str, Any] = torch.load(
        io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True
    )
    return state


def model_from_checkpoint(state: dict[str, Any], n_classes: int) -> nn.Module:
    """The checkpoint's model with its weights; a head of another size is replaced by a fresh one."""
    model = build_model(state["arch"], len(state["classes"]), **state["model_options"])
    model.load_state_dict(state["state_dict"])
    head = model.fc
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{state['arch']}: expected a Linear head named fc")
    if head.out_features != n_classes:
        model.fc = nn.Linear(head.in_features, n_classes)
    return model
