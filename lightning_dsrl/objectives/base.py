"""The ``Objective`` base: a loss as an ``nn.Module``, with the hooks its subclasses override.

    group_advantages(rollout)           [N] from rewards and groups, once per rollout
    advantages(batch)                   [n] per-sample shaping of the group advantages (DS-GRPO's smoothing)
    loss(batch, logp, entropy)          the scalar loss of a micro-batch, from ``batch.advantages``
    forward(batch, logp, entropy=None)  -> LossOutput(loss, metrics, advantages)

``advantages`` must treat each completion on its own (it may read ``batch.logp_old``,
``batch.logp_ref``, ``batch.correct``, ...), so that applying it to the whole rollout once or to each
micro-batch gives the same values. The module applies it once before the update when ``logp_old``
is known then (several passes over the rollout); with one pass ``logp_old`` is the policy's own
log-probs from the pass itself, ``batch.advantages`` is ``None`` and ``forward`` shapes them, each
completion exactly once. ``logp`` is ``[n, L]`` log-probs of the sampled tokens under the current
policy (with gradient); ``entropy`` the full-distribution token entropy ``[n, L]`` with gradient,
computed only when the objective sets ``needs_entropy``. Objectives that read ``batch.logp_ref``
set ``needs_reference``.

Subclasses report what they add with :meth:`metric` from any hook; it is logged under ``train/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.types import LossOutput, Rollout, TrainBatch

__all__ = ["Objective", "choice"]


def choice(option: str, value: str, choices: Sequence[str], why: str = "") -> str:
    """``value`` if it is one of ``choices``, else a ``ConfigError`` naming ``model.objective.<option>``.

    (Options with choices are typed ``str``, not ``Literal``: a typo then reaches this check and ends in one
    ``error:`` line naming the option and its values, instead of the parser's full usage text.)
    """
    if value not in choices:
        values = " or ".join(choices) if len(choices) <= 2 else "one of " + ", ".join(choices)
        raise ConfigError(f"model.objective.{option}={value!r}: use {values}" + (f" ({why})" if why else ""))
    return value


class Objective(nn.Module):
    """Base class of training objectives (GRPO and its variants)."""

    def __init__(self) -> None:
        super().__init__()
        self._metrics: dict[str, Tensor] = {}  # what metric() records during one hook call; its caller collects it

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

    # ------------------------------------------------------------------ hooks
    def group_advantages(self, rollout: Rollout) -> Tensor:
        """``[N]`` advantages from rewards and groups, once per rollout."""
        raise NotImplementedError

    def advantages(self, batch: TrainBatch) -> Tensor:
        """``[n]`` per-sample advantages the loss uses (default: the group advantages, unshaped)."""
        return batch.group_advantages

    def loss(self, batch: TrainBatch, logp: Tensor, entropy: Tensor | None) -> Tensor:
        """The micro-batch's scalar loss, normalised by its minibatch's sizes, from ``batch.advantages``."""
        raise NotImplementedError

    def metric(self, name: str, value: Tensor | float) -> None:
        """Record a scalar to log (averaged over micro-batches by their sizes)."""
        value = value.detach().float() if isinstance(value, Tensor) else torch.tensor(float(value))
        self._metrics[name] = value

    # ------------------------------------------------------------------ called by the module
    def rollout_advantages(self, rollout: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`group_advantages` and the metrics it recorded."""
        return self._recorded(self.group_advantages, rollout)

    def shaped_advantages(self, batch: TrainBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`advantages` of the whole batch and the metrics it recorded."""
        return self._recorded(self.advantages, batch)

    def forward(self, batch: TrainBatch, logp: Tensor, entropy: Tensor | None = None) -> LossOutput:
        (advantages, loss), metrics = self._recorded(self._shaped_loss, batch, logp, entropy)
        return LossOutput(loss=loss, metrics=metrics, advantages=advantages.detach())

    def _shaped_loss(self, batch: TrainBatch, logp: Tensor, entropy: Tensor | None) -> tuple[Tensor, Tensor]:
        if batch.advantages is None:  # one pass over the rollout: logp_old is this pass's, so shape here
            batch = batch.replace(advantages=self.advantages(batch))
        return batch.advantages, self.loss(batch, logp, entropy)

    def _recorded(self, hook: Callable[..., Any], *args: Any) -> tuple[Any, dict[str, Tensor]]:
        self._metrics = {}
        try:
            out = hook(*args)
        finally:
            metrics, self._metrics = self._metrics, {}
        return out, metrics
