"""The maths of the framework as small pure torch functions (see ``ALGORITHMS.md``).

Every objective and metric composes these; each docstring gives the equation it implements.
Conventions: ``N`` completions, ``L`` completion positions; ``group_ids`` are arbitrary integer
labels (unsorted, with gaps); masks may be bool or 0/1 float; nothing here clamps or dual-clips
unless it says so (those are objective options on top).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "masked_sum",
    "masked_mean",
    "group_advantages",
    "sequence_logprob",
    "ds_advantages",
    "kl_k3",
    "clipped_policy_loss",
    "clip_fraction",
    "truncated_is_weights",
    "aggregate",
    "token_logprobs",
    "entropy_from_logits",
    "pass_at_k",
    "sampled_entropy",
    "passk_advantages",
    "group_has_spread",
    "groups_all_zero",
]

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
ScaleMode = Literal["group", "batch", "none"]


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


def _group_index(group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Dense group index in ``[0, num_groups)`` for every sample, and the size of each group."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    counts = torch.bincount(inverse)
    return inverse, counts


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
    index, counts = _group_index(group_ids)
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
    if reduction == "sum":
        return masked_sum(logp, mask, dim=-1)
    if reduction == "mean":
        return masked_mean(logp, mask, dim=-1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


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
    index, counts = _group_index(group_ids)
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


def groups_all_zero(advantages: Tensor, group_ids: Tensor) -> tuple[float, float]:
    """How many groups have advantages that are all 0 (no policy-gradient signal), and how many groups
    there are.

    >>> groups_all_zero(torch.tensor([0., 0., .5, -.5, 0.]), torch.tensor([3, 3, 8, 8, 9]))
    (2.0, 3.0)
    """
    index, counts = _group_index(group_ids)
    nonzero = torch.zeros(counts.numel(), device=advantages.device).index_add_(0, index, advantages.ne(0).float())
    return float(nonzero.eq(0).sum()), float(counts.numel())


def group_has_spread(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """``[N]`` bool: whether the sample's group has rewards that are not all equal.

    A group whose rewards are all equal has ``A_i = 0`` under every GRPO scaling and carries no
    policy-gradient signal; DAPO's dynamic sampling drops such groups.

    >>> group_has_spread(torch.tensor([1., 0., 1., 1.]), torch.tensor([4, 4, 9, 9]))
    tensor([ True,  True, False, False])
    """
    index, counts = _group_index(group_ids)
    rewards = rewards.float()
    high = torch.full((counts.numel(),), -math.inf, device=rewards.device).scatter_reduce(0, index, rewards, "amax")
    low = torch.full((counts.numel(),), math.inf, device=rewards.device).scatter_reduce(0, index, rewards, "amin")
    return (high > low)[index]
