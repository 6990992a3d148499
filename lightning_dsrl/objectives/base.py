"""The ``Objective`` base: a loss as an ``nn.Module`` over a rollout micro-batch.

    group_advantages(rollout)            once per rollout, on the whole batch (group statistics)
    forward(micro, logp, entropy=None)   per micro-batch -> LossOutput(loss, metrics)

``logp`` is ``[n, L]`` log-probs of the sampled tokens under the current policy (with
gradient); ``micro.logp_old`` is always filled (the module reuses ``logp.detach()`` when
``ppo_epochs == 1`` with one minibatch, where the two are equal). ``entropy`` is the
full-distribution token entropy ``[n, L]`` with gradient, computed only when the objective sets
``needs_entropy``. Objectives that read ``micro.logp_ref`` set ``needs_reference``.

Subclasses report what they add with :meth:`metric`; the module logs it under ``train/``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_dsrl.types import LossOutput, RolloutBatch

__all__ = ["Objective"]


class Objective(nn.Module):
    """Base class of training objectives (GRPO and its variants)."""

    def __init__(self) -> None:
        super().__init__()
        self._metrics: dict[str, Tensor] = {}
        self._advantages: Tensor | None = None

    @property
    def needs_reference(self) -> bool:
        """Whether ``logp_ref`` (a frozen reference model) is needed."""
        return False

    @property
    def needs_entropy(self) -> bool:
        """Whether ``forward`` needs the full-distribution entropy with gradient."""
        return False

    @property
    def uniform_group_signal(self) -> str | None:
        """What this objective learns from a group whose completions are all correct or all wrong
        (``None``: nothing, its advantages there are 0). Dynamic sampling drops such groups, and says
        what that removes."""
        return None

    def check(self, num_generations: int) -> None:
        """Reject settings that cannot work with this rollout setup (raise ``ConfigError``)."""

    def group_advantages(self, rollout: RolloutBatch) -> Tensor:
        """``[N]`` advantages from rewards and groups, once per rollout."""
        raise NotImplementedError

    def trained_advantages(self, advantages: Tensor) -> None:
        """Report the ``[n]`` per-sample advantages this micro-batch's loss uses (after any shaping): the
        module counts the groups whose advantages are all 0 (``train/zero_signal_groups``)."""
        self._advantages = advantages.detach()

    def metric(self, name: str, value: Tensor | float) -> None:
        """Record a scalar to log for this micro-batch (averaged over micro-batches)."""
        value = value.detach().float() if isinstance(value, Tensor) else torch.tensor(float(value))
        self._metrics[name] = value

    def loss(self, batch: RolloutBatch, logp: Tensor, entropy: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: RolloutBatch, logp: Tensor, entropy: Tensor | None = None) -> LossOutput:
        self._metrics = {}
        self._advantages = None
        loss = self.loss(batch, logp, entropy)
        return LossOutput(loss=loss, metrics=dict(self._metrics), advantages=self._advantages)
