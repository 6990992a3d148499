"""Masked reductions and the loss aggregation of the GRPO family (ALGORITHMS.md section 2)."""

from __future__ import annotations

from typing import Literal

import torch  # noqa: F401 - the doctests below use it
from torch import Tensor

__all__ = ["masked_sum", "masked_mean", "aggregate", "AGG_MODES", "AggMode"]

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``sum(values * mask)`` over ``dim`` (all elements when ``None``)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``sum(values * mask) / sum(mask)`` over ``dim``; 0 where the mask is empty.

    >>> masked_mean(torch.tensor([[1., 2., 9.]]), torch.tensor([[1, 1, 0]]), dim=-1)
    tensor([1.5000])
    """
    total = masked_sum(values, mask, dim)
    count = mask.to(values.dtype).sum() if dim is None else mask.to(values.dtype).sum(dim)
    return total / count.clamp(min=1)


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: AggMode,
    *,
    num_seqs: float | None = None,
    num_tokens: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce per-token values ``[N, L]`` to a scalar (the loss aggregation of each GRPO variant).

        token-mean               sum_{i,t} v*m / num_tokens                            (DAPO)
        seq-mean-token-mean      sum_i [ sum_t v*m / sum_t m ] / num_seqs              (GRPO)
        seq-mean-token-sum-norm  sum_i [ sum_t v*m / max_len ] / num_seqs              (Dr.GRPO)

    ``num_tokens`` / ``num_seqs`` default to this batch's own counts; pass the counts of the
    whole minibatch when ``values`` is one micro-batch of it, so that the micro-batch losses sum
    to the minibatch loss exactly. ``max_len`` is Dr.GRPO's constant (the generation budget);
    it defaults to ``L``, the padded width of ``values``.

    >>> v = torch.tensor([[1., 1., 0.], [4., 0., 0.]]); m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> aggregate(v, m, "token-mean"), aggregate(v, m, "seq-mean-token-mean"), aggregate(v, m, "seq-mean-token-sum-norm")
    (tensor(2.), tensor(2.5000), tensor(1.))
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        denom = mask.sum() if num_tokens is None else values.new_tensor(float(num_tokens))
        return (values * mask).sum() / denom.clamp(min=1)
    per_seq = (values * mask).sum(-1)  # [N]
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / mask.sum(-1).clamp(min=1)
    elif mode == "seq-mean-token-sum-norm":
        per_seq = per_seq / float(max_len if max_len is not None else values.shape[-1])
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(AGG_MODES)}")
    denom = float(num_seqs) if num_seqs is not None else float(values.shape[0])
    return per_seq.sum() / max(denom, 1.0)
