"""Pass@k training: GRPO with the analytic pass@k group advantages (Chen et al. 2025, arXiv 2508.10751).

The reward of a group is pass@k: a random k-subset of its ``N`` samples scores 1 if it holds a
correct one. Its mean and std over all k-subsets, and each sample's advantage, have closed forms
(ALGORITHMS.md section 4; :func:`lightning_dsrl.functional.passk_advantages`):

    R     = 1 - C(N_neg, k) / C(N, k),      sigma = sqrt(R (1 - R))
    A_pos = (1 - R) / sigma,                A_neg = (1 - R - C(N_neg - 1, k - 1) / C(N - 1, k - 1)) / sigma

The advantages come from the verifier's verdict ``correct`` (format bonuses are ignored) and are
already normalised, so this objective has no ``scale_rewards``. A group with every sample wrong,
or with fewer than ``k`` wrong samples (every k-subset passes), has ``sigma = 0`` and no signal.
With ``k = 1`` it is GRPO on the binary verdict. Everything after the advantages is GRPO.
"""

from __future__ import annotations

from torch import Tensor

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.functional import group_counts, pass_at_k, passk_advantages
from lightning_dsrl.objectives.grpo import GRPO
from lightning_dsrl.types import Rollout

__all__ = ["PassAtKTraining"]


class PassAtKTraining(GRPO):
    """GRPO that maximises pass@k instead of pass@1.

    Args:
        k: the k of pass@k (1 <= k <= ``rollout.num_generations``).
        beta: weight of the k3 KL penalty to the reference model (0: no reference model loaded).
        epsilon_low: lower clip range of the ratio, ``1 - epsilon_low``.
        epsilon_high: upper clip range, ``1 + epsilon_high`` (default: ``epsilon_low``).
        loss_agg_mode: ``seq-mean-token-mean``, ``token-mean`` or ``seq-mean-token-sum-norm``.
        eps: added to sigma.
    """

    def __init__(
        self,
        k: int = 4,
        beta: float = 0.04,
        epsilon_low: float = 0.2,
        epsilon_high: float | None = None,
        loss_agg_mode: str = "seq-mean-token-mean",
        eps: float = 1e-6,
    ) -> None:
        super().__init__(beta=beta, epsilon_low=epsilon_low, epsilon_high=epsilon_high, loss_agg_mode=loss_agg_mode,
                         eps=eps)
        if k < 1:
            raise ConfigError(f"model.objective.k={k}: must be >= 1 (k = 1 is GRPO on the verdict)")
        self.k = int(k)

    def check(self, num_generations: int) -> None:
        if self.k > num_generations:
            raise ConfigError(f"model.objective.k={self.k} is larger than rollout.num_generations={num_generations}: "
                              "pass@k needs at least k samples per prompt; lower k or raise num_generations")

    def group_advantages(self, rollout: Rollout) -> Tensor:
        n, c = group_counts(rollout.group_ids, rollout.correct)
        if int(n.min()) < self.k:
            raise ConfigError(f"model.objective.k={self.k} is larger than a group of {int(n.min())} samples; "
                              "lower k or raise rollout.num_generations")
        reward = pass_at_k(n, c, self.k)  # [num_groups], the R of each group
        self.metric("passk/group_reward", float(reward.mean()))
        # sigma = 0 exactly when no sample is correct or every k-subset holds a correct one
        self.metric("passk/zero_signal_groups", float(((c == 0) | (n - c < self.k)).float().mean()))
        return passk_advantages(rollout.correct, rollout.group_ids, self.k, self.eps)
