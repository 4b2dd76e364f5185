"""Batches moved to the training device one step ahead."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

Batch = TypeVar("Batch", bound=tuple[Any, ...])


def prefetched(
    batches: Iterable[Any], to_device: Callable[[Any], Batch], device: torch.device
) -> Iterator[Batch]:
    """`to_device(batch)` for each batch. On a GPU it runs one batch ahead on a side CUDA stream, so that
    the copy (from pinned memory) and the batched transforms of the next batch overlap the current step's
    kernels; elsewhere each batch is made when asked."""
    if device.type != "cuda":
        yield from map(to_device, batches)
        return
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    source = iter(batches)

    def ahead() -> Batch | None:
        batch = next(source, None)
        if batch is None:
            return None
        with torch.cuda.stream(side):
            return to_device(batch)

    coming = ahead()
    while coming is not None:
        main.wait_stream(side)
        for item in coming:
            if isinstance(item, torch.Tensor) and item.device.type == "cuda":
                item.record_stream(main)  # its memory is not reused while the main stream still reads it
        current, coming = coming, ahead()
        yield current
