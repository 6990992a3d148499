"""GRPO and DS-GRPO on a tiny fixed batch, with the arithmetic written out."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.objectives import DSGRPO, GRPO

LN = math.log

# The batch of every hand-computed test here is conftest's ``fixed_batch`` fixture.

# token losses with scale_rewards=none (A = [0.5, -0.5]), eps 0.2, beta 0.1, logp_ref = logp_old:
#   (0,0) rho 1.5, A .5: -min(.75, 1.2*.5) = -.6 ; kl = 1/1.5 + ln1.5 - 1 = .0721318 -> -.6 + .00721318
#   (0,1) rho 1,   A .5: -.5 ; kl 0
#   (1,0) rho .5, A -.5: -min(-.25, .8*-.5) = .4 ; kl = 2 - ln2 - 1 = .3068528 -> .4 + .03068528
T00 = -0.6 + 0.1 * (1 / 1.5 + LN(1.5) - 1)
T01 = -0.5
T10 = 0.4 + 0.1 * (2 - LN(2) - 1)


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("seq-mean-token-mean", ((T00 + T01) / 2 + T10) / 2),
        ("token-mean", (T00 + T01 + T10) / 3),
        ("seq-mean-token-sum-norm", ((T00 + T01) / 4 + T10 / 4) / 2),  # max_len = rollout.max_new_tokens = 4
    ],
)
def test_grpo_loss_hand_computed(mode, expected, fixed_batch):
    batch, logp = fixed_batch()
    objective = GRPO(beta=0.1, epsilon_low=0.2, scale_rewards="none", loss_agg_mode=mode)
    batch = batch.replace(group_advantages=objective.group_advantages(batch))
    assert batch.group_advantages.tolist() == [0.5, -0.5]
    out = objective(batch, logp)
    assert float(out.loss) == pytest.approx(expected, abs=1e-6)
    assert float(out.metrics["clip_fraction"]) == pytest.approx(2 / 3)  # (0,0) and (1,0) are clipped
    assert float(out.metrics["kl"]) == pytest.approx((0.0721318 + 0 + 0.3068528) / 3, abs=1e-6)


def test_ds_grpo_advantages_hand_computed(fixed_batch):
    batch, logp = fixed_batch()
    objective = DSGRPO(gamma_p=0.1, gamma_n=0.2, scale_rewards="none", beta=0.0)
    batch = batch.replace(group_advantages=objective.group_advantages(batch))
    # LL_old: seq0 = -2 (correct), seq1 = -1 (incorrect): .5 - .1*(-2) = .7 ; -.5 + .2*(-1) = -.7
    torch.testing.assert_close(objective.advantages(batch), torch.tensor([0.7, -0.7]))
    mean = DSGRPO(gamma_p=0.1, gamma_n=0.2, scale_rewards="none", logprob_reduction="mean", beta=0.0)
    # mean log-prob: seq0 = -1, seq1 = -1: .5 + .1 = .6 ; -.5 - .2 = -.7
    torch.testing.assert_close(mean.advantages(batch), torch.tensor([0.6, -0.7]))
    out = objective(batch, logp)
    assert float(out.metrics["ds/smoothing_correct"]) == pytest.approx(0.2)
    assert float(out.metrics["ds/smoothing_incorrect"]) == pytest.approx(-0.2)


def test_ds_grpo_reference_smoothing_uses_logp_ref(fixed_batch):
    batch, _ = fixed_batch()
    batch = batch.replace(logp_ref=torch.tensor([[-3.0, -3.0], [-5.0, 0.0]]))
    objective = DSGRPO(gamma_p=0.1, gamma_n=0.1, smoothing_model="reference", scale_rewards="none", beta=0.0)
    assert objective.needs_reference
    batch = batch.replace(group_advantages=objective.group_advantages(batch))
    # LL_ref: -6 (correct) and -5 (incorrect): .5 + .6 = 1.1 ; -.5 - .5 = -1.0
    torch.testing.assert_close(objective.advantages(batch), torch.tensor([1.1, -1.0]))


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_ds_grpo_with_zero_gamma_equals_grpo(mode, fixed_batch):
    batch, logp = fixed_batch()
    grpo = GRPO(beta=0.05, loss_agg_mode=mode)
    ds = DSGRPO(gamma_p=0.0, gamma_n=0.0, beta=0.05, loss_agg_mode=mode)
    batch = batch.replace(group_advantages=grpo.group_advantages(batch))
    lp1, lp2 = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    l1, l2 = grpo(batch, lp1).loss, ds(batch, lp2).loss
    l1.backward()
    l2.backward()
    assert l1.item() == pytest.approx(l2.item())
    torch.testing.assert_close(lp1.grad, lp2.grad)


def test_rho_one_gives_the_reinforce_gradient(fixed_batch):
    """ppo_epochs = 1: logp_old = logp.detach(), so d loss / d logp = -A_i / |y_i| / N (seq-mean-token-mean)."""
    batch, logp = fixed_batch()
    objective = GRPO(beta=0.0, scale_rewards="none")
    batch = batch.replace(group_advantages=objective.group_advantages(batch))
    lp = logp.clone().requires_grad_()
    batch = batch.replace(logp_old=lp.detach())
    objective(batch, lp).loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.5 / 2 / 2, -0.5 / 2 / 2], [0.5 / 1 / 2, 0.0]]))


def test_needs_reference_and_bad_settings():
    assert GRPO(beta=0.04).needs_reference and not GRPO(beta=0.0).needs_reference
    assert not DSGRPO(beta=0.0).needs_reference
    with pytest.raises(ConfigError, match="gamma_p"):
        DSGRPO(gamma_p=-0.1)
    with pytest.raises(ConfigError, match="smoothing_model"):
        DSGRPO(smoothing_model="base")
    with pytest.raises(ConfigError, match="loss_agg_mode"):
        GRPO(loss_agg_mode="mean")
    with pytest.raises(ConfigError, match="beta"):
        GRPO(beta=-1)
    assert GRPO(epsilon_low=0.2).epsilon_high == 0.2 and GRPO(epsilon_high=0.28).epsilon_high == 0.28
