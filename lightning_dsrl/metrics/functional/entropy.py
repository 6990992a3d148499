"""Mean token entropy over all / correct / incorrect completions (ALGORITHMS.md section 5), the
functional twin of :class:`~lightning_dsrl.metrics.entropy.TokenEntropy`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["token_entropy"]


def _token_entropy_update(entropy: Tensor, mask: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    """``[3]`` sums of token entropy and ``[3]`` token counts over all / correct / incorrect completions."""
    mask = mask.to(torch.float64)
    per_seq = (entropy.detach().to(torch.float64) * mask).sum(-1)  # [N]
    tokens = mask.sum(-1)  # [N]
    ok = correct.to(torch.bool)
    sums = torch.stack([per_seq.sum(), per_seq[ok].sum(), per_seq[~ok].sum()])
    counts = torch.stack([tokens.sum(), tokens[ok].sum(), tokens[~ok].sum()])
    return sums, counts


def _token_entropy_compute(sums: Tensor, counts: Tensor) -> Tensor:
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))


def token_entropy(entropy: Tensor, mask: Tensor, correct: Tensor) -> Tensor:
    """Mean per-token entropy over all / correct / incorrect completions, ``[N, L], [N, L], [N] -> [3]``.

        H_set = sum_{i in set, t} H(i,t) / sum_{i in set} T_i      (token-weighted; nan for an empty set)

    ``entropy[i, t]`` is the entropy of the policy's full next-token distribution at the
    sampling temperature (:func:`lightning_dsrl.functional.entropy_from_logits`).

    >>> token_entropy(torch.tensor([[1., 3.], [4., 9.]]), torch.tensor([[1, 1], [1, 0]]), torch.tensor([True, False]))
    tensor([2.6667, 2.0000, 4.0000], dtype=torch.float64)
    """
    return _token_entropy_compute(*_token_entropy_update(entropy, mask, correct))
