"""Batches for inference: small first batches, so the first result comes quickly, then full ones for throughput."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler

__all__ = ["GrowingBatchSampler"]


class GrowingBatchSampler(Sampler[list[int]]):
    """Indices ``0 .. length - 1`` in order, in batches of 1, 2, 4, ... images, doubling up to ``batch_size``.

    A run of many images gets full batches after a few small ones (about ``2 * batch_size`` images), and a single
    study's first image waits for one image's explanation, not for a full batch. Every image's result is the same
    whatever its batch (the explainers are batch-independent), so only the timing changes.

    Example::

        DataLoader(dataset, batch_sampler=GrowingBatchSampler(len(dataset), batch_size=8))
        # batches of 1, 2, 4, 8, 8, ... images
    """

    def __init__(self, length: int, batch_size: int, first_batch_size: int = 1) -> None:
        if length < 0 or batch_size < 1 or first_batch_size < 1:
            raise ValueError(
                f"need length >= 0 and batch sizes >= 1, not {length}, {batch_size} and {first_batch_size}"
            )
        self.length = length
        self.batch_size = batch_size
        self.first_batch_size = min(first_batch_size, batch_size)

    def batch_sizes(self) -> list[int]:
        sizes, size, left = [], self.first_batch_size, self.length
        while left > 0:
            sizes.append(min(size, left))
            left -= sizes[-1]
            size = min(2 * size, self.batch_size)
        return sizes

    def __iter__(self) -> Iterator[list[int]]:
        start = 0
        for size in self.batch_sizes():
            yield list(range(start, start + size))
            start += size

    def __len__(self) -> int:
        return len(self.batch_sizes())
