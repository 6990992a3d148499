"""Groups of completions: a rollout's ``G`` samples of one prompt share a label in ``group_ids``.

Labels are arbitrary integers (unsorted, with gaps); every function here goes through
:func:`group_index`, which numbers the groups ``0..num_groups-1`` in sorted label order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["group_index", "group_positions", "group_counts", "group_has_spread", "groups_all_zero"]


def group_index(group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Dense group index in ``[0, num_groups)`` of every sample (groups in sorted label order), and the
    size of each group, ``[N] -> [N], [num_groups]``.

    >>> group_index(torch.tensor([7, 3, 7]))
    (tensor([1, 0, 1]), tensor([1, 2]))
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)
    counts = torch.bincount(inverse)
    return inverse, counts


def group_positions(group_ids: Tensor) -> list[list[int]]:
    """Sample positions of every group, groups in sorted label order.

    >>> group_positions(torch.tensor([7, 3, 7]))
    [[1], [0, 2]]
    """
    index, counts = group_index(group_ids)
    out: list[list[int]] = [[] for _ in range(counts.numel())]
    for position, group in enumerate(index.tolist()):
        out[group].append(position)
    return out


def group_counts(group_ids: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    """Samples ``n`` and correct samples ``c`` of every group, ``[N], [N] -> [num_groups], [num_groups]``.

    >>> group_counts(torch.tensor([5, 5, 2]), torch.tensor([True, False, True]))
    (tensor([1, 2]), tensor([1, 1]))
    """
    index, n = group_index(group_ids)
    c = torch.bincount(index, weights=correct.float(), minlength=n.numel()).long()
    return n, c


def group_has_spread(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """``[N]`` bool: whether the sample's group has rewards that are not all equal.

    A group whose rewards are all equal has ``A_i = 0`` under every GRPO scaling and carries no
    policy-gradient signal; DAPO's dynamic sampling drops such groups.

    >>> group_has_spread(torch.tensor([1., 0., 1., 1.]), torch.tensor([4, 4, 9, 9]))
    tensor([ True,  True, False, False])
    """
    index, counts = group_index(group_ids)
    rewards = rewards.float()
    high = torch.full((counts.numel(),), -math.inf, device=rewards.device).scatter_reduce(0, index, rewards, "amax")
    low = torch.full((counts.numel(),), math.inf, device=rewards.device).scatter_reduce(0, index, rewards, "amin")
    return (high > low)[index]


def groups_all_zero(advantages: Tensor, group_ids: Tensor) -> tuple[float, float]:
    """How many groups have advantages that are all 0 (no policy-gradient signal), and how many groups
    there are.

    >>> groups_all_zero(torch.tensor([0., 0., .5, -.5, 0.]), torch.tensor([3, 3, 8, 8, 9]))
    (2.0, 3.0)
    """
    index, counts = group_index(group_ids)
    nonzero = torch.zeros(counts.numel(), device=advantages.device).index_add_(0, index, advantages.ne(0).float())
    return float(nonzero.eq(0).sum()), float(counts.numel())
