"""``PassAtK``: the unbiased pass@k curve over problems, as a torchmetrics ``Metric``.

State is the per-problem sample and correct counts (concatenated across processes), so the
curve for every ``k <= n`` comes from one pass over the data.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_dsrl.functional import pass_at_k

__all__ = ["PassAtK", "powers_of_two"]


def powers_of_two(n: int) -> list[int]:
    """``[1, 2, 4, ..., n]`` (``n`` itself included even when it is not a power of two).

    >>> powers_of_two(12)
    [1, 2, 4, 8, 12]
    """
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n] if n >= 1 else []


class PassAtK(Metric):
    """Mean unbiased pass@k over problems, for ``k`` in ``ks`` (default: powers of two up to min n)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: list[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = ks
        self.add_state("n", default=[], dist_reduce_fx="cat")
        self.add_state("c", default=[], dist_reduce_fx="cat")

    def update(self, n: Tensor, c: Tensor) -> None:
        self.n.append(torch.as_tensor(n, dtype=torch.long).flatten())
        self.c.append(torch.as_tensor(c, dtype=torch.long).flatten())

    def compute(self) -> dict[int, Tensor]:
        n, c = dim_zero_cat(self.n), dim_zero_cat(self.c)
        if n.numel() == 0:
            raise ValueError("PassAtK.compute() called with no problems: the evaluation set is empty")
        ks = self.ks or powers_of_two(int(n.min()))
        return {k: pass_at_k(n, c, k).mean().float() for k in ks}
