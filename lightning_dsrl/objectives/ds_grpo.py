"""DS-GRPO: GRPO with differential smoothing of the advantages (ALGORITHMS.md section 3).

    A_i^DS = A_i - gamma_p * LL(i)    if correct_i
    A_i^DS = A_i + gamma_n * LL(i)    otherwise

``LL(i)`` is the completion's log-likelihood under the rollout policy (``smoothing_model: old``,
what the paper uses in practice) or under the frozen base model (``reference``, the theory's
``pi_base``), summed over tokens or averaged (``logprob_reduction``). Since ``-LL >= 0``, a
rare correct solution gets a larger bonus than a common one (against sharpening) and a rare
mistake a larger penalty. The correction is a constant per completion; everything else is GRPO.
"""

from __future__ import annotations

from torch import Tensor

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.functional import REDUCTIONS, ds_advantages, sequence_logprob
from lightning_dsrl.objectives.base import choice
from lightning_dsrl.objectives.grpo import GRPO
from lightning_dsrl.types import TrainBatch

__all__ = ["DSGRPO", "log_likelihood"]


def log_likelihood(batch: TrainBatch, model: str, reduction: str) -> Tensor:
    """``[n]`` each completion's log-likelihood ``LL(i)`` under the rollout policy (``old``) or the
    reference model (``reference``), summed over its tokens or averaged (``reduction``); a constant
    per completion (no gradient). The shaping term of DS-GRPO and of ``EntropyGRPO(level: sequence)``."""
    logp = batch.logp_old if model == "old" else batch.logp_ref
    return sequence_logprob(logp, batch.completion_mask, reduction).detach()


class DSGRPO(GRPO):
    """Differential-smoothing GRPO.

    Args:
        gamma_p: smoothing on correct completions (>= 0).
        gamma_n: smoothing on incorrect completions (>= 0).
        smoothing_model: whose log-likelihood: ``old`` (rollout policy) or ``reference`` (base model).
        logprob_reduction: ``sum`` (trajectory log-likelihood) or ``mean`` (per token).
        **kwargs: the GRPO options (``beta``, ``epsilon_low``, ...).
    """

    def __init__(
        self,
        gamma_p: float = 0.01,
        gamma_n: float = 0.01,
        smoothing_model: str = "old",
        logprob_reduction: str = "sum",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if gamma_p < 0 or gamma_n < 0:
            raise ConfigError(f"model.objective.gamma_p={gamma_p}, gamma_n={gamma_n}: both must be >= 0")
        self.gamma_p = float(gamma_p)
        self.gamma_n = float(gamma_n)
        self.smoothing_model = choice("smoothing_model", smoothing_model, ("old", "reference"))
        self.logprob_reduction = choice("logprob_reduction", logprob_reduction, REDUCTIONS)

    @property
    def needs_reference(self) -> bool:
        return super().needs_reference or self.smoothing_model == "reference"

    @property
    def uniform_group_signal(self) -> str | None:
        parts = [f"gamma_p={self.gamma_p} spreads all-correct groups over their solutions"] if self.gamma_p else []
        parts += [f"gamma_n={self.gamma_n} shapes all-wrong groups"] if self.gamma_n else []
        return "; ".join(parts) or None

    def advantages(self, batch: TrainBatch) -> Tensor:
        base = super().advantages(batch)
        seq_logp = log_likelihood(batch, self.smoothing_model, self.logprob_reduction)  # [n]
        shaped = ds_advantages(base, batch.correct, seq_logp, self.gamma_p, self.gamma_n)
        term = shaped - base  # -gamma_p * LL on correct, +gamma_n * LL on incorrect
        correct = batch.correct.bool()
        if correct.any():
            self.metric("ds/smoothing_correct", term[correct].mean())
        if (~correct).any():
            self.metric("ds/smoothing_incorrect", term[~correct].mean())
        return shaped
