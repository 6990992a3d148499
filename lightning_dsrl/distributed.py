"""Collectives over the training processes, each the identity in a single process.

Every rank must run the same collectives in the same order, or the run hangs: a forward of a
sharded model all-gathers, a backward reduce-scatters (FSDP) or all-reduces (DDP). Where the
number of passes depends on local data (ranks whose dynamic sampling came back short),
:func:`passes_on_all_ranks` gives the largest count and the short ranks run extra passes whose
loss is multiplied by zero.

Data parallelism is exact: the module divides each rank's loss by :func:`per_rank_sizes` of its
minibatch (the sizes over all ranks, divided by their number), so averaging gradients over the
ranks gives the single-process gradient of the union of the ranks' rollouts.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["all_gather_objects", "interleave", "max_over_ranks", "mean_over_ranks", "passes_on_all_ranks",
           "per_rank_sizes", "sum_over_ranks", "world_size"]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if _distributed() else 1


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def passes_on_all_ranks(count: int, device: torch.device) -> int:
    """The largest ``count`` over all ranks (``count`` itself in a single process)."""
    if world_size() == 1:
        return count
    value = torch.tensor([count], dtype=torch.long, device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return int(value.item())


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest ``value`` over all ranks (NaN if any rank has NaN)."""
    if world_size() == 1:
        return value
    values = torch.tensor(all_gather_objects(float(value)), dtype=torch.float64)
    return float(values.max())


def per_rank_sizes(sizes: dict[str, float], device: torch.device) -> dict[str, float]:
    """A rank's minibatch sizes (``seqs``, ``tokens``, ``correct``) replaced by the sum over ranks
    divided by the number of ranks.

    With these, rank ``r``'s loss is ``S_r / (T / W)`` for a sum ``S_r`` over its samples and a
    global size ``T``; the gradient average over ``W`` ranks (DDP, FSDP) is then ``grad(sum_r S_r) / T``,
    the single-process gradient of all ranks' samples, whatever the aggregation mode.
    """
    size = world_size()
    if size == 1:
        return sizes
    keys = sorted(sizes)
    values = torch.tensor([sizes[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)
    return dict(zip(keys, (values / size).tolist()))


def sum_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value summed over the ranks (keys missing on a rank count as 0; ``values`` itself in one process)."""
    if world_size() == 1:
        return dict(values)
    keys = sorted(set().union(*all_gather_objects(sorted(values))))
    totals = torch.tensor([values.get(k, 0.0) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(totals)
    return dict(zip(keys, totals.tolist()))


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each scalar averaged over the ranks that report it (one object all-gather; ranks may report
    different keys, e.g. DS-GRPO's term on correct completions when a rank has none). Equal-sized rank
    batches make the mean of rank means the mean over all samples."""
    gathered = all_gather_objects(values)
    if len(gathered) == 1:
        return values
    keys = dict.fromkeys(k for part in gathered for k in part)  # first-seen order
    return {k: sum(p[k] for p in gathered if k in p) / sum(1 for p in gathered if k in p) for k in keys}


def interleave(parts: list[list[Any]]) -> list[Any]:
    """Rank ``r``'s ``j``-th item at position ``r + j * len(parts)``: the order of a set that was dealt
    out to the ranks round-robin (``EvalSampler``), put back together."""
    return [part[j] for j in range(max(map(len, parts), default=0)) for part in parts if j < len(part)]
