"""Statistics of a study: pass@k over seeds and problems, paired comparisons, sample efficiency.

A study evaluates every arm (a method) with the same seeds on the same problems, so its numbers
come as ``[S, P]`` counts: ``n`` samples of problem ``p`` drawn from the model trained with seed
``s``, of which ``c`` are correct. Two sources of noise matter, training (the seed) and the choice
of problems, so the interval resamples both:

    one resample: draw S seeds and P problems with replacement (the same draws for every arm);
                  statistic = mean over the drawn (seed, problem) pairs of pass@k(s, p)

A *paired* comparison applies this to the difference ``pass@k_method(s, p) - pass@k_baseline(s, p)``
(same seed index, same problem), which removes the problems' shared difficulty from the noise.
Percentile intervals, as in :func:`~lightning_dsrl.metrics.functional.pass_at_k_bootstrap`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dsrl.metrics.functional import _check_counts, _pass_at_k_matrix

__all__ = ["passk_by_seed", "bootstrap_mean", "samples_to_reach"]


def passk_by_seed(n: Tensor, c: Tensor, ks: list[int]) -> Tensor:
    """``[S, P, K]`` float64 unbiased pass@k of every seed's model on every problem, from ``[S, P]`` counts.

    >>> passk_by_seed(torch.tensor([[4, 4]]), torch.tensor([[1, 0]]), [1, 2])[0]
    tensor([[0.2500, 0.5000],
            [0.0000, 0.0000]], dtype=torch.float64)
    """
    n, c = torch.as_tensor(n).long(), torch.as_tensor(c).long()
    if n.dim() != 2 or n.shape != c.shape:
        raise ValueError(f"n and c must be [seeds, problems], got {tuple(n.shape)} and {tuple(c.shape)}")
    out = []
    for row_n, row_c in zip(n, c):
        _check_counts(row_n, row_c, ks)
        out.append(_pass_at_k_matrix(row_n, row_c, ks))
    return torch.stack(out)


def bootstrap_mean(values: Tensor, num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over seeds and problems of ``values`` ``[S, P, K]``, and its percentile bootstrap interval
    resampling seeds and problems: ``([K], [K], [K])``.

    With one seed only the problems are resampled (the interval then leaves out training noise).

    >>> v = torch.tensor([[[0.0], [1.0]], [[0.0], [1.0]]], dtype=torch.float64)  # 2 seeds, 2 problems
    >>> mean, low, high = bootstrap_mean(v, num_resamples=500)
    >>> float(mean[0]), float(low[0]), float(high[0])
    (0.5, 0.0, 1.0)
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() != 3 or 0 in values.shape:
        raise ValueError(f"values must be a non-empty [seeds, problems, K] tensor, got {tuple(values.shape)}")
    if not 0 < confidence < 1 or num_resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and num_resamples >= 1, got {confidence}, {num_resamples}")
    seeds, problems, _ = values.shape
    generator = torch.Generator().manual_seed(seed)

    def draw_counts(size: int) -> Tensor:  # [R, size]: how often each index is drawn in each resample
        index = torch.randint(0, size, (num_resamples, size), generator=generator)
        return torch.zeros(num_resamples, size, dtype=torch.float64).scatter_add_(
            1, index, torch.ones(num_resamples, size, dtype=torch.float64))

    seed_weights = draw_counts(seeds)  # [R, S]
    problem_weights = draw_counts(problems)  # [R, P]
    means = torch.einsum("rs,rp,spk->rk", seed_weights, problem_weights, values) / (seeds * problems)  # [R, K]
    alpha = (1.0 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64), dim=0)
    return values.mean((0, 1)), low, high


def samples_to_reach(n: Tensor, c: Tensor, target: float) -> int | None:
    """The smallest ``k`` at which the mean pass@k over seeds and problems (``[S, P]`` counts) reaches
    ``target``, searching every ``k`` up to the fewest samples of a problem; ``None`` if none does.
    The DS paper's sample-efficiency claim: a method reaching GRPO's pass@64 at a smaller ``k``.

    >>> samples_to_reach(torch.tensor([[4, 4]]), torch.tensor([[1, 0]]), 0.25)  # pass@k = .125, .25, ...
    2
    """
    n = torch.as_tensor(n).long()
    ks = list(range(1, int(n.min()) + 1))
    curve = passk_by_seed(n, c, ks).mean((0, 1))  # [K]
    reached = (curve >= target - 1e-12).nonzero()
    return ks[int(reached[0])] if reached.numel() else None
