"""R1-zero-Div: GRPO plus a token-entropy bonus on correct samples only ([DIV], ALGORITHMS.md section 4).

    D_i = (1/T_i) * sum_t [ -rho(i,t) * logp_new(i,t) ]            (estimator: sampled)
    D_i = (1/T_i) * sum_t H(pi(.|s_{i,t}))                          (estimator: exact, full vocabulary)
    L   = L_GRPO - lambda * (1/G) * sum_{i in P} D_i,        P = {i : correct_i}   (apply_to: positive)

The diversity sum over the positives is divided by ``G``, every completion of the group (the
paper's Eq. 12: ``(1/G) sum_i [... + lambda 1[r_i = 1] D_i]``); over a minibatch of several groups,
by its number of completions. ``normalizer: positives`` divides by ``|P|`` instead, which makes
the effective weight ``lambda / accuracy`` (larger while the model is mostly wrong, shrinking as it
learns): offered for ablation only, its lambda is not comparable with the paper's 0.01 / 0.02 / 0.05.

The sampled estimator is the importance-weighted entropy ``E_{a~pi_old}[-(pi/pi_old) log pi]``
on the sampled tokens: cheap and differentiable, with per-token gradient ``-(1 + log pi)`` (at
``rho = 1``), which raises the probability of tokens with ``pi < 1/e``. That is why the paper
keeps it off incorrect samples (``apply_to: all`` is offered for ablation; the paper found it
worse). The normaliser counts the whole minibatch, so micro-batch terms add up to the minibatch
term; a minibatch without positives adds nothing. Paper setting: ``lambda = 0.01``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.functional import masked_mean, sampled_entropy
from lightning_dsrl.objectives.base import choice
from lightning_dsrl.objectives.grpo import GRPO
from lightning_dsrl.types import TrainBatch

__all__ = ["R1ZeroDiv"]


class R1ZeroDiv(GRPO):
    """Diversity-aware GRPO (Yao et al. 2025).

    Args:
        diversity_coef: lambda, the weight of the diversity term (>= 0; paper: 0.01).
        apply_to: ``positive`` (correct completions only, the paper) or ``all``.
        estimator: ``sampled`` (importance-weighted, from the sampled tokens) or ``exact``
            (the full next-token entropy; computes a ``[n, L, V]`` softmax per micro-batch).
        normalizer: divide the diversity sum by every completion (``completions``, the paper's
            Eq. 12) or by the completions it is applied to (``positives``: ``|P|`` with
            ``apply_to: positive``; an ablation, see the module docstring).
        **kwargs: the GRPO options (``beta``, ``epsilon_low``, ...).
    """

    def __init__(
        self,
        diversity_coef: float = 0.01,
        apply_to: str = "positive",
        estimator: str = "sampled",
        normalizer: str = "completions",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if diversity_coef < 0:
            raise ConfigError(f"model.objective.diversity_coef={diversity_coef}: must be >= 0 "
                              "(for an entropy penalty use EntropyGRPO with a negative entropy_coef)")
        self.diversity_coef = float(diversity_coef)
        self.apply_to = choice("apply_to", apply_to, ("positive", "all"))
        self.estimator = choice("estimator", estimator, ("sampled", "exact"))
        self.normalizer = choice("normalizer", normalizer, ("completions", "positives"),
                                 "completions: the paper's 1/G; positives: 1/|P|")

    @property
    def uniform_group_signal(self) -> str | None:
        if self.diversity_coef == 0:
            return None
        return f"diversity_coef={self.diversity_coef} acts on the correct completions of all-correct groups" + (
            " and on every completion" if self.apply_to == "all" else "")

    @property
    def needs_entropy(self) -> bool:
        return self.estimator == "exact" and self.diversity_coef > 0

    def extra_loss(self, batch: TrainBatch, logp: Tensor, entropy: Tensor | None) -> Tensor | float:
        if self.diversity_coef == 0:
            return 0.0
        mask = batch.completion_mask
        used = batch.correct.bool() if self.apply_to == "positive" else torch.ones_like(batch.correct.bool())  # [n]
        num_used = batch.minibatch_size("correct") if self.apply_to == "positive" else batch.minibatch_size("seqs")
        self.metric("div/num_used", num_used)
        if num_used == 0 or not used.any():
            return 0.0
        # the paper's 1/G: every completion of the minibatch, whether the term applies to it or not
        normalizer = batch.minibatch_size("seqs") if self.normalizer == "completions" else num_used
        if self.estimator == "sampled":
            diversity = sampled_entropy(logp, batch.logp_old, mask)  # [n]
        else:
            if entropy is None:
                raise RuntimeError("R1ZeroDiv(estimator='exact') needs the token entropy: the module passes it "
                                   "when objective.needs_entropy is true")
            diversity = masked_mean(entropy, mask, dim=-1)  # [n]
        term = -self.diversity_coef * diversity[used].sum()
        self.metric("div/diversity", diversity[used].mean())
        # per completion of this micro-batch (or per used one): its sample-weighted mean over
        # micro-batches is the minibatch's term
        self.metric("div/term", term / (batch.num_samples if self.normalizer == "completions" else used.sum()))
        return term / normalizer
