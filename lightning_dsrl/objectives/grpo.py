"""GRPO (ALGORITHMS.md section 2), the backbone every other objective overrides.

    A_i    = (r_i - mean_g r) / (std_g r + eps)            (scale_rewards: group | batch | none)
    s(i,t) = min(rho A_i, clip(rho, 1 - epsilon_low, 1 + epsilon_high) A_i),  rho = pi / pi_old
    L      = agg(-s + beta * kl_k3(pi, pi_ref))            (loss_agg_mode)

Hooks (besides ``group_advantages`` and ``advantages``, see :mod:`~lightning_dsrl.objectives.base`),
in the order ``loss`` calls them:
  ``token_loss(batch, ...)``   the per-token loss ``[n, L]`` before aggregation;
  ``extra_loss(batch, ...)``   a scalar added after aggregation (entropy and diversity terms).
The Dr.GRPO and DAPO variants are settings of this class (see ``configs/``).
"""

from __future__ import annotations

from torch import Tensor

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.functional import (
    AGG_MODES,
    aggregate,
    clip_fraction,
    clipped_policy_loss,
    group_advantages,
    kl_k3,
    masked_mean,
)
from lightning_dsrl.objectives.base import Objective, choice
from lightning_dsrl.types import Rollout, TrainBatch

__all__ = ["GRPO"]


class GRPO(Objective):
    """Group Relative Policy Optimization.

    Args:
        beta: weight of the k3 KL penalty to the reference model (0: no reference model loaded).
        epsilon_low: lower clip range of the ratio, ``1 - epsilon_low``.
        epsilon_high: upper clip range, ``1 + epsilon_high`` (DAPO's clip-higher; default: ``epsilon_low``).
        scale_rewards: divide the centred rewards by the group's std (``group``), the batch's
            std (``batch``) or nothing (``none``, Dr.GRPO).
        loss_agg_mode: ``seq-mean-token-mean`` (GRPO), ``token-mean`` (DAPO) or
            ``seq-mean-token-sum-norm`` (Dr.GRPO, normalised by ``rollout.max_new_tokens``).
        eps: added to the std.
    """

    def __init__(
        self,
        beta: float = 0.04,
        epsilon_low: float = 0.2,
        epsilon_high: float | None = None,
        scale_rewards: str = "group",
        loss_agg_mode: str = "seq-mean-token-mean",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ConfigError(f"model.objective.beta={beta}: the KL weight must be >= 0")
        if epsilon_low < 0 or (epsilon_high is not None and epsilon_high < 0):
            raise ConfigError("model.objective.epsilon_low / epsilon_high must be >= 0")
        self.beta = float(beta)
        self.epsilon_low = float(epsilon_low)
        self.epsilon_high = float(epsilon_low if epsilon_high is None else epsilon_high)
        self.scale_rewards = choice("scale_rewards", scale_rewards, ("group", "batch", "none"))
        self.loss_agg_mode = choice("loss_agg_mode", loss_agg_mode, AGG_MODES)
        self.eps = eps

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    def group_advantages(self, rollout: Rollout) -> Tensor:
        return group_advantages(rollout.rewards, rollout.group_ids, self.scale_rewards, self.eps)

    # ------------------------------------------------------------------ hooks
    def token_loss(self, batch: TrainBatch, logp: Tensor, advantages: Tensor) -> Tensor:
        """Per-token loss ``[n, L]``: the negative clipped surrogate plus ``beta`` times the k3 KL."""
        mask = batch.completion_mask
        loss = clipped_policy_loss(logp, batch.logp_old, advantages, self.epsilon_low, self.epsilon_high)
        if batch.is_weights is not None:  # model.tis_cap: engine/trainer mismatch correction
            loss = loss * batch.is_weights
        self.metric("clip_fraction", clip_fraction(logp, batch.logp_old, advantages, self.epsilon_low,
                                                   self.epsilon_high, mask))
        self.metric("ratio_mean", masked_mean((logp - batch.logp_old).exp(), mask))
        if self.beta > 0:
            kl = kl_k3(logp, batch.logp_ref)
            self.metric("kl", masked_mean(kl, mask))
            loss = loss + self.beta * kl
        return loss

    def extra_loss(self, batch: TrainBatch, logp: Tensor, entropy: Tensor | None) -> Tensor | float:
        """A scalar added to the aggregated loss (already normalised like it); 0 for GRPO."""
        return 0.0

    # ------------------------------------------------------------------ loss
    def aggregate(self, values: Tensor, batch: TrainBatch) -> Tensor:
        """``loss_agg_mode`` over the micro-batch, normalised by its minibatch's sizes."""
        return aggregate(values, batch.completion_mask, self.loss_agg_mode, num_seqs=batch.minibatch_size("seqs"),
                         num_tokens=batch.minibatch_size("tokens"), max_len=batch.max_new_tokens or None)

    def loss(self, batch: TrainBatch, logp: Tensor, entropy: Tensor | None) -> Tensor:
        advantages = batch.advantages
        self.metric("advantage_abs_mean", advantages.abs().mean())
        policy = self.aggregate(self.token_loss(batch, logp, advantages), batch)
        self.metric("policy_loss", policy)
        return policy + self.extra_loss(batch, logp, entropy)
