"""Correctness metrics over problems as torchmetrics ``Metric`` s: ``PassAtK``, ``MeanAtK``, ``PotentialAtK``.

State is per-problem counts (samples ``n``, correct ``c``, and for Potential@k the greedy
verdict), concatenated across processes, so the whole curve ``k = 1, 2, 4, ..., n`` and its
bootstrap interval come from one pass over the data. The maths is in
:mod:`lightning_dsrl.metrics.functional`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_dsrl.metrics.functional.passk import (
    _check_counts,
    mean_at_k,
    pass_at_k_bootstrap,
    pass_at_k_curve,
    potential_at_k,
    powers_of_two,
)

__all__ = ["PassAtK", "MeanAtK", "PotentialAtK", "powers_of_two"]


def _cat(state: list[Tensor] | Tensor) -> Tensor:
    """A concatenated list state (a tensor already after a sync); empty when nothing was added."""
    if isinstance(state, list) and not state:
        return torch.zeros(0, dtype=torch.long)
    return dim_zero_cat(state)


def _counts(n: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    n = torch.as_tensor(n, dtype=torch.long).flatten()
    c = torch.as_tensor(c, dtype=torch.long, device=n.device).flatten()
    _check_counts(n, c)
    return n, c


class PassAtK(Metric):
    """Mean unbiased pass@k over problems for every ``k`` in ``ks`` (default ``1, 2, 4, ..., min n``).

    ``update(n, c)`` takes per-problem sample and correct counts (``[P]`` each, see
    :func:`~lightning_dsrl.metrics.functional.group_counts`). ``compute()`` returns
    ``{"k": [K] long, "value": [K] float64, "problems": [], "min_n": []}`` plus ``"low"``, ``"high"`` (the percentile bootstrap
    interval over problems) when ``bootstrap > 0``.

    Args:
        ks: the values of k (each must be <= the smallest n); ``None``: powers of two up to min n.
        bootstrap: resamples of the bootstrap interval (0: no interval).
        confidence: coverage of the interval.
        seed: seed of the resampling (the interval is reproducible).

    >>> metric = PassAtK(bootstrap=200)
    >>> metric.update(torch.tensor([4, 4]), torch.tensor([1, 0]))
    >>> out = metric.compute(); out["k"].tolist(), [round(v, 9) for v in out["value"].tolist()]
    ([1, 2, 4], [0.125, 0.25, 0.5])
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: list[int] | None = None, bootstrap: int = 0, confidence: float = 0.95, seed: int = 0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if ks is not None and (not ks or min(ks) < 1):
            raise ValueError(f"ks must be a non-empty list of k >= 1, got {ks}")
        if bootstrap < 0 or not 0 < confidence < 1:
            raise ValueError(f"need bootstrap >= 0 and 0 < confidence < 1, got {bootstrap}, {confidence}")
        self.ks = sorted(set(ks)) if ks else None
        self.bootstrap, self.confidence, self.seed = bootstrap, confidence, seed
        self.add_state("n", default=[], dist_reduce_fx="cat")
        self.add_state("c", default=[], dist_reduce_fx="cat")

    def update(self, n: Tensor, c: Tensor) -> None:
        n, c = _counts(n, c)
        self.n.append(n)
        self.c.append(c)

    def compute(self) -> dict[str, Tensor]:
        n, c = _cat(self.n), _cat(self.c)
        if n.numel() == 0:
            raise ValueError("PassAtK.compute() with no problems: the evaluation set is empty")
        ks = self.ks or powers_of_two(int(n.min()))
        out = {"k": torch.tensor(ks, device=n.device), "value": pass_at_k_curve(n, c, ks),
               "problems": torch.tensor(n.numel(), device=n.device), "min_n": n.min()}
        if self.bootstrap:
            out["low"], out["high"] = pass_at_k_bootstrap(n, c, ks, self.bootstrap, self.confidence, self.seed)
        return out


class MeanAtK(Metric):
    """Mean@k (avg@k): ``mean_problems(c / n)``, the expected accuracy of any k of the samples.

    >>> metric = MeanAtK(); metric.update(torch.tensor([4, 2]), torch.tensor([1, 2])); metric.compute()
    tensor(0.6250, dtype=torch.float64)
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, n: Tensor, c: Tensor) -> None:
        n, c = _counts(n, c)
        if n.numel():
            self.total += mean_at_k(n, c).to(self.total) * n.numel()
            self.count += n.numel()

    def compute(self) -> Tensor:
        if float(self.count) == 0:
            raise ValueError("MeanAtK.compute() with no problems: the evaluation set is empty")
        return self.total / self.count


class PotentialAtK(Metric):
    """Potential@k ([DIV]): among problems greedy decoding fails, the mean pass@k of the samples.

    ``update(n, c, greedy_correct)`` with per-problem counts and the verdict of one greedy
    completion per problem (``[P]`` each). ``compute()`` returns ``{"k": [K], "value": [K],
    "problems": []}``, ``problems`` being how many problems greedy decoding failed; ``value`` is
    ``nan`` when it failed none.

    >>> metric = PotentialAtK(ks=[1, 4])
    >>> metric.update(torch.tensor([4, 4, 4]), torch.tensor([2, 1, 4]), torch.tensor([False, False, True]))
    >>> out = metric.compute(); [round(v, 9) for v in out["value"].tolist()], int(out["problems"])
    ([0.375, 1.0], 2)
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: list[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = sorted(set(ks)) if ks else None
        self.add_state("n", default=[], dist_reduce_fx="cat")
        self.add_state("c", default=[], dist_reduce_fx="cat")
        self.add_state("greedy", default=[], dist_reduce_fx="cat")

    def update(self, n: Tensor, c: Tensor, greedy_correct: Tensor) -> None:
        n, c = _counts(n, c)
        greedy = torch.as_tensor(greedy_correct, device=n.device).flatten().long()
        if greedy.numel() != n.numel():
            raise ValueError(f"greedy_correct has {greedy.numel()} entries for {n.numel()} problems")
        self.n.append(n)
        self.c.append(c)
        self.greedy.append(greedy)

    def compute(self) -> dict[str, Tensor]:
        n, c, greedy = _cat(self.n), _cat(self.c), _cat(self.greedy)
        if n.numel() == 0:
            raise ValueError("PotentialAtK.compute() with no problems: the evaluation set is empty")
        ks = self.ks or powers_of_two(int(n.min()))
        return {"k": torch.tensor(ks, device=n.device), "value": potential_at_k(n, c, greedy.bool(), ks),
                "problems": (greedy == 0).sum()}
