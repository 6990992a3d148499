"""The training order of the prompts: seeded, sharded over ranks, and resumable mid-epoch.

``PromptSampler`` is a ``DistributedSampler`` (so Lightning leaves it in place instead of wrapping
it): epoch ``e`` is the permutation seeded by ``seed + e``, and rank ``r`` of ``W`` takes every
``W``-th prompt of it from position ``r`` (the last prompts are repeated so that ranks have equal
shares). One process is the case ``W = 1``.

``PromptLoader`` is a ``DataLoader`` with ``state_dict``/``load_state_dict``: it counts the batches
it has handed out in the current epoch. Lightning stores that count in every checkpoint (and
restores the epoch itself), so ``fit --ckpt_path`` continues with the next unseen batch of the
same permutation, not from the start of the epoch. Its own ``generator`` also keeps the
``DataLoader`` from drawing its worker base seed from torch's global generator, whose state the
resume restores and must not be shifted by when iterators happen to be created.

``EvalSampler`` shards the validation problems the same way, in order, and says which of a rank's
problems are repeats that only even out the shares, so that every problem is counted once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EvalSampler", "PromptLoader", "PromptSampler"]


class PromptSampler(DistributedSampler):
    """A seeded, sharded sampler that can start an epoch at a given position of its rank's share."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0  # indices of this rank's share to skip in the next epoch (set when resuming)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class PromptLoader(DataLoader):
    """A ``DataLoader`` over a :class:`PromptSampler` that Lightning can checkpoint and resume mid-epoch."""

    def __init__(self, dataset: Dataset, sampler: PromptSampler, batch_size: int, seed: int = 0,
                 **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.batches_seen = 0  # batches handed out in the current epoch
        self._resume_at = 0

    def __iter__(self):
        skip, self._resume_at = self._resume_at, 0
        self.sampler.start = skip * self.batch_size
        self.batches_seen = skip
        for batch in super().__iter__():
            self.batches_seen += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_seen": self.batches_seen, "epoch": int(self.sampler.epoch)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        seen = int(state["batches_seen"])
        self._resume_at = seen if seen < len(self) else 0  # a finished epoch resumes with a fresh one


class EvalSampler(DistributedSampler):
    """Validation problems in order, sharded: rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of the
    list padded to a multiple of ``W``, so every rank runs as many batches of the same sizes (with a sharded
    policy each generation step is a collective). Unlike ``DistributedSampler``, it yields the padded
    positions themselves (``>= len(dataset)``) instead of the indices they repeat, so the dataset can mark
    them as repeats: generated, but left out of every metric (see ``PromptDataModule.val_dataloader``)."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))
