"""Per-completion advantages: GRPO's group normalisation, DS-GRPO's smoothing, Pass@k training's
closed form (ALGORITHMS.md sections 2-4)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_dsrl.functional.groups import group_has_spread, group_index
from lightning_dsrl.functional.reductions import masked_mean, masked_sum

__all__ = ["group_advantages", "sequence_logprob", "ds_advantages", "passk_advantages", "ScaleMode", "REDUCTIONS"]

ScaleMode = Literal["group", "batch", "none"]
REDUCTIONS: tuple[str, ...] = ("sum", "mean")  # of a completion's token log-probs into its log-likelihood


def group_advantages(
    rewards: Tensor, group_ids: Tensor, scale: ScaleMode = "group", eps: float = 1e-6
) -> Tensor:
    """GRPO's group-normalised advantage (ALGORITHMS.md section 2), one value per completion.

        A_i = (r_i - mean_{j in g(i)} r_j) / (std_{j in g(i)} r_j + eps)     scale="group"
        A_i = (r_i - mean_{j in g(i)} r_j) / (std_{all j} r_j + eps)         scale="batch"
        A_i =  r_i - mean_{j in g(i)} r_j                                    scale="none" (Dr.GRPO)

    ``std`` is the sample standard deviation (correction=1), as in TRL and verl. A group of
    size 1 has no baseline and gets 0.

    Args:
        rewards: ``[N]`` scalar rewards.
        group_ids: ``[N]`` integer group labels (any values, any order).
    Returns:
        ``[N]`` float32 advantages.

    >>> group_advantages(torch.tensor([1., 0., 0., 1.]), torch.tensor([7, 7, 3, 3]), scale="none")
    tensor([ 0.5000, -0.5000, -0.5000,  0.5000])
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    rewards = rewards.float()
    index, counts = group_index(group_ids)
    num_groups = counts.numel()
    sums = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, index, rewards)
    # a group of equal rewards is exactly 0: its float mean can miss the value by an ulp (eight
    # rewards of 0.1 average to 0.1 + 7e-9), and the std division would blow that up to ~0.01-0.1
    centred = torch.where(group_has_spread(rewards, group_ids), rewards - (sums / counts)[index], 0.0)
    if scale == "none":
        return centred
    if scale == "group":
        sq = torch.zeros_like(sums).index_add_(0, index, centred.square())
        std = (sq / (counts - 1).clamp(min=1)).sqrt()[index]
    else:
        std = rewards.std(correction=1) if rewards.numel() > 1 else rewards.new_zeros(())
    denom = std + eps
    # a group with no spread (or of size 1) has centred == 0: give 0, never 0/0
    return torch.where(denom > 0, centred / torch.where(denom > 0, denom, 1.0), torch.zeros_like(centred))


def sequence_logprob(logp: Tensor, mask: Tensor, reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    """Trajectory log-likelihood ``LL(i) = sum_t logp(i,t)`` (or its per-token mean), ``[N, L] -> [N]``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return masked_sum(logp, mask, dim=-1) if reduction == "sum" else masked_mean(logp, mask, dim=-1)


def ds_advantages(
    advantages: Tensor, correct: Tensor, seq_logp: Tensor, gamma_p: float, gamma_n: float
) -> Tensor:
    """Differential smoothing of the advantages, DS-GRPO (ALGORITHMS.md section 3).

        A_i^DS = A_i - gamma_p * LL(i)     if correct_i   (rare correct solutions get a larger bonus)
        A_i^DS = A_i + gamma_n * LL(i)     otherwise      (rare mistakes get a larger penalty)

    ``LL`` is a constant per completion: it is detached, no gradient flows through it.

    Args:
        advantages: ``[N]`` GRPO advantages. correct: ``[N]`` bool. seq_logp: ``[N]`` log-likelihoods (<= 0).

    >>> ds_advantages(torch.tensor([1., -1.]), torch.tensor([True, False]), torch.tensor([-2., -4.]), 0.1, 0.05)
    tensor([ 1.2000, -1.2000])
    """
    seq_logp = seq_logp.detach().to(advantages.dtype)
    correct = correct.to(torch.bool)
    return torch.where(correct, advantages - gamma_p * seq_logp, advantages + gamma_n * seq_logp)


def passk_advantages(correct: Tensor, group_ids: Tensor, k: int, eps: float = 1e-6) -> Tensor:
    """Analytic Pass@k-training advantages (Chen et al. 2025, arXiv 2508.10751, eqs. 14-15).

    For a group of ``N`` samples, ``N_neg`` of them incorrect, the reward of a random k-subset is
    1 if it holds a correct sample; its mean and standard deviation over all k-subsets are

        R     = 1 - C(N_neg, k) / C(N, k)                      (the unbiased pass@k of the group)
        sigma = sqrt(R * (1 - R))

    and a sample's advantage is the mean over the subsets holding it of ``(reward - R) / sigma``:

        A_pos = (1 - R) / (sigma + eps)
        A_neg = (1 - R - C(N_neg - 1, k - 1) / C(N - 1, k - 1)) / (sigma + eps)

    A group with ``sigma == 0`` (all incorrect, or too few incorrect to fill a k-subset) gets 0.
    The binomials are exact integers (``math.comb``), so ``sigma`` is exactly 0 there. With
    ``k = 1`` this is GRPO's ``(c_i - mean) / std`` with the population std.

    Args:
        correct: ``[N]`` bool verdicts. group_ids: ``[N]`` integer group labels. k: 1 <= k <= every group's size.
    Returns:
        ``[N]`` float32 advantages.

    N = 4, one correct, k = 2: R = 1 - C(3,2)/C(4,2) = 1/2, sigma = 1/2, A_pos = (1/2)/(1/2) = 1,
    A_neg = (1/2 - C(2,1)/C(3,1)) / (1/2) = -1/3:

    >>> passk_advantages(torch.tensor([True, False, False, False]), torch.zeros(4, dtype=torch.long), k=2)
    tensor([ 1.0000, -0.3333, -0.3333, -0.3333])
    """
    index, counts = group_index(group_ids)
    num_correct = torch.zeros(counts.numel(), dtype=torch.long).index_add_(0, index.cpu(), correct.long().cpu())
    a_pos = torch.zeros(counts.numel(), dtype=torch.float64)
    a_neg = torch.zeros_like(a_pos)
    for g, (n, c) in enumerate(zip(counts.tolist(), num_correct.tolist())):
        if not 1 <= k <= n:
            raise ValueError(f"pass@k advantages need 1 <= k <= group size, got k={k} for a group of {n}")
        neg = n - c
        fail = math.comb(neg, k) / math.comb(n, k)  # 1 - R, exact ratio of integers
        sigma = math.sqrt((1.0 - fail) * fail)
        if sigma == 0.0:
            continue
        a_pos[g] = fail / (sigma + eps)
        a_neg[g] = (fail - math.comb(neg - 1, k - 1) / math.comb(n - 1, k - 1)) / (sigma + eps) if neg else 0.0
    out = torch.where(correct.cpu().bool(), a_pos[index.cpu()], a_neg[index.cpu()])
    return out.float().to(correct.device)
