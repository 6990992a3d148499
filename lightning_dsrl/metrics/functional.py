"""Per-problem statistics of a rollout, shared by the training logs and the metric classes."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["group_counts", "distinct_correct", "zero_signal_fraction"]


def group_counts(group_ids: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    """Samples ``n`` and correct samples ``c`` of every group, ``[N], [N] -> [num_groups], [num_groups]``.

    >>> group_counts(torch.tensor([5, 5, 2]), torch.tensor([True, False, True]))
    (tensor([1, 2]), tensor([1, 1]))
    """
    _, index = torch.unique(group_ids, return_inverse=True)
    n = torch.bincount(index)
    c = torch.bincount(index, weights=correct.float(), minlength=n.numel()).long()
    return n, c


def distinct_correct(group_ids: Tensor, correct: Tensor, answers: list[str | None]) -> Tensor:
    """Number of distinct correct answers in each group (groups in sorted label order).

    >>> distinct_correct(torch.tensor([0, 0, 0, 1]), torch.tensor([True, True, True, False]), ["a", "a", "b", "c"])
    tensor([2, 0])
    """
    labels = group_ids.tolist()
    found: dict[int, set[str]] = {g: set() for g in labels}
    for g, ok, answer in zip(labels, correct.tolist(), answers):
        if ok and answer is not None:
            found[g].add(answer)
    return torch.tensor([len(found[g]) for g in sorted(found)])


def zero_signal_fraction(group_ids: Tensor, rewards: Tensor) -> float:
    """Fraction of groups whose rewards are all equal (their GRPO advantages are all 0).

    >>> zero_signal_fraction(torch.tensor([0, 0, 1, 1]), torch.tensor([1., 1., 0., 1.]))
    0.5
    """
    _, index = torch.unique(group_ids, return_inverse=True)
    num = int(index.max().item()) + 1 if index.numel() else 0
    if num == 0:
        return 0.0
    high = torch.full((num,), -float("inf")).scatter_reduce(0, index.cpu(), rewards.float().cpu(), "amax")
    low = torch.full((num,), float("inf")).scatter_reduce(0, index.cpu(), rewards.float().cpu(), "amin")
    return float((high == low).float().mean())
