"""``sampled_entropy``, ``passk_advantages`` and ``group_has_spread`` against exact references:
the entropy of a small categorical, and a brute-force enumeration of all k-subsets."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_dsrl import functional as F


def test_sampled_entropy_is_unbiased_for_the_exact_entropy():
    """E_{a ~ pi_old}[-(pi(a)/pi_old(a)) log pi(a)] = H(pi), also when pi_old != pi (importance weights)."""
    pi = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=torch.float64)
    pi_old = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    exact = float(-(pi * pi.log()).sum())  # 1.2080...
    generator = torch.Generator().manual_seed(0)
    samples = torch.multinomial(pi_old, 200_000, replacement=True, generator=generator)  # [M]
    logp, logp_old = pi.log()[samples].view(1, -1), pi_old.log()[samples].view(1, -1)
    estimate = float(F.sampled_entropy(logp, logp_old, torch.ones_like(logp, dtype=torch.bool)))
    per_sample = -(logp - logp_old).exp() * logp
    standard_error = float(per_sample.std()) / math.sqrt(per_sample.numel())
    assert abs(estimate - exact) < 4 * standard_error, (estimate, exact, standard_error)
    # the same draws without the ratio estimate H(pi_old, pi) = -sum pi_old log pi, not H(pi)
    assert abs(float((-logp).mean()) - exact) > 10 * standard_error


def test_sampled_entropy_gradient_at_rho_one():
    """d D_i / d logp(i,t) = -(1 + logp) / T_i when logp_old = logp (one update per rollout)."""
    logp = torch.tensor([[-0.5, -2.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    F.sampled_entropy(logp, logp.detach(), mask).sum().backward()
    # T = 2: -(1 - .5)/2 = -.25 ; -(1 - 2)/2 = .5 ; padding 0
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, 0.5, 0.0]]))


def brute_force_passk(correct: list[bool], k: int) -> list[float]:
    """Mean over the k-subsets holding sample i of (subset reward - R) / sigma, reward = any correct."""
    n = len(correct)
    subsets = list(itertools.combinations(range(n), k))
    rewards = {s: float(any(correct[j] for j in s)) for s in subsets}
    mean = sum(rewards.values()) / len(subsets)
    sigma = math.sqrt(sum((r - mean) ** 2 for r in rewards.values()) / len(subsets))  # population std
    if sigma == 0:
        return [0.0] * n
    return [sum((rewards[s] - mean) / sigma for s in subsets if i in s) / sum(1 for s in subsets if i in s)
            for i in range(n)]


def test_passk_advantages_match_the_enumeration_over_all_k_subsets():
    cases = []
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                cases.append(([True] * c + [False] * (n - c), k))
    for k in range(1, 5):  # several groups at once, labels unsorted, members interleaved
        correct = [True, False, False, True, False, False, True, False, False, False, True, True]
        labels = [9, 3, 9, 3, 9, 3, 9, 3, 1, 1, 1, 1]
        got = F.passk_advantages(torch.tensor(correct), torch.tensor(labels), k, eps=0.0)
        for label in set(labels):
            members = [i for i, g in enumerate(labels) if g == label]
            expected = brute_force_passk([correct[i] for i in members], k)
            torch.testing.assert_close(got[members], torch.tensor(expected, dtype=torch.float32))
    for correct, k in cases:
        got = F.passk_advantages(torch.tensor(correct), torch.zeros(len(correct), dtype=torch.long), k, eps=0.0)
        torch.testing.assert_close(got, torch.tensor(brute_force_passk(correct, k), dtype=torch.float32),
                                   msg=f"correct={correct}, k={k}")


def test_passk_advantages_with_k_one_is_grpo_with_the_population_std():
    correct = torch.tensor([True, False, False, True, True, False, False, False])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    got = F.passk_advantages(correct, groups, k=1, eps=0.0)
    # group 0: p = 1/2, std = 1/2 -> +-1 ; group 1: p = 1/4, std = sqrt(3)/4 -> 3/sqrt(3), -1/sqrt(3)
    s = math.sqrt(3)
    torch.testing.assert_close(got, torch.tensor([1.0, -1, -1, 1, 3 / s, -1 / s, -1 / s, -1 / s]))


def test_passk_advantages_zero_without_spread_and_reject_k_above_group_size():
    all_wrong = F.passk_advantages(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.long), 2)
    all_right = F.passk_advantages(torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.long), 2)
    assert all_wrong.tolist() == [0.0] * 4 and all_right.tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="k=3"):
        F.passk_advantages(torch.tensor([True, False]), torch.tensor([0, 0]), 3)


def test_group_has_spread_marks_every_member_of_a_group():
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.0])
    groups = torch.tensor([5, 5, 5, 2, 2, 8])  # group 8 has one member: no spread
    assert F.group_has_spread(rewards, groups).tolist() == [False, False, False, True, True, False]
