"""Data loaders that keep two promises of the package: a run resumed mid-epoch sees the batches an
uninterrupted run would, and evaluation under several processes scores every sentence once.

torch only: the data module (``data.py``) builds them; Lightning finds ``state_dict`` /
``load_state_dict`` on the loader and stores its state in the checkpoint.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler


class SkippingBatchSampler(BatchSampler):
    """``BatchSampler`` whose next pass skips its first ``skip`` batches, once (a mid-epoch resume).

    The batches are exactly ``BatchSampler(sampler, batch_size, drop_last)``'s; with a sampler whose
    order depends only on ``(seed, epoch)`` the skipped batches are the ones already trained on.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        return itertools.islice(super().__iter__(), skip, None)


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` that Lightning checkpoints mid-epoch.

    Lightning saves ``state_dict()`` with every checkpoint (``loops.fit_loop.combined_loader``) and
    hands it back through ``load_state_dict`` when ``fit --ckpt_path`` resumes; the resumed epoch then
    starts after the batches already done, instead of replaying the epoch from its start.

    Args:
        dataset, collate_fn, num_workers, pin_memory: as ``DataLoader``'s.
        sampler: the per-epoch sampler (``set_epoch`` is called on it by Lightning; its ``epoch``
            attribute is saved with the state).
        batch_size: sentences per batch.
        batches_done: returns how many batches of the current epoch are done (0 at an epoch's end).
    """

    def __init__(self, dataset, sampler: Sampler, batch_size: int, batches_done: Callable[[], int],
                 collate_fn=None, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__(dataset, batch_sampler=SkippingBatchSampler(sampler, batch_size), collate_fn=collate_fn,
                         num_workers=num_workers, pin_memory=pin_memory)
        self.batches_done = batches_done

    def state_dict(self) -> dict:
        epoch = getattr(self.batch_sampler.sampler, "epoch", None)
        return {"batches_done": int(self.batches_done()), "epoch": epoch}

    def load_state_dict(self, state: dict) -> None:
        # Lightning draws the resumed epoch's first batch before it calls set_epoch: set it here
        if state.get("epoch") is not None and hasattr(self.batch_sampler.sampler, "set_epoch"):
            self.batch_sampler.sampler.set_epoch(int(state["epoch"]))
        self.batch_sampler.skip = int(state.get("batches_done", 0))


class ShardedOrderSampler(DistributedSampler):
    """Evaluation order split across processes with no sentence repeated or dropped.

    Rank ``k`` of ``n`` takes ``order[k::n]``; ranks may differ by one sentence. Lightning's own
    ``DistributedSampler`` pads the last ranks with repeated sentences, which would count them twice in
    ``val_acc``; being a ``DistributedSampler`` already, this one is kept as is by Lightning.

    With fewer sentences than processes (C37), a process left without one gets ``pad_index`` alone: a row of
    weight 0 (the data module appends it), which the model leaves out of every metric and the prediction writer
    out of the file, so that every process runs a batch (Lightning stops on an empty loader) and the numbers
    are the one-process ones.

    Args:
        order: dataset indices in the order to evaluate them (e.g. longest first).
        num_replicas: number of processes (``trainer.world_size``).
        rank: this process's rank (``trainer.global_rank``).
        pad_index: the weight-0 row's index, for a process without a sentence (``None``: none given).
    """

    def __init__(self, order: Sequence[int], num_replicas: int, rank: int, pad_index: int | None = None) -> None:
        self.order = list(order)
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        share = self.order[rank::num_replicas]
        self.indices = share if share or pad_index is None else [pad_index]
        self.num_samples = len(self.indices)
        self.total_size = len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
