"""Objectives: the base class and the GRPO family (see ``ALGORITHMS.md``)."""

from lightning_dsrl.objectives.base import Objective
from lightning_dsrl.objectives.ds_grpo import DSGRPO
from lightning_dsrl.objectives.grpo import GRPO

__all__ = ["DSGRPO", "GRPO", "Objective"]
