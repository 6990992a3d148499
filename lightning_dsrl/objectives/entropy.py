"""Global entropy regularisation, the bonus / penalty baseline of [DS] (ALGORITHMS.md section 4).

One signed coefficient ``c`` (``entropy_coef``): ``c > 0`` is an entropy *bonus*, ``c < 0`` a
*penalty*, ``c = 0`` is GRPO. Two levels:

    token:     L = L_GRPO - c * H,      H = mean over all completion tokens of the full next-token
                                            entropy (with gradient, one micro-batch of logits at a time)
    sequence:  A_i' = A_i - c * LL_old(i)       for every completion (correct or not)

The sequence level is the reward shaping ``r'(y) = r(y) - c * LL(y)`` that [DS] calls the
entropy-regularised policy. Like DS-GRPO it is applied to the *advantage*, after group
normalisation, so the two differ only in the sign pattern: DS-GRPO uses ``-gamma_p * LL`` on
correct and ``+gamma_n * LL`` on incorrect completions, this objective ``-c * LL`` on all of them.
``LL_old`` is the log-likelihood under the rollout policy, a constant per completion.

The token-level ``H`` is always a token mean (normalised by the minibatch's token count, whatever
``loss_agg_mode`` is), so ``entropy_coef`` means the same thing under every aggregation.
"""

from __future__ import annotations

from torch import Tensor

from lightning_dsrl.functional import REDUCTIONS, aggregate, ds_advantages, masked_mean
from lightning_dsrl.objectives.base import choice
from lightning_dsrl.objectives.ds_grpo import log_likelihood
from lightning_dsrl.objectives.grpo import GRPO
from lightning_dsrl.types import TrainBatch

__all__ = ["EntropyGRPO"]


class EntropyGRPO(GRPO):
    """GRPO with a global entropy bonus (``entropy_coef > 0``) or penalty (``entropy_coef < 0``).

    Args:
        entropy_coef: signed weight ``c`` of the entropy term (0: plain GRPO).
        level: ``token`` (``-c * H`` added to the loss) or ``sequence`` (``-c * LL_old`` added to
            every advantage).
        logprob_reduction: for ``level: sequence``, ``LL`` summed over tokens (``sum``, the
            trajectory log-likelihood) or averaged (``mean``).
        **kwargs: the GRPO options (``beta``, ``epsilon_low``, ...).
    """

    def __init__(
        self,
        entropy_coef: float = 0.001,
        level: str = "token",
        logprob_reduction: str = "sum",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.entropy_coef = float(entropy_coef)
        self.level = choice("level", level, ("token", "sequence"))
        self.logprob_reduction = choice("logprob_reduction", logprob_reduction, REDUCTIONS)

    @property
    def needs_entropy(self) -> bool:
        return self.level == "token" and self.entropy_coef != 0.0

    @property
    def uniform_group_signal(self) -> str | None:
        if self.entropy_coef == 0:
            return None
        return f"entropy_coef={self.entropy_coef} ({self.level} level) acts on every completion"

    def advantages(self, batch: TrainBatch) -> Tensor:
        base = super().advantages(batch)
        if self.level != "sequence":
            return base
        seq_logp = log_likelihood(batch, "old", self.logprob_reduction)  # [n]
        self.metric("entropy_reg/shaping", (-self.entropy_coef * seq_logp).mean())  # >= 0 for a bonus
        # DS-GRPO's smoothing with gamma_p = c, gamma_n = -c: A - c * LL on every completion
        return ds_advantages(base, batch.correct, seq_logp, self.entropy_coef, -self.entropy_coef)

    def extra_loss(self, batch: TrainBatch, logp: Tensor, entropy: Tensor | None) -> Tensor | float:
        if not self.needs_entropy:
            return 0.0
        if entropy is None:
            raise RuntimeError("EntropyGRPO(level='token') needs the token entropy: the module passes it "
                               "when objective.needs_entropy is true")
        mask = batch.completion_mask
        # sum over this micro-batch's tokens / the minibatch's token count: micro-batch terms add up exactly
        mean_entropy = aggregate(entropy, mask, "token-mean", num_tokens=batch.minibatch_size("tokens"))
        self.metric("entropy_reg/term", -self.entropy_coef * masked_mean(entropy.detach(), mask))
        return -self.entropy_coef * mean_entropy
