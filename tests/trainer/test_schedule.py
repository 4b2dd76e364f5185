"""The LR schedule: the rate of every epoch for each kind, with warm-up, and a state that resumes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mega3d.trainer.schedule import LRSchedule
from mega3d.trainer.spec import ScheduleSpec


def schedule_of(epochs: int = 6, lr: float = 0.1, **spec: Any) -> LRSchedule:
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=lr, momentum=0.9)
    return LRSchedule(optimizer, ScheduleSpec(**spec), lr, epochs)


def rates(schedule: LRSchedule, val_losses: list[float], first_epoch: int = 1) -> list[float]:
    """The rate each epoch trains with, epoch after epoch, with these validation losses."""
    trained_with = []
    for epoch, val_loss in enumerate(val_losses, first_epoch):
        schedule.set_epoch(epoch)
        trained_with.append(schedule.lr)
        schedule.step(epoch, val_loss)
    return trained_with


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, [None] * 6),  # plateau: validation losses decide
        ({"warmup_epochs": 2}, [0.05, 0.1, None, None, None, None]),
        ({"kind": "multistep", "milestones": [3, 5]}, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]),
        # cosine over the 4 epochs after warm-up: 0.1 * (1 + cos(pi * k / 4)) / 2, k = 0..3
        ({"kind": "cosine", "warmup_epochs": 2}, [0.05, 0.1, 0.1, 0.0853553, 0.05, 0.0146447]),
    ],
)
def test_scheduled_learning_rates(spec: dict[str, Any], expected: list[float | None]) -> None:
    schedule = schedule_of(**spec)
    fixed = [schedule.fixed_lr(epoch) for epoch in range(1, 7)]
    assert fixed == [pytest.approx(r, abs=1e-7) if r is not None else None for r in expected]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # Counted from epoch 2 (the last warm-up epoch, at the full rate): 4 is the best loss, epochs 3 and 4
        # do not improve on it, so with patience 1 the rate halves for epoch 5, and again for epoch 7. (Were
        # warm-up's first loss, 1, counted, it would halve for epoch 4 already.)
        (
            {"warmup_epochs": 2, "patience": 1, "factor": 0.5},
            [0.05, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025],
        ),
        (
            {"kind": "multistep", "milestones": [4], "warmup_epochs": 2},
            [0.05, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01],
        ),
        # The fixed schedules ignore validation losses; cosine starts at the full rate after warm-up.
        ({"kind": "cosine", "warmup_epochs": 3}, [1 / 30, 2 / 30, 0.1, 0.1, 0.0853553, 0.05, 0.0146447]),
    ],
)
def test_each_epoch_trains_at_the_rate_its_schedule_gives(
    spec: dict[str, Any], expected: list[float]
) -> None:
    schedule = schedule_of(epochs=7, **spec)
    assert rates(schedule, [1.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]) == pytest.approx(expected, abs=1e-7)
    assert all(group["lr"] == schedule.lr for group in schedule.optimizer.param_groups)


def test_a_restored_schedule_goes_on_as_the_uninterrupted_one() -> None:
    """After two epochs without improvement (patience 2), a third lowers the rate: only if the restored
    schedule remembers the first two."""
    losses = [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    straight = schedule_of(patience=2, factor=0.5)
    assert rates(straight, losses) == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05])

    first = schedule_of(patience=2, factor=0.5)
    rates(first, losses[:2])
    saved, optimizer_saved = first.state_dict(), first.optimizer.state_dict()
    restored = schedule_of(patience=2, factor=0.5)
    restored.optimizer.load_state_dict(optimizer_saved)
    restored.load_state_dict(saved)
    assert restored.state_dict() == saved
    assert rates(restored, losses[2:], first_epoch=3) == pytest.approx([0.1, 0.1, 0.05, 0.05])
    fresh = schedule_of(patience=2, factor=0.5)  # what forgetting the state would give
    assert rates(fresh, losses[2:], first_epoch=3) != pytest.approx([0.1, 0.1, 0.05, 0.05])
