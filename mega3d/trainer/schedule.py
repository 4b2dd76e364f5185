"""The learning rate from epoch to epoch, as a stage's `schedule` says (see `spec.ScheduleSpec`).

    warm-up     epochs 1..W train at lr x epoch / W
    plateau     (the paper) lr x factor when the validation loss has not improved for `patience` epochs
    multistep   lr x factor at each milestone epoch
    cosine      lr decays to 0 over the epochs after warm-up

Warm-up, multistep and cosine are functions of the epoch; the plateau rule decides from the validation
losses so far, which torch's ReduceLROnPlateau keeps (its state is the checkpoint's `scheduler`, the field
the reference implementation stores its own ReduceLROnPlateau in). A plateau rate changed by the rule lives
in the optimizer's parameter groups, which the checkpoint saves with the optimizer.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mega3d.trainer.spec import ScheduleSpec


class LRSchedule:
    """Per epoch: `set_epoch(epoch)` before it trains, `step(epoch, val_loss)` after it is validated."""

    def __init__(self, optimizer: Optimizer, schedule: ScheduleSpec, lr: float, epochs: int) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.base_lr = lr
        self.epochs = epochs
        self.plateau = ReduceLROnPlateau(
            optimizer, mode="min", factor=schedule.factor, patience=schedule.patience
        )

    @property
    def lr(self) -> float:
        """The rate the optimizer steps with now."""
        return float(self.optimizer.param_groups[0]["lr"])

    def fixed_lr(self, epoch: int) -> float | None:
        """The rate of an epoch (from 1) where the schedule fixes it: during warm-up, and for the multistep
        and cosine schedules; None where the plateau rule decides."""
        schedule, warmup = self.schedule, self.schedule.warmup_epochs
        if epoch <= warmup:
            return self.base_lr * epoch / warmup
        if schedule.kind == "multistep":
            return self.base_lr * schedule.factor ** sum(1 for step in schedule.milestones if step <= epoch)
        if schedule.kind == "cosine":
            done = (epoch - 1 - warmup) / (self.epochs - warmup)
            return self.base_lr * 0.5 * (1 + math.cos(math.pi * done))
        return None

    def set_epoch(self, epoch: int) -> None:
        """Before `epoch` trains: the rate the schedule fixes for it, if it does."""
        lr = self.fixed_lr(epoch)
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def step(self, epoch: int, val_loss: float) -> None:
        """After `epoch`: the plateau rule counts its validation loss, from the first epoch that trains at
        the full rate on (the last warm-up epoch: lr x W / W)."""
        if self.schedule.kind == "plateau" and epoch >= self.schedule.warmup_epochs:
            self.plateau.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self.plateau.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau.load_state_dict(state)
