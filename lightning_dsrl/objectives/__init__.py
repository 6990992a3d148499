"""Objectives: the base class and the GRPO family (see ``ALGORITHMS.md``)."""

from lightning_dsrl.objectives.base import Objective
from lightning_dsrl.objectives.ds_grpo import DSGRPO
from lightning_dsrl.objectives.entropy import EntropyGRPO
from lightning_dsrl.objectives.grpo import GRPO
from lightning_dsrl.objectives.passk import PassAtKTraining
from lightning_dsrl.objectives.r1_zero_div import R1ZeroDiv

__all__ = ["DSGRPO", "EntropyGRPO", "GRPO", "Objective", "PassAtKTraining", "R1ZeroDiv"]
