"""An objective that goes non-finite on purpose, loaded by ``class_path`` in the numerical-guard tests."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_dsrl.objectives import DSGRPO
from lightning_dsrl.types import RolloutBatch


class _NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * float("nan")


class NaNObjective(DSGRPO):
    """DS-GRPO whose loss (``where="loss"``) or gradient (``where="grad"``) is NaN for its first
    ``nan_calls`` loss calls (-1: always).

    Args:
        where: ``loss`` or ``grad``.
        nan_calls: how many loss calls go non-finite before it behaves (-1: all of them).
        **kwargs: DS-GRPO's options.
    """

    def __init__(self, where: Literal["loss", "grad"] = "loss", nan_calls: int = -1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.where = where
        self.nan_calls = nan_calls
        self.calls = 0

    def loss(self, batch: RolloutBatch, logp: Tensor, entropy: Tensor | None) -> Tensor:
        loss = super().loss(batch, logp, entropy)
        self.calls += 1
        if self.nan_calls >= 0 and self.calls > self.nan_calls:
            return loss
        return loss * float("nan") if self.where == "loss" else _NaNGradient.apply(loss)
