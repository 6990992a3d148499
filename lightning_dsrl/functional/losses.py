"""Per-token loss terms: the clipped surrogate, the k3 KL, truncated importance weights, and
R1-zero-Div's sampled entropy (ALGORITHMS.md sections 2 and 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dsrl.functional.reductions import masked_mean

__all__ = ["kl_k3", "clipped_policy_loss", "clip_fraction", "truncated_is_weights", "sampled_entropy"]


def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k3 estimator of ``KL(pi || pi_ref)`` (Schulman), unclamped, elementwise.

        kl = exp(logp_ref - logp) - (logp_ref - logp) - 1   (>= 0, unbiased under samples from pi)

    >>> kl_k3(torch.tensor([0.0]), torch.tensor([0.0]))
    tensor([0.])
    """
    delta = logp_ref - logp
    return torch.exp(delta) - delta - 1.0


def _token_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    """Broadcast ``[N]`` advantages to ``[N, L]``; ``[N, L]`` passes through."""
    return advantages.unsqueeze(-1) if advantages.dim() == like.dim() - 1 else advantages


def clipped_policy_loss(
    logp: Tensor, logp_old: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float
) -> Tensor:
    """PPO/GRPO clipped surrogate as a per-token loss (no dual clip), ``[N, L]``.

        rho  = exp(logp - logp_old)
        loss = -min(rho * A, clip(rho, 1 - epsilon_low, 1 + epsilon_high) * A)

    ``advantages`` is ``[N]`` (broadcast over tokens) or ``[N, L]``.

    >>> clipped_policy_loss(torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([2.0]), 0.2, 0.2)
    tensor([[-2.]])
    """
    adv = _token_advantages(advantages, logp)
    ratio = torch.exp(logp - logp_old)
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    return -torch.minimum(ratio * adv, clipped * adv)


def clip_fraction(
    logp: Tensor, logp_old: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float, mask: Tensor
) -> Tensor:
    """Fraction of (masked) tokens where the clipped term is the active one (no gradient there)."""
    adv = _token_advantages(advantages, logp)
    ratio = torch.exp(logp - logp_old)
    clipped = ((ratio > 1.0 + epsilon_high) & (adv > 0)) | ((ratio < 1.0 - epsilon_low) & (adv < 0))
    return masked_mean(clipped.float(), mask)


def truncated_is_weights(logp_old: Tensor, sampler_logp: Tensor, cap: float) -> Tensor:
    """Truncated importance weights for the rollout engine's mismatch with the trainer, ``[N, L]``
    (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"):

        w = min(pi_old / pi_sampler, C) = min(exp(logp_old - sampler_logp), C)

    ``pi_old`` is the trainer's log-prob of the sampled token, ``pi_sampler`` the engine's (vLLM's
    kernels, precision and sampler differ from the trainer's); the weight multiplies the
    policy-gradient term and carries no gradient.

    >>> truncated_is_weights(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, -2.0]]), 2.0)
    tensor([[1., 2.]])
    """
    return torch.exp(logp_old.detach() - sampler_logp).clamp(max=cap)


def sampled_entropy(logp: Tensor, logp_old: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence entropy estimate from the sampled tokens, R1-zero-Div's ``D_i`` (ALGORITHMS.md section 4).

        H(pi(.|s)) = E_{a ~ pi_old}[ -(pi(a|s) / pi_old(a|s)) * log pi(a|s) ]
        D_i        = (1/T_i) * sum_t [ -rho(i,t) * logp(i,t) ],     rho = exp(logp - logp_old)

    Differentiable through ``logp`` (both in ``rho`` and in ``log pi``): at ``rho == 1`` the
    per-token gradient of ``D_i`` is ``-(1 + logp) / T_i`` with respect to ``logp``, positive
    for tokens with ``pi < 1/e``. ``logp_old`` is treated as a constant.

    Args:
        logp: ``[N, L]`` log-probs of the sampled tokens under the current policy.
        logp_old: ``[N, L]`` log-probs under the policy that sampled them.
        mask: ``[N, L]`` completion mask.
    Returns:
        ``[N]`` estimates (0 for an empty completion).

    >>> half = torch.log(torch.tensor([[0.5, 0.5], [0.25, 1.0]]))
    >>> sampled_entropy(half, half, torch.tensor([[1, 1], [1, 0]]))  # -log .5 = .6931, -log .25 = 1.3863
    tensor([0.6931, 1.3863])
    """
    ratio = torch.exp(logp - logp_old.detach())  # [N, L]
    return masked_mean(-ratio * logp, mask, dim=-1)
