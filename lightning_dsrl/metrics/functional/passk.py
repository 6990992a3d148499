"""pass@k, mean@k and Potential@k over per-problem counts (ALGORITHMS.md section 5), the functional twins
of :mod:`lightning_dsrl.metrics.passk`. ``n`` and ``c`` are samples and correct samples per problem,
``P`` problems, ``K`` values of ``k``. Input that can never make sense (``k > n``, a problem with no
sample) raises ``ValueError``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_dsrl.functional.estimators import pass_at_k

__all__ = ["powers_of_two", "pass_at_k_curve", "pass_at_k_bootstrap", "mean_at_k", "potential_at_k"]


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


def _check_counts(n: Tensor, c: Tensor, ks: list[int] | None = None) -> None:
    if n.shape != c.shape or n.dim() != 1:
        raise ValueError(f"n and c must be 1-D and of equal length, got shapes {tuple(n.shape)} and {tuple(c.shape)}")
    if n.numel() and bool((n < 1).any()):
        raise ValueError(f"{int((n < 1).sum())} problem(s) have no sample (n = 0): every problem needs n >= 1")
    if bool(((c < 0) | (c > n)).any()):
        raise ValueError("correct counts must satisfy 0 <= c <= n for every problem")
    if ks is not None and n.numel():
        if any(k < 1 for k in ks):
            raise ValueError(f"k must be >= 1, got ks={ks}")
        if max(ks) > int(n.min()):
            raise ValueError(f"pass@{max(ks)} needs at least {max(ks)} samples per problem, but a problem has "
                             f"only n = {int(n.min())}: lower k or sample more (rollout.val_num_generations)")


def _pass_at_k_matrix(n: Tensor, c: Tensor, ks: list[int]) -> Tensor:
    """``[P, K]`` float64 pass@k of every problem for every ``k`` (unbiased estimator)."""
    return torch.stack([pass_at_k(n, c, k) for k in ks], dim=-1).reshape(n.numel(), len(ks))


def pass_at_k_curve(n: Tensor, c: Tensor, ks: list[int] | None = None) -> Tensor:
    """Mean over problems of the unbiased pass@k (Chen et al. 2021), one value per ``k``, ``[K]`` float64.

        pass@k = mean_problems [ 1 - C(n - c, k) / C(n, k) ]

    ``ks`` defaults to ``1, 2, 4, ..., min n``. Float64 log-gamma per problem
    (:func:`lightning_dsrl.functional.pass_at_k`): exact to ~1e-12 for n = 256.

    >>> pass_at_k_curve(torch.tensor([4, 4]), torch.tensor([1, 0]))  # (1/4 + 0)/2, (1/2 + 0)/2, (1 + 0)/2
    tensor([0.1250, 0.2500, 0.5000], dtype=torch.float64)
    """
    n, c = torch.as_tensor(n).flatten(), torch.as_tensor(c).flatten()
    if n.numel() == 0:
        raise ValueError("pass@k of no problems: the evaluation set is empty")
    ks = ks or powers_of_two(int(n.min()))
    _check_counts(n, c, ks)
    return _pass_at_k_matrix(n, c, ks).mean(0)


def pass_at_k_bootstrap(
    n: Tensor, c: Tensor, ks: list[int], num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Percentile bootstrap interval of :func:`pass_at_k_curve` over problems, ``([K], [K])``.

    Draw ``num_resamples`` sets of ``P`` problems with replacement, take the mean pass@k of each,
    and return the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles. Problems are
    first put in ``(n, c)`` order, so the interval does not depend on the order they arrived in
    (or on how they were split across processes).
    """
    n, c = torch.as_tensor(n).flatten().long(), torch.as_tensor(c).flatten().long()
    _check_counts(n, c, ks)
    if not 0 < confidence < 1 or num_resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and num_resamples >= 1, got {confidence}, {num_resamples}")
    order = torch.argsort(n * (int(n.max()) + 1) + c, stable=True)
    values = _pass_at_k_matrix(n[order], c[order], ks)  # [P, K]
    num = n.numel()
    generator = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, num_resamples, 256):  # chunks keep the [chunk, P] weights small
        size = min(256, num_resamples - start)
        index = torch.randint(0, num, (size, num), generator=generator)
        weights = torch.zeros(size, num, dtype=torch.float64).scatter_add_(
            1, index, torch.ones(size, num, dtype=torch.float64))  # [chunk, P] draw counts
        means.append(weights @ values.cpu() / num)  # [chunk, K]
    means = torch.cat(means)  # [num_resamples, K]
    alpha = (1.0 - confidence) / 2
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)
    low, high = torch.quantile(means, q, dim=0)
    return low.to(n.device), high.to(n.device)


def mean_at_k(n: Tensor, c: Tensor) -> Tensor:
    """Mean@k (avg@k): expected accuracy of k samples, averaged over problems, ``[]`` float64.

        mean@k = mean_problems [ c / n ]

    The unbiased estimate of the accuracy of any ``k <= n`` of the samples is ``c / n``, so the
    value does not depend on ``k``.

    >>> mean_at_k(torch.tensor([4, 2]), torch.tensor([1, 2]))  # (1/4 + 2/2) / 2
    tensor(0.6250, dtype=torch.float64)
    """
    n, c = torch.as_tensor(n).flatten(), torch.as_tensor(c).flatten()
    _check_counts(n, c)
    if n.numel() == 0:
        raise ValueError("mean@k of no problems: the evaluation set is empty")
    return (c.double() / n.double()).mean()


def potential_at_k(n: Tensor, c: Tensor, greedy_correct: Tensor, ks: list[int] | None = None) -> Tensor:
    """Potential@k ([DIV]): among the problems greedy decoding fails, the mean unbiased pass@k, ``[K]``.

        potential@k = mean_{problems with greedy wrong} [ 1 - C(n - c, k) / C(n, k) ]

    ``nan`` for every ``k`` when greedy decoding solves every problem (no headroom to measure).

    >>> potential_at_k(torch.tensor([4, 4, 4]), torch.tensor([2, 1, 4]), torch.tensor([False, False, True]), [1, 4])
    tensor([0.3750, 1.0000], dtype=torch.float64)
    """
    n, c = torch.as_tensor(n).flatten(), torch.as_tensor(c).flatten()
    failed = ~torch.as_tensor(greedy_correct, dtype=torch.bool).flatten()
    if failed.numel() != n.numel():
        raise ValueError(f"greedy_correct has {failed.numel()} entries for {n.numel()} problems")
    if n.numel() == 0:
        raise ValueError("potential@k of no problems: the evaluation set is empty")
    ks = ks or powers_of_two(int(n.min()))
    _check_counts(n, c, ks)
    if not bool(failed.any()):
        return torch.full((len(ks),), math.nan, dtype=torch.float64, device=n.device)
    return _pass_at_k_matrix(n[failed], c[failed], ks).mean(0)
