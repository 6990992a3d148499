"""From logits to what the losses and metrics need: the log-prob of the sampled token, the entropy of the
full next-token distribution, and the unbiased pass@k estimator of a problem's samples."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["token_logprobs", "entropy_from_logits", "pass_at_k"]


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """``log softmax(logits)[labels]`` in float32, ``[..., V], [...] -> [...]``.

    Computed as ``logit[label] - logsumexp(logits)`` so no second ``[..., V]`` tensor is kept.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution ``softmax(logits)`` over the last dim, ``[..., V] -> [...]``.

        H = logsumexp(z) - sum_v softmax(z)_v * z_v

    >>> round(entropy_from_logits(torch.zeros(4)).item(), 6) == round(math.log(4), 6)
    True
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def pass_at_k(n: int | Tensor, c: int | Tensor, k: int) -> float | Tensor:
    """Unbiased pass@k estimator (Chen et al. 2021): ``1 - C(n - c, k) / C(n, k)``.

    On Python ints the result is exact (integer binomials) and returned as a float. On tensors
    of ``n`` and ``c`` (one entry per problem) it returns one value per problem (not the mean),
    in float64 through Chen et al.'s product form,

        C(n - c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
                              = exp(T(n) - T(n - c)),   T(m) = sum_{i = k+1}^{m} log1p(-k / i),

    with ``T`` a cumulative sum, so ``c = 0`` gives exactly 0, ``n - c < k`` exactly 1, and the
    values stay accurate for n in the hundreds.

    >>> pass_at_k(4, 1, 2)
    0.5
    >>> pass_at_k(torch.tensor([4, 10]), torch.tensor([1, 0]), 2)
    tensor([0.5000, 0.0000], dtype=torch.float64)
    """
    if isinstance(n, Tensor) or isinstance(c, Tensor):
        n_t = torch.as_tensor(n, dtype=torch.long)
        c_t = torch.as_tensor(c, dtype=torch.long, device=n_t.device)
        n_t, c_t = torch.broadcast_tensors(n_t, c_t)
        if bool((k > n_t).any()) or bool((c_t > n_t).any()) or bool((c_t < 0).any()) or k < 1:
            raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n (k={k})")
        fail = n_t - c_t
        top = int(n_t.max()) if n_t.numel() else k
        i = torch.arange(k + 1, top + 1, dtype=torch.float64, device=n_t.device)
        cum = torch.cat([torch.zeros(k + 1, dtype=torch.float64, device=n_t.device),
                         torch.cumsum(torch.log1p(-k / i), 0)])  # [top + 1], cum[m] = T(m), 0 for m <= k
        log_ratio = cum[n_t] - cum[fail]  # meaningful only where fail >= k
        return torch.where(fail >= k, 0.0 - torch.expm1(log_ratio), torch.ones_like(log_ratio))  # 0.0 - x: no -0.0
    n, c = int(n), int(c)
    if not (1 <= k <= n and 0 <= c <= n):
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
