"""Batches reach the device in order and unchanged; on a GPU through the side-stream prefetch."""

from __future__ import annotations

import pytest
import torch

from mega3d.trainer.data.augment import normalize
from mega3d.trainer.prefetch import prefetched
from mega3d.trainer.spec import KINETICS_MEAN, KINETICS_STD

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device here: the side-stream prefetch is checked on GPUs only",
)


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, 256, (4, 2, 8, 8, 3), dtype=torch.uint8, generator=generator), torch.rand(4) < 0.5)
        for _ in range(n)
    ]


def model_input(device: torch.device, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor]:
    clips, flips = batch
    return (normalize(clips.to(device, non_blocking=True), KINETICS_MEAN, KINETICS_STD, flips),)


def expected(source: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [model_input(torch.device("cpu"), batch)[0] for batch in source]


def test_on_cpu_each_batch_is_made_when_asked() -> None:
    source = batches(3)
    made: list[int] = []

    def to_device(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor]:
        made.append(len(made))
        return model_input(torch.device("cpu"), batch)

    stream = prefetched(source, to_device, torch.device("cpu"))
    assert made == []
    first = next(stream)
    assert made == [0] and torch.equal(first[0], expected(source)[0])
    rest = [item[0] for item in stream]
    assert all(torch.equal(a, b) for a, b in zip(rest, expected(source)[1:], strict=True))


@needs_gpu
def test_on_a_gpu_batches_arrive_one_ahead_and_equal_the_cpu_ones() -> None:
    device = torch.device("cuda", 0)
    source = [(clips.pin_memory(), flips) for clips, flips in batches(5)]
    arrived = [item[0] for item in prefetched(source, lambda b: model_input(device, b), device)]
    assert all(a.device == device for a in arrived)
    for got, want in zip(arrived, expected(source), strict=True):
        assert torch.allclose(got.cpu(), want, atol=1e-6)
