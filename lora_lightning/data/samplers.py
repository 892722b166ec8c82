"""Training-order samplers that batch sentences of similar length (less padding), seeded per epoch.

torch and transformers only: the data module (``base.py``) chooses one by ``data.length_grouping``.
"""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

__all__ = ["EpochLengthGroupedSampler", "SortedLengthBatchSampler"]


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """transformers' ``LengthGroupedSampler`` with a per-epoch seed.

    Shuffles indices, cuts them into mega-batches of ``50 * batch_size`` (fewer for small sets),
    sorts each by length, longest batch first (Trainer's ``group_by_length``). Lightning calls ``set_epoch`` before each epoch, so
    the order depends only on ``(seed, epoch)``: a resumed run sees the same batches.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed + epoch)


class SortedLengthBatchSampler(torch.utils.data.Sampler):
    """Batches of (nearly) one length, in a new random order every epoch: less padding than
    ``EpochLengthGroupedSampler``'s mega-batches.

    Each epoch: shuffle every index, sort stably by length (so sentences of one length are in a new
    random order), cut into batches of ``batch_size``, shuffle the order of the full batches and put
    the partial one (if any) last, so that ``BatchSampler`` cuts the same batches. Padding is only
    where a batch spans two lengths. The order depends only on ``(seed, epoch)``: a resumed run sees
    the same batches. Yields indices, ``len(lengths)`` per epoch.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        self.batch_size, self.lengths, self.seed = batch_size, list(lengths), seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = sorted(torch.randperm(len(self.lengths), generator=g).tolist(), key=self.lengths.__getitem__)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        full = len(order) // self.batch_size
        shuffled = [batches[i] for i in torch.randperm(full, generator=g).tolist()] + batches[full:]
        return (i for batch in shuffled for i in batch)
