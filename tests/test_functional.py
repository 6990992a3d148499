"""The pure maths against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_dsrl import functional as F


def test_group_advantages_group_scale_unsorted_labels_with_gaps():
    rewards = torch.tensor([1.0, 0.0, 3.0, 0.0, 1.0, 5.0])
    groups = torch.tensor([9, 2, 9, 2, 2, 40])  # group 9: {1, 3}; group 2: {0, 0, 1}; group 40: {5}
    adv = F.group_advantages(rewards, groups, scale="group", eps=0.0)
    # group 9: mean 2, sample std sqrt(((1-2)^2 + (3-2)^2) / 1) = sqrt(2)
    # group 2: mean 1/3, sample std sqrt(((1/3)^2*2 + (2/3)^2) / 2) = sqrt(1/3)
    # group 40: single sample -> 0
    s2 = math.sqrt(1 / 3)
    expected = torch.tensor([-1 / math.sqrt(2), (-1 / 3) / s2, 1 / math.sqrt(2), (-1 / 3) / s2, (2 / 3) / s2, 0.0])
    torch.testing.assert_close(adv, expected)


def test_group_advantages_none_and_batch_scale():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1])
    # Dr.GRPO: only centred. group 0 mean 0.5, group 1 mean 1
    torch.testing.assert_close(F.group_advantages(rewards, groups, "none"), torch.tensor([0.5, -0.5, 0.0, 0.0]))
    # batch std of [1, 0, 1, 1]: mean 0.75, var = (3*0.0625 + 0.5625)/3 = 0.25, std 0.5
    torch.testing.assert_close(F.group_advantages(rewards, groups, "batch", eps=0.0),
                               torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_group_advantages_equal_rewards_are_zero_not_nan():
    adv = F.group_advantages(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 0, 0]))
    assert torch.equal(adv, torch.zeros(3))
    with pytest.raises(ValueError, match="scale"):
        F.group_advantages(torch.ones(2), torch.zeros(2), scale="grp")


def test_ds_advantages_hand_computed():
    adv = torch.tensor([0.5, 0.5, -0.5, -0.5])
    correct = torch.tensor([True, True, False, False])
    seq_logp = torch.tensor([-1.0, -10.0, -2.0, -20.0])
    out = F.ds_advantages(adv, correct, seq_logp, gamma_p=0.1, gamma_n=0.01)
    # correct: A - 0.1*LL -> 0.5+0.1=0.6, 0.5+1.0=1.5 ; incorrect: A + 0.01*LL -> -0.52, -0.7
    torch.testing.assert_close(out, torch.tensor([0.6, 1.5, -0.52, -0.7]))
    # no gradient flows through LL
    ll = seq_logp.clone().requires_grad_()
    assert not F.ds_advantages(adv, correct, ll, 0.1, 0.1).requires_grad


def test_sequence_logprob_sum_and_mean():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(F.sequence_logprob(logp, mask, "sum"), torch.tensor([-3.0, -3.0]))
    torch.testing.assert_close(F.sequence_logprob(logp, mask.bool(), "mean"), torch.tensor([-1.5, -3.0]))


def test_kl_k3_values_unclamped():
    logp = torch.tensor([0.0, -1.0, -1.0])
    ref = torch.tensor([0.0, -2.0, 5.0])
    # d = ref - logp: 0 -> 0 ; -1 -> e^-1 + 1 - 1 = 0.367879 ; 6 -> e^6 - 7 = 396.428793
    torch.testing.assert_close(F.kl_k3(logp, ref), torch.tensor([0.0, math.exp(-1), math.exp(6) - 7]))


def test_clipped_policy_loss_hand_computed():
    logp_old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[0.5, 1.5, 1.5, 0.5]]))  # rho = 0.5, 1.5, 1.5, 0.5
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss = F.clipped_policy_loss(logp, logp_old, adv, epsilon_low=0.2, epsilon_high=0.28)
    # rho=0.5,A=1: min(0.5, 0.8) = 0.5 -> -0.5 ; rho=1.5,A=1: min(1.5, 1.28) -> -1.28
    # rho=1.5,A=-1: min(-1.5, -1.28) = -1.5 -> 1.5 ; rho=0.5,A=-1: min(-0.5, -0.8) = -0.8 -> 0.8
    torch.testing.assert_close(loss, torch.tensor([[-0.5, -1.28, 1.5, 0.8]]))
    # [N] advantages broadcast over tokens
    same = F.clipped_policy_loss(logp[:, :2], logp_old[:, :2], torch.tensor([1.0]), 0.2, 0.28)
    torch.testing.assert_close(same, loss[:, :2])
    frac = F.clip_fraction(logp, logp_old, adv, 0.2, 0.28, torch.ones(1, 4))
    assert float(frac) == pytest.approx(0.5)  # tokens 2 (rho>1.28, A>0) and 4 (rho<0.8, A<0)


def test_aggregate_modes_hand_computed():
    values = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert float(F.aggregate(values, mask, "token-mean")) == pytest.approx(10 / 4)
    assert float(F.aggregate(values, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    # sum / L with L = 4 (the width), then mean: (6/4 + 4/4)/2
    assert float(F.aggregate(values, mask, "seq-mean-token-sum-norm")) == pytest.approx((1.5 + 1.0) / 2)
    assert float(F.aggregate(values, mask, "seq-mean-token-sum-norm", max_len=8)) == pytest.approx((6 / 8 + 4 / 8) / 2)
    with pytest.raises(ValueError, match="token-mean"):
        F.aggregate(values, mask, "mean")


@pytest.mark.parametrize("mode", F.AGG_MODES)
def test_aggregate_micro_batches_sum_to_the_batch_value(mode):
    torch.manual_seed(0)
    values = torch.randn(6, 5)
    mask = torch.rand(6, 5) > 0.3
    mask[:, 0] = True
    full = F.aggregate(values, mask, mode, max_len=5)
    tokens, seqs = float(mask.sum()), 6
    parts = sum(
        F.aggregate(values[i : i + 2], mask[i : i + 2], mode, num_seqs=seqs, num_tokens=tokens, max_len=5)
        for i in range(0, 6, 2)
    )
    torch.testing.assert_close(parts, full)


def test_token_logprobs_and_entropy_match_torch():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    labels = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(F.token_logprobs(logits, labels), expected)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(F.entropy_from_logits(logits), -(p * p.log()).sum(-1))
    # a uniform distribution over 4 has entropy log 4; a one-hot-like one near 0
    assert float(F.entropy_from_logits(torch.tensor([0.0, 0.0, 0.0, 0.0]))) == pytest.approx(math.log(4))
    assert float(F.entropy_from_logits(torch.tensor([100.0, 0.0, 0.0]))) == pytest.approx(0.0, abs=1e-6)


def test_pass_at_k_edge_cases():
    assert F.pass_at_k(10, 0, 1) == 0.0
    assert F.pass_at_k(10, 10, 5) == 1.0
    assert F.pass_at_k(5, 1, 5) == 1.0  # k = n: any correct sample counts
    assert F.pass_at_k(4, 2, 1) == pytest.approx(0.5)
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert F.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        F.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        F.pass_at_k(4, 5, 1)


def test_pass_at_k_stable_for_large_n_and_tensor_form():
    # exact rational value vs the float64 log-gamma path, n = 200, k = 100
    for c in (1, 3, 50, 101, 199):
        exact = 1 - math.comb(200 - c, 100) / math.comb(200, 100)
        assert F.pass_at_k(200, c, 100) == pytest.approx(exact, rel=1e-12, abs=1e-15)
        tensor = F.pass_at_k(torch.tensor([200]), torch.tensor([c]), 100)
        assert float(tensor[0]) == pytest.approx(exact, rel=1e-9, abs=1e-12)
    # tiny values keep their precision: n=256, c=1, k=1 is exactly 1/256
    assert float(F.pass_at_k(torch.tensor([256]), torch.tensor([1]), 1)[0]) == pytest.approx(1 / 256, rel=1e-12)
    # one value per problem, not the mean
    out = F.pass_at_k(torch.tensor([4, 4, 10]), torch.tensor([0, 4, 1]), 2)
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 0.2], dtype=torch.float64))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value,size", [(0.1, 8), (1.1, 16), (0.3, 6), (0.7, 12)])
def test_group_of_equal_rewards_has_exactly_zero_advantage(scale, value, size):
    # the float32 mean of `size` copies of `value` is off by an ulp (0.1 x 8 -> 0.1 + 7e-9); divided by
    # the group's std (~1e-8) + eps it became -0.0074 (0.1 x 8) or -0.106 (1.1 x 16) instead of 0
    rewards = torch.cat([torch.full((size,), value), torch.tensor([0.0, 1.1])])
    groups = torch.cat([torch.zeros(size, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    advantages = F.group_advantages(rewards, groups, scale=scale)
    assert advantages[:size].eq(0).all()
    assert advantages[size:].ne(0).all()  # the group with a spread keeps its signal
